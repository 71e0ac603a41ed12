"""The one input boundary shared by the point-cloud estimators.

Every estimator that takes a point cloud ``X`` of shape (N, D) calls :func:`as_points`
first. It fixes, in one place, what a point cloud is allowed to be and what happens to
input that is not:

=====================  =====================================================================
input                  behaviour
=====================  =====================================================================
numpy array            converted with ``torch.as_tensor`` (CPU); other array-likes too
float16 / bfloat16     computed in float32 (the result never depends on half precision)
float32 / float64      kept
integer / bool         converted to float32 (float64 for 64-bit integers)
complex                ``ValueError``
not 2-D                ``ValueError`` naming the shape
rows with NaN / Inf    dropped; the count is returned so callers can report it (with
                       ``drop_nonfinite=False``, as ``knn``: ``ValueError`` naming the rows)
fewer than min_points  ``ValueError`` after dropping, saying how many finite rows remain
=====================  =====================================================================

Checks for duplicates and constant clouds depend on the estimator (a duplicate point is
harmless to PCA but makes the TwoNN ratio undefined) and live with each estimator.

Scale. Squared distances of a float32 cloud overflow from values of about 1e19 (1e19^2 * D
passes float32's 3.4e38) and underflow below about 1e-19, so nothing squares the cloud as
given: :func:`unit_scale` multiplies it by the power of two 2^-e that brings its largest
absolute value into [1/2, 1), and :func:`unscale` multiplies distances back by 2^e.
Multiplying by a power of two is exact in binary floating point (no rounding, unless a value
falls to the subnormal range, 2^-126 times smaller than the largest), every operation on the
scaled values rounds exactly as on the originals, so results are bit-identical to an
unscaled computation wherever that one neither overflows nor underflows. Scale-free
quantities (TwoNN, MLE, PCA dimensions) use the scaled cloud as it is; distances and
persistence bars are scaled back, and a result beyond the range of its dtype (distances of a
float64 cloud near 1e308) raises ``ValueError`` instead of coming back as ``inf``.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["Points", "as_points", "compute_dtype", "unit_scale", "unscale"]

_STEP = 64  # 2^±64 is a normal number in float32 and float64: scale in steps of at most this


class Points(NamedTuple):
    """A validated point cloud: ``X`` (N, D) floating tensor and the count of dropped rows."""

    X: torch.Tensor
    n_dropped: int


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an estimator computes in for input of ``dtype`` (float32 or float64)."""
    if dtype in (torch.float64, torch.int64):
        return torch.float64
    return torch.float32


def as_points(X: Any, *, name: str = "X", min_points: int = 3, drop_nonfinite: bool = True) -> Points:
    """Validate a point cloud and move it to a floating compute dtype on its own device.

    Args:
        X: array-like of shape (N, D): a torch tensor on any device, or a numpy array.
        name: the argument's name, used in error messages.
        min_points: smallest N accepted after non-finite rows are dropped.
        drop_nonfinite: drop rows with NaN or Inf (and count them); if False they raise.

    Returns:
        :class:`Points` with ``X`` as float32 or float64 on the input's device.

    Raises:
        ValueError: wrong rank, complex dtype, non-finite rows when ``drop_nonfinite`` is
            False, or fewer than ``min_points`` finite rows.
    """
    if isinstance(X, np.ndarray) and X.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype=object")
    t = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype={t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(t.shape)}")
    t = t.detach().to(compute_dtype(t.dtype))
    finite = torch.isfinite(t).all(dim=1)
    n_bad = int((~finite).sum())
    if n_bad:
        if not drop_nonfinite:
            rows = torch.nonzero(~finite).flatten()[:5].tolist()
            more = ", ..." if n_bad > len(rows) else ""
            raise ValueError(f"{name} has {n_bad} rows with NaN or Inf values (rows "
                             f"{', '.join(map(str, rows))}{more}); drop them first")
        t = t[finite]
    if t.shape[0] < min_points:
        raise ValueError(
            f"{name} needs at least {min_points} points with finite values, got {t.shape[0]}"
            + (f" ({n_bad} rows with NaN/Inf dropped)" if n_bad else "")
        )
    return Points(t, n_bad)


def _times_pow2(t: torch.Tensor, exponent: int) -> torch.Tensor:
    """``t * 2**exponent`` as a new tensor, exactly, in steps whose factor is a normal number."""
    out = t
    while exponent:
        step = max(-_STEP, min(_STEP, exponent))
        out = out * (2.0**step)
        exponent -= step
    return out if out is not t else t.clone()


def unit_scale(X: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(X * 2**-e, e)``, with ``e`` the binary exponent of ``max |X|``.

    The scaled cloud's largest absolute value lies in [1/2, 1) (``e = 0`` and ``X`` itself
    for an all-zero cloud), so its squared distances (at most ``4 D``) can neither overflow
    nor, for distinct points resolved by the dtype, underflow. Exact: see the module
    docstring. ``X`` must be finite (as :func:`as_points` leaves it).

    Cost: one pass over ``X`` and one host synchronisation (the exponent); a copy when
    ``e != 0``.

    Example:
        >>> Xs, e = unit_scale(torch.tensor([[3e19, 0.0], [0.0, -1e19]]))
        >>> float(Xs.abs().max()), e          # (0.8131516..., 65): 3e19 = 0.813... * 2**65
    """
    amax = float(X.abs().max()) if X.numel() else 0.0
    if amax == 0.0:
        return X, 0
    e = math.frexp(amax)[1]
    return (_times_pow2(X, -e) if e else X), e


def unscale(values: torch.Tensor, exponent: int, *, name: str = "X") -> torch.Tensor:
    """``values * 2**exponent`` exactly (distances of a :func:`unit_scale`-d cloud, back in
    the cloud's units), in ``values.dtype``.

    Raises:
        ValueError: a value overflows ``values.dtype`` (names ``name``, the dtype and the
            remedy).
    """
    if not exponent:
        return values
    out = _times_pow2(values, exponent)
    # unit-scaled distances are far below 2^64: only exponents this close to the top can overflow
    max_exponent = math.frexp(torch.finfo(values.dtype).max)[1]  # 128 or 1024
    if exponent >= max_exponent - _STEP and out.numel() \
            and not bool(torch.isfinite(out).all()):
        remedy = "pass float64 input" if values.dtype != torch.float64 else "rescale the input"
        raise ValueError(f"{name}: distances exceed the largest {values.dtype} "
                         f"({torch.finfo(values.dtype).max:.3g}); {remedy}")
    return out
