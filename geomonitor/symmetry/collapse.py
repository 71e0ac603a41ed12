"""Neural collapse of the penultimate features (Papyan, Han & Donoho, PNAS 2020).

Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep
learning training", PNAS 117(40), 2020. With features h_i (the input of the last linear
classifier) of N samples in K classes, class means mu_c, global mean mu_G (mean of all
samples), centred class means m_c = mu_c - mu_G:

* **NC1** (within-class variability collapse): ``Tr(Sigma_W Sigma_B^+) / K`` with
  ``Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and
  ``Sigma_B = 1/K sum_c m_c m_c^T`` (their Fig. 6). Computed without forming D x D matrices:
  with the thin SVD ``M = U S V^T`` of the (K, D) matrix of centred means,
  ``Sigma_B^+ = K V S^-2 V^T`` and ``NC1 = sum_k ||E v_k||^2 / (N s_k^2)``, E the (N, D)
  within-class deviations; singular values below ``max(K, D) * eps(dtype) * s_1`` are dropped
  (the cutoff of ``pinv``).
* **NC2** (convergence to a simplex equiangular tight frame), two deviations that go to 0:
  ``nc2_equinorm = std_c ||m_c|| / mean_c ||m_c||`` (population std; their Fig. 2) and
  ``nc2_equiangular = mean_{c != c'} |cos(m_c, m_c') + 1/(K-1)|`` (the distance to the ETF
  angle, their Fig. 4 "maximal-angle equiangularity").
* **NC3** (self-duality), when the classifier weight W (K_w, D) is given:
  ``|| W_P / ||W_P||_F - M / ||M||_F ||_F^2`` with W_P the rows of the classes present (their
  Fig. 5), in [0, 4].
* **NC4** (simplification to the nearest class centre), when W is given: the fraction of
  samples on which ``argmax_c (W h + b)_c`` differs from ``argmin_c ||h - mu_c||`` (over the
  classes present; their Fig. 7).

Classes absent from ``labels`` are left out (K counts the classes present); label values must
index rows of ``weight``. Cost: O(N D K) plus an SVD of the (K, D) means, on the features'
device; float16/bfloat16 computed in float32.

Failure modes (``ValueError``): fewer than 2 classes present, NaN/Inf features, features and
labels of different lengths, non-integer or negative labels, labels beyond the classifier's
rows, class means that all coincide (Sigma_B = 0: NC1 and NC2 undefined), a centred class
mean of norm zero (its angle undefined).

Example:
    >>> nc = neural_collapse(features, labels, weight=model.fc.weight, bias=model.fc.bias)
    >>> nc.nc1, nc.nc4
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from geomonitor.symmetry._linalg import as_real

__all__ = ["NeuralCollapse", "neural_collapse"]


class NeuralCollapse(NamedTuple):
    """NC1-NC4 (see the module docstring); ``nc3``/``nc4`` are None without a classifier."""

    nc1: float
    nc2_equinorm: float
    nc2_equiangular: float
    nc3: float | None
    nc4: float | None
    n_classes: int


def _labels(labels: Any, n: int) -> torch.Tensor:
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got dtype={y.dtype}, shape "
                         f"{tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"labels must have one entry per feature row ({n}), got {y.shape[0]}")
    if bool((y < 0).any()):
        raise ValueError(f"labels must be >= 0, got minimum {int(y.min())}")
    return y.long()


def neural_collapse(features: Any, labels: Any, weight: Any | None = None,
                    bias: Any | None = None) -> NeuralCollapse:
    """NC1, NC2 (equinorm, equiangularity), NC3 and NC4 of ``features`` (Papyan et al. 2020).

    Args:
        features: (N, D) penultimate features (the classifier's input) of N probe samples.
        labels: (N,) integer class labels.
        weight: (K_w, D) classifier weight (``nn.Linear.weight``), or None (no NC3/NC4).
        bias: (K_w,) classifier bias, or None (used by NC4 only).

    Returns:
        :class:`NeuralCollapse` (floats; ``nc3``/``nc4`` None when ``weight`` is None).

    Raises:
        ValueError: see the module docstring.
    """
    H = as_real(features, "features", min_dim=2, max_dim=2)
    n, d = H.shape
    y = _labels(labels, n).to(H.device)
    classes, inv = torch.unique(y, return_inverse=True)
    k = classes.numel()
    if k < 2:
        raise ValueError(f"labels must hold at least 2 classes, got {k} "
                         f"({classes.tolist()})")
    counts = torch.bincount(inv, minlength=k).to(H.dtype)
    means = torch.zeros(k, d, dtype=H.dtype, device=H.device).index_add_(0, inv, H)
    means = means / counts[:, None]
    M = means - H.mean(dim=0)
    E = H - means[inv]
    # NC1 = Tr(Sigma_W Sigma_B^+) / K with Sigma_B^+ = K V S^-2 V^T
    s, vh = _svd(M)
    cutoff = max(k, d) * torch.finfo(H.dtype).eps * float(s[0]) if s.numel() else 0.0
    keep = s > cutoff
    if float(s[0]) == 0.0 or not bool(keep.any()):
        raise ValueError("the class means of features all coincide (between-class covariance "
                         "is zero): NC1 and NC2 are undefined")
    proj = E @ vh[keep].T  # (N, r)
    nc1 = float(((proj ** 2).sum(dim=0) / (n * s[keep] ** 2)).sum())
    norms = M.norm(dim=1)
    if bool((norms == 0).any()):
        raise ValueError("a centred class mean of features has norm zero: its angle (NC2) is "
                         "undefined")
    equinorm = float(norms.std(unbiased=False) / norms.mean())
    U = M / norms[:, None]
    cos = U @ U.T
    off = ~torch.eye(k, dtype=torch.bool, device=H.device)
    equiangular = float((cos[off] + 1.0 / (k - 1)).abs().mean())
    nc3 = nc4 = None
    if weight is not None:
        W = as_real(weight, "weight", min_dim=2, max_dim=2).to(device=H.device, dtype=H.dtype)
        if W.shape[1] != d:
            raise ValueError(f"weight must have shape (classes, {d}) to match features, got "
                             f"{tuple(W.shape)}")
        if int(classes.max()) >= W.shape[0]:
            raise ValueError(f"labels must index rows of weight ({W.shape[0]} classes), got "
                             f"label {int(classes.max())}")
        Wp = W[classes]
        wn = float(Wp.norm())
        if wn == 0.0:
            raise ValueError("weight rows of the classes present are all zero: NC3 undefined")
        nc3 = float((Wp / wn - M / M.norm()).pow(2).sum())
        logits = H @ W.T
        if bias is not None:
            b = as_real(bias, "bias", min_dim=1, max_dim=1).to(device=H.device, dtype=H.dtype)
            if b.shape[0] != W.shape[0]:
                raise ValueError(f"bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
            logits = logits + b
        predicted = logits.argmax(dim=1)
        nearest = classes[torch.cdist(H, means).argmin(dim=1)]
        nc4 = float((predicted != nearest).to(torch.float64).mean())
    return NeuralCollapse(nc1, equinorm, equiangular, nc3, nc4, k)


def _svd(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and right singular vectors of M; retried in float64 on the CPU."""
    try:
        _, s, vh = torch.linalg.svd(M, full_matrices=False)
        if bool(torch.isfinite(s).all()):
            return s, vh
    except (torch.linalg.LinAlgError, RuntimeError):
        pass
    try:
        _, s, vh = torch.linalg.svd(M.to("cpu", torch.float64), full_matrices=False)
    except (torch.linalg.LinAlgError, RuntimeError) as err:
        raise ValueError(f"the SVD of the class means (shape {tuple(M.shape)}) did not "
                         f"converge, also in float64 on the CPU: {err}") from err
    return s.to(M.device, M.dtype), vh.to(M.device, M.dtype)
