"""TwoNN intrinsic dimension (Facco, d'Errico, Rodriguez & Laio, 2017).

Definition. For every point let r1 <= r2 be the distances to its two nearest neighbours and
mu = r2 / r1. If the density is roughly constant on the scale of the second neighbour, mu
follows a Pareto law with shape d: F(mu) = 1 - mu^(-d), so -log(1 - F(mu)) = d log(mu) is a
line through the origin. The estimate is the least-squares slope of that line over the
points (log mu_(i), -log(1 - i/N)), i = 1..n_keep, where mu_(1) <= ... <= mu_(N) are the
sorted ratios, F_emp(mu_(i)) = i/N and the ``discard_fraction`` largest ratios are left out
(n_keep = floor(N (1 - discard_fraction)), at most N - 1 so that the last point is finite):

    d = sum_i x_i y_i / sum_i x_i^2,  x_i = log mu_(i),  y_i = -log(1 - i/N).

This is the estimator of scikit-dimension's ``TwoNN(discard_fraction=0.1)`` (0.5, which also
uses F_emp = i/N, i = 1..n_keep).

Reference: E. Facco, M. d'Errico, A. Rodriguez, A. Laio, "Estimating the intrinsic dimension
of datasets by a minimal neighborhood information", Sci. Rep. 7:12140 (2017).

Cost: one exact 2-nearest-neighbour search, O(N^2 D) flops in chunks of ``chunk_size`` rows
(O(chunk_size * N) extra memory), on the input's device; the fit is O(N log N) on the CPU
in float64.

Failure modes: fewer than 3 finite points, a constant cloud, too few points left to fit
(n_keep < 2) and a degenerate fit (every kept ratio equal to 1, e.g. a regular grid) raise
``ValueError``; NaN/Inf rows and exact duplicates are handled as described in
:mod:`geomonitor.intrinsic._common`; an estimate below 0.5 (near-duplicate points) warns
(:class:`~geomonitor.intrinsic.IntrinsicDimensionWarning`). Float32 clouds of any finite
scale (1e-30 or 1e30) give the float64 estimate: the cloud is rescaled by a power of two.

Example:
    >>> X = torch.randn(2000, 5) @ torch.randn(5, 100)   # a 5-dim subspace of R^100
    >>> twonn(X)                                          # close to 5
"""
from __future__ import annotations

from typing import Any

import torch

from geomonitor.intrinsic._common import (
    DUPLICATE_POLICIES, Estimate, check_choice, check_fraction, check_int, flag_degenerate,
    neighbour_distances, points,
)

__all__ = ["check_twonn_options", "twonn", "twonn_estimate", "twonn_from_ratios"]


def check_twonn_options(
    *, discard_fraction: float = 0.1, chunk_size: int | None = None, duplicates: str = "drop"
) -> dict[str, Any]:
    """Validated TwoNN options with defaults filled in (``ValueError`` on a bad one)."""
    return {
        "discard_fraction": check_fraction("discard_fraction", discard_fraction,
                                           low_open=False, high_open=True),
        "chunk_size": check_int("chunk_size", chunk_size, minimum=1, allow_none=True),
        "duplicates": check_choice("duplicates", duplicates, DUPLICATE_POLICIES),
    }


def twonn_from_ratios(mu: torch.Tensor, discard_fraction: float = 0.1) -> float:
    """TwoNN slope from the N ratios mu = r2/r1 (all finite, >= 1); see the module docstring.

    Raises ``ValueError`` when fewer than 2 ratios are kept or all kept ratios equal 1.
    """
    mu = mu.detach().to("cpu", torch.float64).flatten()
    n = mu.numel()
    n_keep = min(int(n * (1 - discard_fraction)), n - 1)
    if n_keep < 2:
        raise ValueError(f"TwoNN keeps {n_keep} of {n} ratios with discard_fraction="
                         f"{discard_fraction}; need at least 2 (more points or a smaller fraction)")
    x = mu.sort().values[:n_keep].log()
    i = torch.arange(1, n_keep + 1, dtype=torch.float64)
    y = -torch.log1p(-i / n)
    sxx = float((x * x).sum())
    if sxx == 0.0:
        raise ValueError("TwoNN fit is degenerate: every kept ratio r2/r1 equals 1 "
                         "(equidistant neighbours, e.g. a regular grid)")
    return float((x * y).sum()) / sxx


def twonn_estimate(
    X: Any, *, discard_fraction: float = 0.1, chunk_size: int | None = None,
    duplicates: str = "drop",
) -> Estimate:
    """TwoNN estimate of ``X`` (N, D) with the input bookkeeping; see :func:`twonn`."""
    o = check_twonn_options(discard_fraction=discard_fraction, chunk_size=chunk_size,
                            duplicates=duplicates)
    discard_fraction, chunk_size, duplicates = o["discard_fraction"], o["chunk_size"], o["duplicates"]
    P, n_bad = points(X)
    dist, n_dup = neighbour_distances(P, 2, chunk_size=chunk_size, duplicates=duplicates)
    d = twonn_from_ratios(dist[:, 1] / dist[:, 0], discard_fraction)
    return flag_degenerate(Estimate(d, dist.shape[0], n_bad, n_dup), "TwoNN")


def twonn(
    X: Any, *, discard_fraction: float = 0.1, chunk_size: int | None = None,
    duplicates: str = "drop",
) -> float:
    """TwoNN intrinsic dimension of the point cloud ``X``.

    Args:
        X: (N, D) torch tensor on any device, or numpy array; fp16/bf16/integers are
            computed in float32, float64 stays float64.
        discard_fraction: fraction of the largest ratios r2/r1 left out of the fit, in [0, 1).
        chunk_size: rows per block of the neighbour search (None: ~128 MiB blocks).
        duplicates: ``"drop"`` (keep one copy, warn with the count) or ``"raise"``.

    Returns:
        The estimate as a Python float.

    Raises:
        ValueError: see the module docstring.
    """
    return twonn_estimate(X, discard_fraction=discard_fraction, chunk_size=chunk_size,
                          duplicates=duplicates).dimension
