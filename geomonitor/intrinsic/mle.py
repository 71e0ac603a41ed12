"""Maximum-likelihood intrinsic dimension (Levina & Bickel, 2004; MacKay & Ghahramani, 2005).

Definition. With T_1(x) <= ... <= T_k(x) the distances from x to its k nearest neighbours,
the local estimate of Levina & Bickel is

    m_k(x) = (k - 1) / sum_{j=1}^{k-1} log(T_k(x) / T_j(x))

(``unbiased=True`` uses k - 2 in the numerator, the unbiased form of the same paper).
Levina & Bickel average m_k(x) over points; MacKay & Ghahramani showed that the
likelihood combines the *inverses*, so the global estimate is

    m_k = [ (1/N) sum_x m_k(x)^(-1) ]^(-1) = (k - 1) / mean_x sum_j log(T_k(x) / T_j(x)).

This is scikit-dimension's ``MLE()`` with its defaults (no noise model, ``unbiased=False``,
``comb="mle"``), whose ``fit`` uses ``n_neighbors=20``; ``k=20`` is the default here too.
scikit-dimension lowers k to N - 1 with a warning where N <= k; here that is a ``ValueError``.

References: E. Levina, P. J. Bickel, "Maximum likelihood estimation of intrinsic dimension",
NeurIPS 2004. D. J. C. MacKay, Z. Ghahramani, "Comments on 'Maximum likelihood estimation of
intrinsic dimension' by E. Levina and P. Bickel" (2005).

Cost: one exact k-nearest-neighbour search, O(N^2 D) flops in chunks (O(chunk_size * N) extra
memory) on the input's device, then O(N k).

Failure modes: fewer than max(3, k + 1) distinct finite points, a constant cloud, or every
point with k equidistant neighbours (the sum is 0) raise ``ValueError``; NaN/Inf rows and
exact duplicates are handled as described in :mod:`geomonitor.intrinsic._common`.

Example:
    >>> X = torch.randn(2000, 5) @ torch.randn(5, 100)   # a 5-dim subspace of R^100
    >>> mle(X, k=20)                                      # close to 5
"""
from __future__ import annotations

from typing import Any

import torch

from geomonitor.intrinsic._common import (
    DUPLICATE_POLICIES, Estimate, check_bool, check_choice, check_int, flag_degenerate,
    neighbour_distances, points,
)

__all__ = ["check_mle_options", "mle", "mle_estimate", "mle_from_distances"]


def check_mle_options(
    *, k: int = 20, unbiased: bool = False, chunk_size: int | None = None,
    duplicates: str = "drop",
) -> dict[str, Any]:
    """Validated MLE options with defaults filled in (``ValueError`` on a bad one)."""
    unbiased = check_bool("unbiased", unbiased)
    return {
        "k": check_int("k", k, minimum=3 if unbiased else 2),
        "unbiased": unbiased,
        "chunk_size": check_int("chunk_size", chunk_size, minimum=1, allow_none=True),
        "duplicates": check_choice("duplicates", duplicates, DUPLICATE_POLICIES),
    }


def mle_from_distances(dist: torch.Tensor, unbiased: bool = False) -> float:
    """Global MLE from (N, k) ascending positive neighbour distances; see the module docstring."""
    k = dist.shape[1]
    kfac = k - 2 if unbiased else k - 1
    d = dist.detach().to(torch.float64) if dist.device.type == "cpu" else dist.detach()
    s = torch.log(d[:, -1:] / d[:, :-1]).sum(dim=1)  # sum_j log(T_k / T_j), j < k
    mean_s = float(s.to("cpu", torch.float64).mean())
    if mean_s == 0.0:
        raise ValueError(f"MLE is degenerate: every point has {k} equidistant neighbours")
    return kfac / mean_s


def mle_estimate(
    X: Any, *, k: int = 20, unbiased: bool = False, chunk_size: int | None = None,
    duplicates: str = "drop",
) -> Estimate:
    """MLE estimate of ``X`` (N, D) with the input bookkeeping; see :func:`mle`."""
    o = check_mle_options(k=k, unbiased=unbiased, chunk_size=chunk_size, duplicates=duplicates)
    k, unbiased, chunk_size, duplicates = o["k"], o["unbiased"], o["chunk_size"], o["duplicates"]
    P, n_bad = points(X)
    dist, n_dup = neighbour_distances(P, k, chunk_size=chunk_size, duplicates=duplicates)
    return flag_degenerate(Estimate(mle_from_distances(dist, unbiased), dist.shape[0], n_bad, n_dup), "MLE")


def mle(
    X: Any, *, k: int = 20, unbiased: bool = False, chunk_size: int | None = None,
    duplicates: str = "drop",
) -> float:
    """Levina-Bickel / MacKay-Ghahramani MLE intrinsic dimension of ``X``.

    Args:
        X: (N, D) torch tensor on any device, or numpy array (fp16/bf16 computed in float32).
        k: neighbours per point, >= 2 (>= 3 with ``unbiased``); needs N > k.
        unbiased: use k - 2 instead of k - 1 in the local estimate.
        chunk_size: rows per block of the neighbour search (None: ~128 MiB blocks).
        duplicates: ``"drop"`` (keep one copy, warn with the count) or ``"raise"``.

    Returns:
        The estimate as a Python float.
    """
    return mle_estimate(X, k=k, unbiased=unbiased, chunk_size=chunk_size,
                        duplicates=duplicates).dimension
