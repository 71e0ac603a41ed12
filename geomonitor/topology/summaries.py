"""Persistence diagrams reduced to a few plain numbers, with stable metric keys.

For each homology dimension ``d`` present, :func:`summarize` returns ``f"h{d}_{name}"``:

=====================  ===================================================================
name                   definition (lifetimes ``l_i = death_i - birth_i`` of finite bars)
=====================  ===================================================================
``total_persistence``  ``sum_i l_i`` (the 1-total persistence; Cohen-Steiner, Edelsbrunner,
                       Harer & Mileyko, "Lipschitz functions have L_p-stable persistence",
                       Found. Comput. Math. 10, 2010). Equals 2 x giotto-tda's
                       ``Amplitude(metric="wasserstein", p=1)``, which uses half-lifetimes.
``l2_persistence``     ``(sum_i l_i^2)^(1/2)``; 2 x ``Amplitude("wasserstein", p=2)``.
``max_persistence``    ``max_i l_i``; 2 x ``Amplitude("bottleneck")``. 0 without bars.
``entropy``            persistence entropy ``-sum_i q_i log2 q_i`` with ``q_i = l_i / sum l``
                       (Chintakunta, Gentimis, Gonzalez-Diaz, Jimenez & Krim, "An entropy-
                       based persistence barcode", Pattern Recognit. 48, 2015), as
                       giotto-tda's ``PersistenceEntropy(normalize=False)``. 0 without bars
                       (giotto-tda fills -1).
``n_bars``             number of bars with ``l_i > noise`` (default ``noise = 0``: every bar
                       of positive length, i.e. every bar ripser reports).
``betti``              Betti number at ``scale``: bars with ``birth <= scale < death``, plus
                       the essential H0 class in dimension 0 (counted once if the diagram
                       does not list an infinite bar). Default ``scale``: the largest
                       finite H0 death (the scale at which the Rips complex of the cloud
                       becomes connected); 0 when there are no H0 bars.
=====================  ===================================================================

Infinite deaths (e.g. a raw giotto-ph H0 diagram) are left out of every lifetime statistic and
count as alive in ``betti``; a :class:`~geomonitor.topology.Diagrams` never contains them.

Example:
    >>> s = summarize(persistence_diagrams(X, maxdim=1), noise=0.1)
    >>> s["h1_n_bars"], s["h1_entropy"]
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["SUMMARY_NAMES", "summarize"]

SUMMARY_NAMES = ("total_persistence", "l2_persistence", "max_persistence", "entropy", "n_bars", "betti")


def _check_nonneg(name: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(v)) or float(v) < 0:
        raise ValueError(f"{name} must be a finite number >= 0 or None, got {v!r}")
    return float(v)


def summarize(
    diagrams: Any, *, noise: float | None = None, scale: float | None = None
) -> dict[str, float]:
    """Summaries of each dimension's diagram (see module table for definitions and keys).

    Args:
        diagrams: a :class:`~geomonitor.topology.Diagrams`, or a sequence whose k-th entry is
            an (n_k, 2) array of (birth, death) bars of dimension k.
        noise: lifetime threshold for ``n_bars`` (>= 0); None means 0.
        scale: filtration value for ``betti`` (>= 0); None means the largest finite H0 death.

    Returns:
        ``{"h0_total_persistence": ..., "h0_entropy": ..., ..., "h1_betti": ...}``, all floats.

    Raises:
        ValueError: negative or non-finite ``noise``/``scale``; a diagram that is not (n, 2);
            NaN values or a death before its birth.

    Cost: O(n log n) per diagram.
    """
    noise_v = _check_nonneg("noise", noise) or 0.0
    scale_v = _check_nonneg("scale", scale)
    seq: Sequence[Any] = getattr(diagrams, "diagrams", diagrams)
    arrays = []
    for k, d in enumerate(seq):
        a = np.asarray(d, dtype=np.float64)
        if a.size == 0:
            a = a.reshape(0, 2)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"diagrams[{k}] must have shape (n, 2), got {a.shape}")
        if np.isnan(a).any() or (a[:, 1] < a[:, 0]).any():
            raise ValueError(f"diagrams[{k}] has NaN values or a death before its birth")
        arrays.append(a)
    if scale_v is None:
        h0 = arrays[0][np.isfinite(arrays[0][:, 1]), 1] if arrays else np.empty(0)
        scale_v = float(h0.max()) if h0.size else 0.0
    out: dict[str, float] = {}
    for k, a in enumerate(arrays):
        finite = a[np.isfinite(a[:, 1])]
        life = finite[:, 1] - finite[:, 0]
        total = float(life.sum())
        out[f"h{k}_total_persistence"] = total
        out[f"h{k}_l2_persistence"] = float(np.sqrt((life * life).sum()))
        out[f"h{k}_max_persistence"] = float(life.max()) if life.size else 0.0
        q = life[life > 0] / total if total > 0 else np.empty(0)
        out[f"h{k}_entropy"] = float(-(q * np.log2(q)).sum()) if q.size else 0.0
        out[f"h{k}_n_bars"] = float((life > noise_v).sum())
        # the essential H0 class [0, inf): implied unless the diagram lists it
        essential = 1 if k == 0 and not np.isinf(a[:, 1]).any() else 0
        alive = (a[:, 0] <= scale_v) & (scale_v < a[:, 1])
        out[f"h{k}_betti"] = float(alive.sum() + essential)
    return out
