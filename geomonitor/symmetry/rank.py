"""Low rank from rotation symmetry: effective rank, stable rank and RankMe.

Between two linear layers ``W2 @ act(W1 x)`` with a linear (or rotation-equivariant)
activation, ``(W1, W2) -> (R W1, W2 R^T)`` is a symmetry for every orthogonal R; with weight
decay, gradient descent breaks it toward low-rank solutions (Ziyin, Xu, Poggio & Chuang,
"Parameter Symmetry Potentially Unifies Deep Learning Theory", arXiv 2502.05300, 2025). These
numbers measure how low the rank is.

Definitions, for a matrix M with singular values s_1 >= ... >= s_r >= 0:

* **effective rank** (Roy & Vetterli, "The effective rank: a measure of effective
  dimensionality", EUSIPCO 2007): ``p_k = s_k / sum_i s_i`` (L1-normalised singular values),
  ``erank = exp(-sum_k p_k log p_k)`` with ``0 log 0 = 0``. Between 1 and rank(M); r equal
  singular values give r; s = (2, 1) gives ``exp(H(2/3, 1/3)) = 1.8899``.
* **stable rank** (e.g. Rudelson & Vershynin 2007): ``||M||_F^2 / ||M||_2^2 = sum s_k^2 / s_1^2``,
  between 1 and rank(M), insensitive to tiny singular values.
* **RankMe** (Garrido, Balestriero, Najman & LeCun, "RankMe: Assessing the downstream
  performance of pretrained self-supervised representations by their rank", ICML 2023): the
  effective rank of the (N, D) embedding matrix Z with their epsilon,
  ``p_k = s_k / ||s||_1 + eps``, ``RankMe = exp(-sum_k p_k log p_k)``, eps = 1e-7.

Centring: RankMe here is computed, as in Garrido et al. (their Eq. 1 and code), on the
**uncentred** Z. Some libraries compute a "PCA" version on centred features (the singular
values of ``Z - mean(Z)``), which is a different number: the mean direction counts as one
dimension here and not there (a cloud spread around a far-away mean has RankMe about one more
than its centred value). The uncentred form is kept because it is the published definition
and because a ReLU layer's mean is part of what the next layer sees.

Scale: the three numbers are scale-blind, ``rank(c M) = rank(M)`` for every ``c > 0``: a
weight decayed to a tiny norm (a collapsed network at chance accuracy) can keep a high effective
rank. Read them beside ``||M||_F`` (the monitor's symmetry family logs ``weight_norm`` next to
the weight ranks).

Zero matrices: all singular values zero; the three functions return 0.0 (the rank of the zero
matrix) rather than the 0/0 of the formulas. Cost: the effective rank and RankMe need the whole
spectrum, one SVD, O(m n min(m, n)), on the tensor's device (``torch.linalg.svdvals``; retried
in float64 on the CPU when it does not converge; a matrix 4x longer than wide goes through the
float64 Gram matrix of its short side, see :func:`geomonitor.symmetry._linalg.singular_values`):
for a 4096 x 4096 weight tens of seconds on one CPU thread, so a monitor caps the size
(``SymmetryFamily(max_svd_size=...)``). The stable rank needs only ``sigma_max``: Lanczos,
O(m n) per step (:func:`stable_rank`). float16/bfloat16 input is computed in float32.

Example:
    >>> effective_rank(torch.diag(torch.tensor([2.0, 1.0])))   # exp(H(2/3, 1/3))
    1.8899...
    >>> stable_rank(torch.eye(5))
    5.0
"""
from __future__ import annotations

import math
from typing import Any

import torch

from geomonitor.symmetry._linalg import as_real, singular_values, top_singular_value

__all__ = ["effective_rank", "effective_rank_from_singular_values", "rankme", "stable_rank"]


def _matrix(M: Any, name: str) -> torch.Tensor:
    t = as_real(M, name, min_dim=2)
    return t.reshape(t.shape[0], -1)


def _entropy_rank(s: torch.Tensor, eps: float) -> float:
    s = s.to(torch.float64)
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s / total + eps
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    return math.exp(-float(plogp.sum()))


def effective_rank_from_singular_values(s: Any, *, eps: float = 0.0) -> float:
    """``exp(H(p))`` with ``p = s / sum(s) + eps`` from non-negative singular values ``s`` (1-D).

    Raises:
        ValueError: ``s`` not 1-D, empty, non-finite or with a negative entry; ``eps`` < 0.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    t = as_real(s, "s", min_dim=1, max_dim=1)
    if bool((t < 0).any()):
        raise ValueError(f"s must be non-negative singular values, got minimum {float(t.min())}")
    return _entropy_rank(t, float(eps))


def effective_rank(M: Any) -> float:
    """Effective rank of ``M`` (Roy & Vetterli 2007; see the module docstring).

    Args:
        M: (m, n) matrix, or a kernel (out, in, *k) taken as the (out, in * prod(k)) matrix.

    Returns:
        ``exp`` of the Shannon entropy of the L1-normalised singular values, in [1, min(m, n)];
        0.0 for a zero matrix.

    Raises:
        ValueError: fewer than 2 dimensions, a zero size, NaN/Inf entries, complex dtype, or
            an SVD that does not converge (also in float64 on the CPU).
    """
    return _entropy_rank(singular_values(_matrix(M, "M"), "M"), 0.0)


def stable_rank(M: Any, *, generator: torch.Generator | None = None, tol: float = 1e-10) -> float:
    """Stable rank ``||M||_F^2 / ||M||_2^2`` of ``M`` (see the module docstring).

    Only ``sigma_max`` is needed: it comes from Lanczos on ``M^T M`` (the smaller Gram
    operator; :func:`geomonitor.symmetry._linalg.top_singular_value`), not from a full SVD:
    O(m n) per step, typically 10-150 steps, against O(m n min(m, n)) for the SVD (a 4096 x
    4096 weight: about 2-3 s on one CPU thread instead of tens of seconds). The result matches
    the SVD's to a relative ``tol`` (``sigma_max^2`` within ``tol`` relative; Lanczos gives a
    lower bound of it, so the stable rank is, if anything, over-estimated by that much).

    Args:
        M: (m, n) matrix, or a kernel (out, in, *k) taken as (out, in * prod(k)).
        generator: draws Lanczos' start vector; ``None``: a generator seeded with 0 (the same
            number at every call).
        tol: relative tolerance on ``sigma_max^2``, in (0, 1).

    Returns:
        A float in [1, rank(M)]; 0.0 for a zero matrix.

    Raises:
        ValueError: as :func:`effective_rank` (but no SVD), or ``tol`` not in (0, 1).
    """
    t = _matrix(M, "M")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    top = top_singular_value(t, gen, tol=tol)
    if top == 0.0:
        return 0.0
    return float(t.to(torch.float64).pow(2).sum()) / (top * top)


def rankme(Z: Any, eps: float = 1e-7) -> float:
    """RankMe of the embeddings ``Z`` (Garrido et al. 2023), on the uncentred matrix.

    Args:
        Z: (N, D) activations of N probe samples (a conv output (N, C, H, W) is flattened to
            (N, C*H*W)).
        eps: the epsilon added to each normalised singular value (their default 1e-7).

    Returns:
        ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / ||s||_1 + eps``, over the min(N, D)
        singular values; 0.0 when Z is all zeros.

    Raises:
        ValueError: fewer than 2 samples, NaN/Inf entries, bad ``eps``, an SVD failure.
    """
    t = _matrix(Z, "Z")
    if t.shape[0] < 2:
        raise ValueError(f"Z needs at least 2 samples (rows), got shape {tuple(t.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return _entropy_rank(singular_values(t, "Z"), float(eps))
