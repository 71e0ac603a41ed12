"""W&B's key limit: per-layer keys up to a number of layers, statistics over layers past it.

A W&B project holds under 10,000 distinct metric keys (W&B's documented limit), shared by
all its runs. Every per-layer family (:data:`~geomonitor.monitor.keys.LAYERED`) writes one
key per layer and statistic: about 20 per layer with every default family on (one intrinsic
dimension, 12 persistence summaries and a diagram, a neural persistence, up to 7 symmetry
indicators), so a model of a few hundred measured layers would fill a project alone.

:class:`LayerBudget` keeps the per-layer keys of the first ``max_layers`` distinct layers it
sees. When a delivery would bring the count past ``max_layers``, it warns once
(``RuntimeWarning``) and from then on replaces every per-layer key by the mean, minimum and
maximum over the layers of that delivery (:func:`~geomonitor.monitor.keys.layers_key`:
``geometry/id/mean_over_layers``, ``geometry/ph/max_over_layers/h1_entropy``, ...), so a
family writes three keys per statistic however deep the model. Persistence diagrams cannot be
averaged: past the limit, only the diagrams of layers already counted are logged (their keys
exist already), those of further layers are left out. Non-finite values are left out of the
statistics (a statistic over no finite value is not written). Keys of other families, and
the ID profile (one chart however many layers), pass unchanged. Cost: one ``str.split`` per key.

Only the W&B route uses it: the other loggers and ``callback_metrics`` keep every per-layer
key. ``max_layers=None`` turns the budget off.

Example:
    >>> budget = LayerBudget(max_layers=1)
    >>> budget.metrics({"geometry/id/a": 2.0, "geometry/id/b": 4.0, "geometry/sharpness": 1.0})
    {'geometry/sharpness': 1.0, 'geometry/id/mean_over_layers': 3.0, 'geometry/id/min_over_layers': 2.0, 'geometry/id/max_over_layers': 4.0}
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from geomonitor.monitor.keys import LAYERED, LAYER_STATS, layers_key, split_key

__all__ = ["DEFAULT_MAX_LAYERS", "LayerBudget"]

#: Per-layer keys for up to 64 layers: about 1,400 keys for one model with every family on,
#: so several model shapes fit in one project under W&B's 10,000.
DEFAULT_MAX_LAYERS = 64

_STATS = {"mean": lambda v: math.fsum(v) / len(v), "min": min, "max": max}
assert tuple(_STATS) == LAYER_STATS


def check_max_layers(max_layers: Any, name: str = "max_layers") -> int | None:
    """``max_layers`` if it is ``None`` or an int >= 1, else ``ValueError`` naming ``name``."""
    if max_layers is None:
        return None
    if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
        raise ValueError(f"{name} must be None or an int >= 1, got {max_layers!r}")
    return max_layers


def _layer_of(key: str) -> tuple[str, str, str | None] | None:
    """``(family, layer, summary)`` when ``key`` is a per-layer key of a module, else None."""
    try:
        family, layer, summary = split_key(key)
    except ValueError:
        return None
    if family not in LAYERED or layer is None or layer.endswith("_over_layers"):
        return None
    return family, layer, summary


class LayerBudget:
    """Per-layer keys for up to ``max_layers`` layers, statistics over layers past it.

    Args:
        max_layers: the most distinct layers that get keys of their own (``None``: no limit).

    Attributes:
        layers: the layers counted so far, in the order first seen.
        aggregated: whether the limit was passed (per-layer metrics are now statistics).

    Raises:
        ValueError: ``max_layers`` is not ``None`` or an int >= 1.
    """

    def __init__(self, max_layers: int | None = DEFAULT_MAX_LAYERS) -> None:
        self.max_layers = check_max_layers(max_layers)
        self.layers: dict[str, None] = {}
        self.aggregated = False

    def _count(self, new: list[str]) -> None:
        fresh = [layer for layer in dict.fromkeys(new) if layer not in self.layers]
        if not fresh or self.aggregated:
            return
        if self.max_layers is not None and len(self.layers) + len(fresh) > self.max_layers:
            self.aggregated = True
            warnings.warn(
                f"geomonitor: {len(self.layers) + len(fresh)} or more measured layers, past "
                f"max_layers={self.max_layers}: W&B gets the mean, min and max over layers "
                "(geometry/<family>/mean_over_layers...) instead of per-layer keys, and "
                + (f"persistence diagrams of the first {len(self.layers)} layers only" if self.layers
                   else "no persistence diagram")
                + " (a W&B project holds under 10,000 keys); the other loggers still get every "
                "layer", RuntimeWarning, stacklevel=4)
            return
        self.layers.update(dict.fromkeys(fresh))

    def metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """``metrics`` as W&B should get them (a new dict; ``metrics`` is not changed)."""
        parsed = {k: _layer_of(k) for k in metrics}
        self._count([p[1] for p in parsed.values() if p is not None])
        if not self.aggregated:
            return dict(metrics)
        out: dict[str, float] = {}
        groups: dict[tuple[str, str | None], list[float]] = {}
        for key, value in metrics.items():
            p = parsed[key]
            if p is None:
                out[key] = value
            elif math.isfinite(value):
                groups.setdefault((p[0], p[2]), []).append(float(value))
        for (family, summary), values in groups.items():
            for stat, fn in _STATS.items():
                out[layers_key(family, stat, summary)] = float(fn(values))
        return out

    def keeps_diagram(self, key: str) -> bool:
        """Whether the diagram logged under ``key`` gets logged (its layer is counted)."""
        p = _layer_of(key)
        if p is None:
            return True
        self._count([p[1]])
        return p[1] in self.layers
