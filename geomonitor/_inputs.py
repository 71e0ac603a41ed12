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
rows with NaN / Inf    dropped; the count is returned so callers can report it
fewer than min_points  ``ValueError`` after dropping, saying how many finite rows remain
=====================  =====================================================================

Checks for duplicates and constant clouds depend on the estimator (a duplicate point is
harmless to PCA but makes the TwoNN ratio undefined) and live with each estimator.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["Points", "as_points", "compute_dtype"]


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
            raise ValueError(f"{name} has {n_bad} rows with NaN or Inf values")
        t = t[finite]
    if t.shape[0] < min_points:
        raise ValueError(
            f"{name} needs at least {min_points} points with finite values, got {t.shape[0]}"
            + (f" ({n_bad} rows with NaN/Inf dropped)" if n_bad else "")
        )
    return Points(t, n_bad)
