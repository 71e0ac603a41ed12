"""Dead units (from rescaling symmetry) and duplicate units (from permutation symmetry).

* **Dead units.** Rescaling symmetry with weight decay has a collapsed solution: a ReLU unit
  whose incoming and outgoing weights both go to zero (Ziyin, "Symmetry induces structure and
  constraint of learning", ICML 2024; Ziyin, Xu, Poggio & Chuang, arXiv 2502.05300, 2025).
  Measured on the probe set: a unit is *dead* when its ReLU output is zero on every probe
  sample, i.e. its pre-activation is <= 0 on every sample (and, for a convolution channel, at
  every position); its gradient is then zero too. :func:`dead_unit_mask` takes either the
  pre-activation or the ReLU output (every value <= 0, i.e. exactly 0 after a ReLU): both
  give the same answer. On a leaky ReLU's output it counts units stuck in the negative
  (linear) regime; on a linear network's units, units that are never positive.
* **Duplicate units.** Permuting the hidden units of a layer (rows of ``w_in``, entries of
  ``b_in``, columns of ``w_out``) is a symmetry; its symmetric solutions are units that are
  copies of one another (Ziyin 2024; Zhao, Walters & Yu, "Symmetry in Neural Network Parameter
  Spaces", arXiv 2506.13018, 2025). Units j != k are duplicates when both their incoming
  vectors ``[w_in[j], b_in[j]]`` and their outgoing vectors ``w_out[:, j]`` have cosine
  similarity above ``threshold`` (default 0.99). For ReLU units a cosine near -1 is *not* a
  duplicate (``relu(-z)`` is not a multiple of ``relu(z)``), so only positive cosines count by
  default; ``absolute=True`` counts |cosine| (right for linear units). Units with a zero
  incoming or outgoing vector have no direction and are never duplicates (they are dead or
  disconnected; see above).

Cost: dead units O(N * units * positions); duplicates the Gram matrix of the shorter unit
vectors (incoming or outgoing), O(hidden^2 min(fan_in + 1, fan_out)) time and O(hidden^2)
memory, then the other side's cosines for the candidate pairs only (the full second Gram
matrix when there are more than 8 x hidden candidates), on the tensors' device.

Example:
    >>> w1 = torch.randn(6, 4); w1[1] = 2 * w1[0]
    >>> w2 = torch.randn(3, 6); w2[:, 1] = w2[:, 0]
    >>> int(duplicate_unit_mask(w1, w2).sum())
    2
"""
from __future__ import annotations

import math
from typing import Any

import torch

from geomonitor.symmetry._linalg import as_real

__all__ = ["dead_fraction", "dead_unit_mask", "duplicate_count", "duplicate_unit_mask"]


def dead_unit_mask(activation: Any, *, unit_dim: int = 1) -> torch.Tensor:
    """Which units are <= 0 on every probe sample (dead after a ReLU).

    Args:
        activation: the pre-activation of the units, or their ReLU output (where <= 0 means
            exactly 0): (N, units) for a linear layer, (N, C, *spatial) for a convolution (a
            channel is dead when every sample and position is <= 0), (N, T, units) for a
            sequence (``unit_dim=-1``).
        unit_dim: the dimension holding the units (not 0, the samples; default 1).

    Returns:
        (units,) bool tensor on the input's device.

    Raises:
        ValueError: fewer than 2 dimensions, NaN/Inf entries, complex dtype, ``unit_dim``
            out of range or equal to the sample dimension.
    """
    t = as_real(activation, "activation", min_dim=2)
    if (isinstance(unit_dim, bool) or not isinstance(unit_dim, int)
            or not -t.dim() <= unit_dim < t.dim() or unit_dim % t.dim() == 0):
        raise ValueError(f"unit_dim must index a non-sample dimension of activation (shape "
                         f"{tuple(t.shape)}), got {unit_dim!r}")
    t = t.movedim(unit_dim, 0)
    return t.reshape(t.shape[0], -1).amax(dim=1) <= 0


def dead_fraction(activation: Any, *, unit_dim: int = 1) -> float:
    """Fraction of dead units (:func:`dead_unit_mask`), in [0, 1]."""
    return float(dead_unit_mask(activation, unit_dim=unit_dim).float().mean())


def _unit_directions(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = rows.norm(dim=1)
    ok = norms > 0
    return rows / torch.where(ok, norms, torch.ones_like(norms))[:, None], ok


def duplicate_unit_mask(w_in: Any, w_out: Any, b_in: Any | None = None, *,
                        threshold: float = 0.99, absolute: bool = False) -> torch.Tensor:
    """Hidden units that have a duplicate partner (see the module docstring).

    Args:
        w_in: (hidden, fan_in, ...) incoming weights, one row per unit (conv kernels flattened).
        w_out: (out, hidden, ...) outgoing weights, units on dim 1.
        b_in: (hidden,) bias of the incoming layer, or None.
        threshold: cosine above which two vectors count as parallel, in (0, 1) (default 0.99).
        absolute: compare |cosine| (linear units) instead of the cosine (ReLU units).

    Returns:
        (hidden,) bool tensor: True for every unit with at least one partner k != j whose
        incoming and outgoing vectors both pass the threshold.

    Raises:
        ValueError: fewer than 2 hidden units, mismatched shapes, NaN/Inf, bad ``threshold``.
    """
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not 0 < threshold < 1 or not math.isfinite(threshold)):
        raise ValueError(f"threshold must be a cosine in (0, 1), got {threshold!r}")
    a = as_real(w_in, "w_in", min_dim=1)
    c = as_real(w_out, "w_out", min_dim=2)
    hidden = a.shape[0]
    if hidden < 2:
        raise ValueError(f"w_in must have at least 2 hidden units to compare, got shape "
                         f"{tuple(a.shape)}")
    if c.shape[1] != hidden:
        raise ValueError(f"w_out must have the hidden units on dim 1: w_in has {hidden} units "
                         f"(shape {tuple(a.shape)}), w_out has shape {tuple(c.shape)}")
    dtype = torch.promote_types(a.dtype, c.dtype)
    rows_in = a.to(dtype).reshape(hidden, -1)
    if b_in is not None:
        b = as_real(b_in, "b_in", min_dim=1, max_dim=1)
        if b.shape[0] != hidden:
            raise ValueError(f"b_in must have shape ({hidden},) like w_in's units, got shape "
                             f"{tuple(b.shape)}")
        rows_in = torch.cat([rows_in, b.to(device=rows_in.device, dtype=dtype)[:, None]], dim=1)
    rows_out = c.to(device=rows_in.device, dtype=dtype).transpose(0, 1).reshape(hidden, -1)
    # the cheaper Gram matrix (shorter unit vectors) first; the other side's cosines only for
    # the candidate pairs it leaves (all of them if there are many)
    cheap, dear = (rows_in, rows_out) if rows_in.shape[1] <= rows_out.shape[1] else (rows_out, rows_in)
    u_c, ok_c = _unit_directions(cheap)
    u_d, ok_d = _unit_directions(dear)
    ok = ok_c & ok_d
    cos = u_c @ u_c.T
    pair = ((cos.abs() if absolute else cos) > threshold) & ok[:, None] & ok[None, :]
    pair.fill_diagonal_(False)
    i, j = torch.triu(pair).nonzero(as_tuple=True)
    if i.numel() > 8 * hidden:
        cos_d = u_d @ u_d.T
        pair &= (cos_d.abs() if absolute else cos_d) > threshold
    elif i.numel():
        c = (u_d[i] * u_d[j]).sum(dim=1)
        keep = (c.abs() if absolute else c) > threshold
        pair = torch.zeros_like(pair)
        pair[i[keep], j[keep]] = True
        pair[j[keep], i[keep]] = True
    return pair.any(dim=1)


def duplicate_count(w_in: Any, w_out: Any, b_in: Any | None = None, *,
                    threshold: float = 0.99, absolute: bool = False) -> int:
    """Number of hidden units that have a duplicate partner (:func:`duplicate_unit_mask`)."""
    return int(duplicate_unit_mask(w_in, w_out, b_in, threshold=threshold,
                                   absolute=absolute).sum())
