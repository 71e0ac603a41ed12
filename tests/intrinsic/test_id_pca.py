"""PCA dimensions against a float64 numpy eigendecomposition of the covariance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geomonitor.intrinsic import pca_dimension


def _cov_eigs(X: np.ndarray) -> np.ndarray:
    lam = np.linalg.eigvalsh(np.cov(np.asarray(X, dtype=np.float64), rowvar=False))
    return np.clip(lam[::-1], 0, None)


def _anisotropic(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(0, -2, d, dtype=torch.float64)


@pytest.mark.parametrize("n, d", [(500, 20), (40, 300)])  # D <= N and D > N (Gram side)
def test_participation_ratio_matches_eigvalsh(n, d):
    X = _anisotropic(n, d, seed=n + d)
    lam = _cov_eigs(X.numpy())
    assert pca_dimension(X) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-9)
    assert pca_dimension(X.float()) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-4)


@pytest.mark.parametrize("t", [0.5, 0.9, 0.99])
def test_variance_threshold_count_matches_eigvalsh(t):
    X = _anisotropic(400, 30, seed=3)
    lam = _cov_eigs(X.numpy())
    ref = int(np.searchsorted(np.cumsum(lam) / lam.sum(), t) + 1)
    assert pca_dimension(X, variance_threshold=t) == ref


def test_pca_on_a_subspace():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 50, generator=g, dtype=torch.float64)
    assert pca_dimension(X, variance_threshold=1.0) == 4.0
    iso = torch.randn(20000, 3, generator=g, dtype=torch.float64) @ torch.linalg.qr(
        torch.randn(50, 3, generator=g, dtype=torch.float64))[0].T
    assert pca_dimension(iso) == pytest.approx(3.0, rel=0.02)  # isotropic: PR = d


@pytest.mark.parametrize("t", [0.0, 1.5, "0.9", True])
def test_variance_threshold_errors(t):
    with pytest.raises(ValueError, match=r"variance_threshold must be a number in \(0, 1\], got"):
        pca_dimension(torch.randn(10, 3), variance_threshold=t)


def test_pca_duplicates_are_harmless():
    X = _anisotropic(200, 10, seed=1)
    Xd = torch.cat([X, X[:50]])
    lam = _cov_eigs(Xd.numpy())
    assert pca_dimension(Xd) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-9)
