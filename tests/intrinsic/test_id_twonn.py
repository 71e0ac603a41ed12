"""TwoNN against scikit-dimension's TwoNN and against known shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geomonitor.intrinsic import twonn

skdim = pytest.importorskip("skdim")


def _skdim_twonn(X: np.ndarray, discard_fraction: float = 0.1) -> float:
    return float(skdim.id.TwoNN(discard_fraction=discard_fraction).fit(X).dimension_)


def test_twonn_matches_skdim_on_benchmark_manifolds(manifold):
    X = manifold
    ref = _skdim_twonn(X)
    assert twonn(X) == pytest.approx(ref, rel=1e-2)
    assert twonn(torch.from_numpy(X)) == pytest.approx(ref, rel=1e-6)  # float64 path: same math
    assert twonn(torch.from_numpy(X).float()) == pytest.approx(ref, rel=1e-2)


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_twonn_discard_fraction_matches_skdim(manifolds, fraction):
    X = manifolds["M1_Sphere"]
    if fraction == 0.0:
        # scikit-dimension 0.5 keeps the point F_emp = N/N, whose -log(1 - F) is infinite;
        # here the last point is left out (n_keep <= N - 1), so compare with discarding 1/N.
        ref = _skdim_twonn(X, discard_fraction=1.0 / len(X))
    else:
        ref = _skdim_twonn(X, discard_fraction=fraction)
    assert np.isfinite(ref)
    assert twonn(X, discard_fraction=fraction) == pytest.approx(ref, rel=1e-2)


@pytest.mark.parametrize("d", [2, 5, 10])
def test_twonn_linear_subspace(d):
    g = torch.Generator().manual_seed(d)
    Z = torch.randn(2000, d, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(100, d, generator=g, dtype=torch.float64))
    X = Z @ Q.T + 3.0  # a d-dim Gaussian in a d-dim affine subspace of R^100 (no boundary)
    assert twonn(X) == pytest.approx(d, rel=0.1)


def test_twonn_chunked_equals_unchunked_and_skdim(manifolds):
    X = torch.from_numpy(manifolds["M6_Nonlinear"])
    full = twonn(X)
    assert twonn(X, chunk_size=64) == pytest.approx(full, rel=1e-12)
    assert full == pytest.approx(_skdim_twonn(X.numpy()), rel=1e-6)


def test_twonn_grid_is_degenerate():
    g = torch.stack(torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij"), -1)
    with pytest.raises(ValueError, match=r"TwoNN fit is degenerate: every kept ratio r2/r1 equals 1"):
        twonn(g.reshape(-1, 2))


def test_twonn_too_few_kept_points():
    X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"TwoNN keeps 1 of 4 ratios with discard_fraction=0.6"):
        twonn(X, discard_fraction=0.6)


@pytest.mark.parametrize("kw, msg", [
    ({"discard_fraction": 1.0}, r"discard_fraction must be a number in \[0, 1\), got 1.0"),
    ({"discard_fraction": -0.1}, r"discard_fraction must be a number in \[0, 1\), got -0.1"),
    ({"chunk_size": 0}, r"chunk_size must be an integer >= 1 or None, got 0"),
    ({"duplicates": "keep"}, r"duplicates must be one of 'drop', 'raise', got 'keep'"),
])
def test_twonn_argument_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        twonn(torch.randn(10, 3), **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_twonn_cuda_matches_skdim(manifolds):
    X = manifolds["M9_Affine"]
    ref = _skdim_twonn(X)
    assert twonn(torch.from_numpy(X).cuda()) == pytest.approx(ref, rel=1e-6)
    Xh = torch.from_numpy(X).half()
    ref_h = _skdim_twonn(Xh.double().numpy())  # the same fp16-rounded points, in float64
    assert twonn(Xh.cuda()) == pytest.approx(ref_h, rel=1e-3)
