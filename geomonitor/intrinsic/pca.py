"""Linear (PCA) dimension of a point cloud: participation ratio or variance-threshold count.

Definitions. With λ_1 >= ... >= λ_D >= 0 the eigenvalues of the sample covariance of X,

* participation ratio  PR = (sum_i λ_i)^2 / sum_i λ_i^2 = tr(C)^2 / ||C||_F^2,
  a continuous count of the directions that carry the variance (1 for a line, D for an
  isotropic cloud); used for neural representations by Recanatesi et al. (2019) and
  Ansuini et al. (2019) as the linear counterpart of the nonlinear estimators;
* variance-threshold count  the smallest n with sum_{i<=n} λ_i >= t * sum_i λ_i
  (``variance_threshold=t``), the classical "components for t of the variance".

The participation ratio needs no eigendecomposition: tr(C) and ||C||_F are computed from
the smaller Gram matrix (Xc^T Xc, D x D, or Xc Xc^T, N x N, which share their nonzero
eigenvalues), so memory never exceeds the size of X. The normalisation 1/(N-1) cancels.

References: S. Recanatesi et al., "Dimensionality compression and expansion in deep neural
networks", arXiv:1906.00443 (2019); A. Ansuini, A. Laio, J. H. Macke, D. Zoccolan, "Intrinsic
dimension of data representations in deep neural networks", NeurIPS 2019; P. Gao et al.,
"A theory of multineuronal dimensionality, dynamics and measurement", bioRxiv (2017).

Cost: O(N D min(N, D)) for the Gram matrix; the threshold count adds one symmetric
eigendecomposition, O(min(N, D)^3). Computed on the input's device in float32/float64.

Failure modes: fewer than 3 finite points and a constant cloud (zero total variance) raise
``ValueError``; NaN/Inf rows are dropped with a warning. Duplicates are harmless here.

Example:
    >>> X = torch.randn(1000, 3) @ torch.randn(3, 50)
    >>> pca_dimension(X, variance_threshold=0.99)   # 3.0
"""
from __future__ import annotations

from typing import Any

import torch

from geomonitor.intrinsic._common import Estimate, check_fraction, points

__all__ = ["check_pca_options", "pca_dimension", "pca_estimate"]


def check_pca_options(*, variance_threshold: float | None = None) -> dict[str, Any]:
    """Validated PCA options with defaults filled in (``ValueError`` on a bad one)."""
    if variance_threshold is not None:
        variance_threshold = check_fraction("variance_threshold", variance_threshold,
                                            low_open=True, high_open=False)
    return {"variance_threshold": variance_threshold}


def _gram(X: torch.Tensor) -> torch.Tensor:
    Xc = X - X.mean(dim=0, keepdim=True)
    return Xc.T @ Xc if X.shape[1] <= X.shape[0] else Xc @ Xc.T


def pca_estimate(X: Any, *, variance_threshold: float | None = None) -> Estimate:
    """PCA dimension of ``X`` (N, D) with the input bookkeeping; see :func:`pca_dimension`."""
    variance_threshold = check_pca_options(variance_threshold=variance_threshold)[
        "variance_threshold"]
    P, n_bad = points(X)
    G = _gram(P)
    total = float(torch.diagonal(G).sum())
    if not total > 0.0:
        raise ValueError("X has zero total variance; the PCA dimension is undefined")
    if variance_threshold is None:
        d = total**2 / float((G * G).sum())
    else:
        lam = torch.linalg.eigvalsh(G).flip(0).clamp_min(0)
        frac = lam.cumsum(0) / lam.sum()
        # tolerance: t = 1 must count only the nonzero directions, not rounding noise
        tol = 64 * torch.finfo(lam.dtype).eps
        d = float(min(int((frac < variance_threshold - tol).sum()) + 1, lam.numel()))
    return Estimate(float(d), P.shape[0], n_bad, 0)


def pca_dimension(X: Any, *, variance_threshold: float | None = None) -> float:
    """Participation ratio of ``X`` (N, D), or the variance-threshold count if given.

    Args:
        X: (N, D) torch tensor on any device, or numpy array (fp16/bf16 computed in float32).
        variance_threshold: None for the participation ratio; a fraction in (0, 1] for the
            number of principal components that explain that fraction of the variance.

    Returns:
        The dimension as a Python float (an integer value for the threshold count).
    """
    return pca_estimate(X, variance_threshold=variance_threshold).dimension
