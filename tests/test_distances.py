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
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k < N=3, got k=3"):
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
