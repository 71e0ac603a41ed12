"""Chunked distances against a brute-force float64 NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geomonitor.distances import auto_chunk_size, knn, pairwise_distances


def _brute(X: np.ndarray) -> np.ndarray:
    return np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_matches_brute_force(chunk_size, dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 9)) + 100.0  # far from the origin: centring and refinement matter
    D = _brute(X)
    np.fill_diagonal(D, np.inf)
    ref_idx = np.argsort(D, axis=1, kind="stable")[:, :4]
    ref_d = np.take_along_axis(D, ref_idx, axis=1)
    d, idx = knn(torch.tensor(X, dtype=dtype), 4, chunk_size=chunk_size)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(d.numpy(), ref_d, rtol=tol * 10, atol=tol)
    assert (idx.numpy() == ref_idx).all()


def test_knn_never_returns_self_and_sees_duplicates_at_zero():
    X = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    d, idx = knn(X, 1)
    assert idx[0, 0] == 1 and idx[1, 0] == 0
    assert d[0, 0] == 0 and d[2, 0] == 5


def test_knn_rejects_bad_k():
    with pytest.raises(ValueError, match=r"k must be an int with 1 <= k < N=3, got k=3"):
        knn(torch.zeros(3, 2), 3)
    with pytest.raises(ValueError, match=r"got k=0"):
        knn(torch.zeros(3, 2), 0)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_pairwise_distances_matches_brute_force(chunk_size):
    X = np.random.default_rng(1).normal(size=(40, 6))
    got = pairwise_distances(torch.tensor(X), chunk_size=chunk_size).numpy()
    np.testing.assert_allclose(got, _brute(X), atol=1e-12)
    assert (np.diag(got) == 0).all() and (got == got.T).all()


def test_auto_chunk_size_respects_budget():
    assert auto_chunk_size(50_000, 50_000, budget=1 << 25) == (1 << 25) // 50_000
    assert auto_chunk_size(10, 10) == 10
    assert auto_chunk_size(10, 10**12) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_on_cuda_matches_cpu():
    X = torch.randn(500, 32, dtype=torch.float64)
    d_cpu, i_cpu = knn(X, 3)
    d_gpu, i_gpu = knn(X.cuda(), 3)
    torch.testing.assert_close(d_gpu.cpu(), d_cpu)
    assert (i_gpu.cpu() == i_cpu).all()


# -- the input boundary ------------------------------------------------------------------------
def _cloud(n=60, d=5, seed=2):
    return np.random.default_rng(seed).normal(size=(n, d))


def _ref_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    D = _brute(np.asarray(X, dtype=np.float64))
    np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, idx, axis=1), idx


@pytest.mark.parametrize("fn", ["knn", "pairwise"])
def test_nan_rows_raise_naming_the_rows(fn):
    X = torch.tensor(_cloud())
    X[[4, 9], 1] = float("nan")
    X[11, 0] = float("inf")
    call = (lambda: knn(X, 2)) if fn == "knn" else (lambda: pairwise_distances(X))
    with pytest.raises(ValueError, match=r"X has 3 rows with NaN or Inf values \(rows 4, 9, 11\); drop them first"):
        call()


@pytest.mark.parametrize("dtype,expected", [(torch.int32, torch.float32), (torch.int16, torch.float32),
                                            (torch.uint8, torch.float32), (torch.int64, torch.float64)])
def test_integer_input_is_cast_like_the_estimators(dtype, expected):
    X = np.random.default_rng(3).integers(0, 50, size=(40, 3))
    d, idx = knn(torch.tensor(X).to(dtype), 3)
    ref_d, _ = _ref_knn(X, 3)
    assert d.dtype == expected and idx.dtype == torch.long
    np.testing.assert_allclose(d.numpy(), ref_d, rtol=1e-6)  # ties make indices ambiguous
    P = pairwise_distances(torch.tensor(X).to(dtype))
    assert P.dtype == expected
    np.testing.assert_allclose(P.numpy(), _brute(X.astype(np.float64)), rtol=1e-6, atol=1e-5)


def test_numpy_input_is_accepted():
    X = _cloud()
    d, idx = knn(X, 4)
    ref_d, ref_idx = _ref_knn(X, 4)
    assert isinstance(d, torch.Tensor) and d.dtype == torch.float64
    np.testing.assert_allclose(d.numpy(), ref_d, rtol=1e-12)
    assert (idx.numpy() == ref_idx).all()
    np.testing.assert_allclose(pairwise_distances(X.astype(np.float32)).numpy(), _brute(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    X = torch.tensor(_cloud()).to(dtype)
    d, idx = knn(X, 3)
    ref_d, _ = _ref_knn(X.double().numpy(), 3)  # the same rounded values, float64
    assert d.dtype == torch.float32
    np.testing.assert_allclose(d.numpy(), ref_d, rtol=1e-5)
    P = pairwise_distances(X)
    assert P.dtype == torch.float32
    np.testing.assert_allclose(P.numpy(), _brute(X.double().numpy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [0, -1, 60, 61, 2.0, True, "2"])
def test_k_out_of_range_or_not_an_int(k):
    with pytest.raises(ValueError, match=rf"k must be an int with 1 <= k < N=60, got k={k!r}"):
        knn(_cloud(), k)


@pytest.mark.parametrize("fn", [lambda X, c: knn(X, 2, chunk_size=c), lambda X, c: pairwise_distances(X, chunk_size=c)])
@pytest.mark.parametrize("chunk_size", [0, -3, 2.5])
def test_bad_chunk_size(fn, chunk_size):
    with pytest.raises(ValueError, match=rf"chunk_size must be a positive int or None, got {chunk_size!r}"):
        fn(_cloud(), chunk_size)


@pytest.mark.parametrize("X,msg", [
    (np.zeros(5), r"X must have shape \(N, D\), got shape \(5,\)"),
    (np.zeros((0, 3)), r"X needs at least 1 points with finite values, got 0"),
    (np.zeros((4, 2), dtype=np.complex64), r"X must be real-valued"),
])
def test_shape_and_dtype_errors(X, msg):
    with pytest.raises(ValueError, match=msg):
        knn(X, 1)
    with pytest.raises(ValueError, match=msg):
        pairwise_distances(X)


# -- scale: float32 clouds far from 1 ------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e19, 1e25, 1e35, 1e-20, 1e-30])
def test_huge_and_tiny_float32_match_float64(scale):
    X32 = torch.tensor(_cloud(80, 6) * scale, dtype=torch.float32)
    ref = X32.double().numpy()  # the same rounded values, unscaled, in float64
    d, idx = knn(X32, 3)
    ref_d, ref_idx = _ref_knn(ref, 3)
    assert torch.isfinite(d).all()
    np.testing.assert_allclose(d.numpy(), ref_d, rtol=1e-5)
    assert (idx.numpy() == ref_idx).all()
    np.testing.assert_allclose(pairwise_distances(X32).numpy(), _brute(ref), rtol=1e-5, atol=1e-5 * scale)


def test_distances_beyond_the_dtype_raise():
    X = [[3e38, 0.0], [-3e38, 0.0], [0.0, 1.0]]  # finite float32 values 6e38 apart
    assert torch.isfinite(knn(torch.tensor(X), 1)[0]).all()  # nearest neighbours 3e38 apart: fine
    with pytest.raises(ValueError, match=r"X: distances exceed the largest torch.float32 \(3.4e\+38\); pass float64 input"):
        knn(torch.tensor(X), 2)
    with pytest.raises(ValueError, match=r"pass float64 input"):
        pairwise_distances(torch.tensor(X))
    d, idx = knn(torch.tensor(X, dtype=torch.float64), 1)  # float64 holds them
    np.testing.assert_allclose(d.numpy().ravel(), [3e38, 3e38, 3e38], rtol=1e-12)
    with pytest.raises(ValueError, match=r"X: distances exceed the largest torch.float64 .*; rescale the input"):
        knn(torch.tensor(X, dtype=torch.float64) * 5e269, 2)  # values 1.5e308, 3e308 apart
