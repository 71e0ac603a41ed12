"""Shared pieces of the intrinsic-dimension estimators: argument checks, the result record,
and the neighbour search with its duplicate policy.

Exact duplicates make every nearest-neighbour estimator undefined (a zero distance in a
ratio or a logarithm). They are found from the neighbour search itself (a zero first
distance, so the check costs nothing when there are none) and then either dropped, keeping
one copy of each distinct point, with an :class:`IntrinsicDimensionWarning` that says how
many rows went (``duplicates="drop"``, the default), or reported by a ``ValueError`` that says
how many points have a duplicate (``duplicates="raise"``).

Near duplicates (distinct rows much closer to each other than to the rest of the cloud, e.g.
pairs 1e-7 apart in a cloud of spread 1) pass that check and drive the nearest-neighbour
estimators towards 0: TwoNN's ratio r2/r1 becomes huge for every point (TwoNN gives ~0.05 for
such pairs, as scikit-dimension does), and MLE's log T_k/T_j terms grow likewise. A point
cloud sampling a manifold of dimension >= 1 gives estimates around 1 or more, so an estimate
below :data:`DEGENERATE_BELOW` (0.5) comes with an :class:`IntrinsicDimensionWarning` saying
the input is degenerate; the value itself is returned unchanged (it is what the estimator
defines).
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from geomonitor import _inputs
from geomonitor import distances as _distances

__all__ = ["DEGENERATE_BELOW", "Estimate", "IntrinsicDimensionWarning", "flag_degenerate",
           "neighbour_distances", "points"]

DUPLICATE_POLICIES = ("drop", "raise")
DEGENERATE_BELOW = 0.5


class IntrinsicDimensionWarning(UserWarning):
    """Input was degraded before estimation (rows with NaN/Inf or exact duplicates removed),
    or the estimate says the input is degenerate (below 0.5: near-duplicate points)."""


class Estimate(NamedTuple):
    """An estimate and what was done to the input to get it.

    Attributes:
        dimension: the intrinsic dimension estimate.
        n_points: number of points the estimate used.
        n_nonfinite: rows dropped because they held NaN or Inf.
        n_duplicates: rows dropped as exact copies of another row.
    """

    dimension: float
    n_points: int
    n_nonfinite: int = 0
    n_duplicates: int = 0


def flag_degenerate(est: Estimate, method: str, *, name: str = "X") -> Estimate:
    """``est`` unchanged; warns (:class:`IntrinsicDimensionWarning`) when its dimension is
    below :data:`DEGENERATE_BELOW`, the mark of near-duplicate points (module docstring)."""
    if est.dimension < DEGENERATE_BELOW:
        warnings.warn(f"{name}: {method} dimension {est.dimension:.3g} is below "
                      f"{DEGENERATE_BELOW} on {est.n_points} points, which indicates degenerate "
                      "input (near-duplicate points: nearest neighbours far closer than the next "
                      "ones), not a dimension", IntrinsicDimensionWarning, stacklevel=4)
    return est


# --------------------------------------------------------------------------- argument checks
def check_fraction(name: str, value: Any, *, low_open: bool, high_open: bool) -> float:
    """``value`` as a float in the interval (or half-open interval) between 0 and 1."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lo}0, 1{hi}, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{extra}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


# --------------------------------------------------------------------------- input handling
def points(X: Any, *, name: str = "X") -> tuple[torch.Tensor, int]:
    """Validated (N, D) float32/float64 cloud on its own device, and the count of NaN/Inf rows.

    The cloud comes back multiplied by the power of two that brings its largest absolute value
    into [1/2, 1) (:func:`geomonitor._inputs.unit_scale`): exact, and every estimator here is
    scale-free, while squared distances of float32 values above ~1e19 or below ~1e-19 would
    overflow or underflow.

    Warns (:class:`IntrinsicDimensionWarning`) when rows were dropped; raises ``ValueError``
    for fewer than 3 finite points or a constant cloud (all points identical).
    """
    P = _inputs.as_points(X, name=name, min_points=3)
    if P.n_dropped:
        warnings.warn(f"{name}: dropped {P.n_dropped} rows with NaN or Inf values "
                      f"({P.X.shape[0]} points left)", IntrinsicDimensionWarning, stacklevel=3)
    if bool((P.X == P.X[:1]).all()):
        raise ValueError(f"{name} is constant (all {P.X.shape[0]} points identical); "
                         "the intrinsic dimension is undefined")
    return _inputs.unit_scale(P.X)[0], P.n_dropped


def neighbour_distances(
    X: torch.Tensor, k: int, *, chunk_size: int | None, duplicates: str, name: str = "X"
) -> tuple[torch.Tensor, int]:
    """Distances (N', k) to the k nearest other points, ascending, after the duplicate policy.

    Returns the distances and the number of rows dropped as duplicates (N' = N - that).
    Raises ``ValueError`` when fewer than ``k + 1`` distinct points remain, and when
    ``duplicates="raise"`` and some point has an exact copy.
    """
    n = X.shape[0]
    if k >= n:
        raise ValueError(f"{name} needs more than k={k} points for {k} neighbours, got {n}")
    dist, _ = _distances.knn(X, k, chunk_size=chunk_size)
    zero = dist[:, 0] == 0
    if not bool(zero.any()):
        return dist, 0
    n_with_copy = int(zero.sum())
    if duplicates == "raise":
        raise ValueError(f"{name} has {n_with_copy} of {n} points with an exact duplicate "
                         "(zero nearest-neighbour distance); remove them or pass duplicates='drop'")
    U = torch.unique(X, dim=0)
    n_dup = n - U.shape[0]
    warnings.warn(f"{name}: dropped {n_dup} exact duplicate rows ({n_with_copy} points had a "
                  f"copy; {U.shape[0]} distinct points left)", IntrinsicDimensionWarning,
                  stacklevel=3)
    if U.shape[0] <= k or U.shape[0] < 3:
        raise ValueError(f"{name} has only {U.shape[0]} distinct points after dropping {n_dup} "
                         f"duplicates; need at least {max(3, k + 1)}")
    dist, _ = _distances.knn(U, k, chunk_size=chunk_size)
    if bool((dist[:, 0] == 0).any()):  # distinct rows closer than float resolution
        raise ValueError(f"{name} has distinct points whose distance rounds to 0 in "
                         f"{U.dtype}; pass float64 input")
    return dist, n_dup
