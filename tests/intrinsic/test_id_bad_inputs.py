"""Bad and unusual input for every method: each case against an independent reference."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from geomonitor.intrinsic import IntrinsicDimensionWarning, intrinsic_dimension, intrinsic_dimension_estimate

skdim = pytest.importorskip("skdim")

NN_METHODS = ["twonn", "mle"]
ALL_METHODS = ["twonn", "mle", "pca"]


def _reference(X: np.ndarray, method: str) -> float:
    """scikit-dimension for twonn/mle, a float64 eigvalsh participation ratio for pca."""
    X = np.asarray(X, dtype=np.float64)
    if method == "twonn":
        return float(skdim.id.TwoNN().fit(X).dimension_)
    if method == "mle":
        return float(skdim.id.MLE().fit(X, n_neighbors=20).dimension_)
    lam = np.clip(np.linalg.eigvalsh(np.cov(X, rowvar=False)), 0, None)
    return float(lam.sum() ** 2 / (lam**2).sum())


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    g = np.random.default_rng(0)
    return g.standard_normal((600, 6)) @ g.standard_normal((6, 40))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_points(method, n):
    with pytest.raises(ValueError, match=rf"X needs at least 3 points with finite values, got {n}"):
        intrinsic_dimension(torch.randn(n, 5), method)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_too_few_points_after_dropping_nonfinite(method):
    X = torch.randn(5, 4)
    X[:3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"got 2 \(3 rows with NaN/Inf dropped\)"):
        intrinsic_dimension(X, method)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_constant_data(method):
    with pytest.raises(ValueError, match=r"X is constant \(all 50 points identical\)"):
        intrinsic_dimension(torch.full((50, 7), 2.5), method)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_nonfinite_rows_dropped_with_count(cloud, method):
    X = cloud.copy()
    X[[3, 70, 200], [0, 5, 9]] = [np.nan, np.inf, -np.inf]
    with pytest.warns(IntrinsicDimensionWarning, match=r"X: dropped 3 rows with NaN or Inf values \(597 points left\)"):
        est = intrinsic_dimension_estimate(X, method)
    assert (est.n_nonfinite, est.n_points) == (3, 597)
    assert est.dimension == pytest.approx(_reference(np.delete(cloud, [3, 70, 200], axis=0), method), rel=1e-6)


@pytest.mark.parametrize("method", NN_METHODS)
def test_duplicates_dropped_with_count(cloud, method):
    X = np.concatenate([cloud, cloud[:40], cloud[:10]])  # 50 extra rows; 40 points have copies
    with pytest.warns(IntrinsicDimensionWarning, match=r"X: dropped 50 exact duplicate rows \(90 points had a copy; 600 distinct"):
        est = intrinsic_dimension_estimate(X, method)
    assert (est.n_duplicates, est.n_points) == (50, 600)
    assert est.dimension == pytest.approx(_reference(np.unique(X, axis=0), method), rel=1e-6)
    # scikit-dimension itself is not usable here: its MLE returns 0 and its TwoNN skips points
    with np.errstate(divide="ignore"):
        assert float(skdim.id.MLE().fit(X).dimension_) == 0.0


@pytest.mark.parametrize("method", NN_METHODS)
def test_duplicates_raise_on_request(cloud, method):
    X = np.concatenate([cloud, cloud[:5]])
    with pytest.raises(ValueError, match=r"X has 10 of 605 points with an exact duplicate \(zero nearest-neighbour distance\)"):
        intrinsic_dimension(X, method, duplicates="raise")


@pytest.mark.parametrize("method", NN_METHODS)
def test_too_few_distinct_points(method):
    X = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(30, 1)
    with pytest.warns(IntrinsicDimensionWarning, match="dropped 58 exact duplicate rows"):
        with pytest.raises(ValueError, match=r"X has only 2 distinct points after dropping 58 duplicates"):
            intrinsic_dimension(X, method, **({"k": 2} if method == "mle" else {}))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_integer_input_is_cast(method):
    g = np.random.default_rng(1)
    X = g.integers(-1000, 1000, size=(500, 3)) @ g.integers(-3, 4, size=(3, 12))  # int64, rank 3
    assert intrinsic_dimension(X.astype(np.int32), method) == pytest.approx(_reference(X, method), rel=1e-4)
    assert intrinsic_dimension(torch.from_numpy(X), method) == pytest.approx(_reference(X, method), rel=1e-6)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-6), (torch.float32, 1e-3),
                                        (torch.float16, 2e-2), (torch.bfloat16, 2e-2)])
def test_dtypes(cloud, method, dtype, rel):
    Xt = torch.from_numpy(cloud / 10).to(dtype)  # keep within fp16 range
    ref = _reference(Xt.double().numpy(), method)  # the same rounded values, in float64
    assert intrinsic_dimension(Xt, method) == pytest.approx(ref, rel=rel)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_numpy_and_torch_inputs_agree_with_reference(cloud, method):
    ref = _reference(cloud, method)
    assert intrinsic_dimension(cloud, method) == pytest.approx(ref, rel=1e-6)
    assert intrinsic_dimension(torch.from_numpy(cloud), method) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("X, msg", [
    (np.zeros(10), r"X must have shape \(N, D\), got shape \(10,\)"),
    (np.zeros((3, 3), dtype=complex), r"X must be real-valued"),
])
def test_shape_and_dtype_errors(X, msg):
    with pytest.raises(ValueError, match=msg):
        intrinsic_dimension(X)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("scale", [1e19, 1e30, 1e-20, 1e-30])
def test_huge_and_tiny_float32_give_the_float64_estimate(cloud, method, scale):
    """Squared distances of these float32 values overflow / underflow float32."""
    X32 = torch.from_numpy(cloud * scale).float()
    ref = _reference(X32.double().numpy(), method)  # the same rounded values, unscaled float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning: the input is a clean cloud
        assert intrinsic_dimension(X32, method) == pytest.approx(ref, rel=1e-4)


def _near_duplicates(copies: int, gap: float = 1e-7) -> np.ndarray:
    """Every point of a 3-dim cloud ``copies`` times, the copies ``gap`` apart (distinct rows)."""
    g = np.random.default_rng(4)
    base = g.standard_normal((300, 3)) @ g.standard_normal((3, 10))
    return np.concatenate([base + i * gap * g.standard_normal(base.shape) / np.sqrt(10)
                           for i in range(copies)])


@pytest.mark.parametrize("method, options, copies", [("twonn", {}, 2), ("mle", {"k": 20}, 5)])
def test_near_duplicate_points_warn_as_degenerate_input(method, options, copies):
    X = _near_duplicates(copies)
    assert len(np.unique(X, axis=0)) == len(X)  # no exact duplicates: nothing is dropped
    with pytest.warns(IntrinsicDimensionWarning, match=rf"X: {method.upper() if method == 'mle' else 'TwoNN'} "
                      r"dimension 0\.\d+ is below 0\.5 on \d+ points, which indicates degenerate input "
                      r"\(near-duplicate points"):
        got = intrinsic_dimension(X, method, **options)
    assert got == pytest.approx(_reference(X, method), rel=1e-6) and got < 0.5  # the value is kept


@pytest.mark.parametrize("method", NN_METHODS)
def test_a_clean_cloud_and_well_separated_copies_do_not_warn(cloud, method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert intrinsic_dimension(cloud, method) > 3
        assert intrinsic_dimension(_near_duplicates(1), method) > 2
