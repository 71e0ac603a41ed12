"""Alert rules on the transformer instability signals of the attention family.

Same shape as the rules of :mod:`geomonitor.monitor.alerts` (``rule.update(step, value) ->
Alert | None``, cooldown in steps, ``state_dict``/``load_state_dict`` in plain types). The max
attention logit and the output-logit norm are tested on their growth *rate* (in a diverging
small transformer they grow by orders of magnitude within a few dozen steps -- Wortsman et al.
2023, Figs. 1 and 4; in a stable one they also rise, from near 0 at initialisation, but slowly,
so a comparison with the early value would fire in every healthy run). The entropy rule
compares a reading with its **early reference**: the mean of the first ``baseline`` finite
readings of that layer (Zhai et al. 2023, Fig. 1: the entropy of the spiking run falls to a
fraction of its early value).

* :class:`AttentionLogitGrowth` -- ``geometry/attention/<l>/max_logit`` ``factor`` x its value
  ``lag`` readings earlier, or above the absolute ``limit`` (either fires);
* :class:`AttentionEntropyCollapse` -- ``geometry/attention/<l>/entropy`` (or ``entropy_min``)
  below ``fraction`` x its early reference, or below the absolute ``floor``;
* :class:`OutputLogitDivergence` -- ``geometry/output_logits/mean_abs`` (or another output
  summary) ``factor`` x its value ``lag`` readings earlier, or above ``limit``.

Readings: ``update(step, {layer: value})`` (the output rule takes a float or ``{"output": v}``);
``select(metrics)`` picks them out of a monitor's metrics dict. NaN readings are ignored (a head
with no allowed key); ``+inf`` counts as above every limit. During the first ``baseline``
(``lag``) readings of a layer only the absolute limit applies. Relative tests need a positive
reference. The alert names every layer past its limit and reports the one furthest past it.
Memory: ``baseline`` (``lag``) floats per layer. Cost: O(layers) per update.

Example:
    >>> rule = AttentionLogitGrowth(factor=3.0, lag=2, cooldown=0)
    >>> [rule.update(s, {"h.0": 5.0}) for s in (1, 2)]
    [None, None]
    >>> rule.update(3, {"h.0": 16.0}).rule
    'attention_logit_growth'
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from geomonitor.monitor.alerts import Rule, _float_arg, _int_arg
from geomonitor.monitor.keys import PREFIX

__all__ = ["AttentionLogitGrowth", "AttentionEntropyCollapse", "OutputLogitDivergence"]


def _select(metrics: Mapping[str, Any], family: str, summary: str) -> dict[str, float]:
    """``{layer: value}`` of the ``geometry/<family>/<layer>/<summary>`` entries of ``metrics``."""
    head, tail = f"{PREFIX}/{family}/", f"/{summary}"
    return {k[len(head):-len(tail)]: float(v) for k, v in metrics.items()
            if k.startswith(head) and k.endswith(tail) and len(k) > len(head) + len(tail)}


class _PerLayer(Rule):
    """A rule on a mapping layer -> reading; ``WHAT`` names the reading, ``ACTION`` the advice.
    :meth:`_worst` turns the layers past their limits into the alert: the furthest one's
    value and limit, and every crossing named."""

    WHAT = "value"
    ACTION = ""

    def _readings(self, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"value must be a mapping layer -> {self.WHAT} for {self.name!r}, "
                             f"got {type(value).__name__}")
        return value

    @staticmethod
    def _worst(crossed: list[tuple[float, str, float, float]], side: str
               ) -> tuple[float, float, str]:
        """``crossed``: (how far past, layer, value, limit), not empty."""
        crossed = sorted(crossed, key=lambda c: (-c[0], c[1]))
        _, _, v, limit = crossed[0]
        shown = ", ".join(f"{name} = {val:.4g} ({side} {lim:.4g})" for _, name, val, lim in crossed)
        return v, limit, shown


class _EarlyReference(_PerLayer):
    """A per-layer reading against ``ratio`` x the mean of its first ``baseline`` finite
    readings, and against an absolute bound; ``ABOVE`` says which side is bad."""

    ABOVE = True

    def __init__(self, ratio: float, bound: float | None, baseline: int, cooldown: int,
                 name: str | None) -> None:
        super().__init__(cooldown, name)
        self.baseline = _int_arg("baseline", baseline, 1)
        self.early: dict[str, list[float]] = {}
        self._ratio, self._bound = ratio, bound

    def _limit(self, early: list[float]) -> float | None:
        limits = [] if self._bound is None else [self._bound]
        if len(early) >= self.baseline:
            ref = sum(early) / len(early)
            if ref > 0:
                limits.append(self._ratio * ref)
        if not limits:
            return None
        return min(limits) if self.ABOVE else max(limits)

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        crossed = []
        for layer, v in self._readings(value).items():
            v = float(v)
            if math.isnan(v):
                continue
            early = self.early.setdefault(str(layer), [])
            limit = self._limit(early)
            if limit is not None and (v > limit if self.ABOVE else v < limit):
                how_far = v / limit if self.ABOVE else (limit / v if v > 0 else math.inf)
                crossed.append((how_far, str(layer), v, limit))
            if len(early) < self.baseline and math.isfinite(v):
                early.append(v)
        if not crossed:
            return None
        v, limit, shown = self._worst(crossed, "above" if self.ABOVE else "below")
        return v, limit, f"{self.WHAT} {shown}", self.ACTION

    def _extra_state(self) -> dict[str, Any]:
        return {"early": {k: list(v) for k, v in self.early.items()}}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        self.early = {str(k): [float(x) for x in v] for k, v in state["early"].items()}


class _GrowthRate(_PerLayer):
    """A per-layer reading ``factor`` x its value ``lag`` readings earlier (and above
    ``min_value``), or above ``limit``."""

    def __init__(self, factor: float, lag: int, min_value: float, limit: float | None,
                 cooldown: int, name: str | None) -> None:
        super().__init__(cooldown, name)
        self.factor = _float_arg("factor", factor, 1.0)
        self.lag = _int_arg("lag", lag, 1)
        self.min_value = _float_arg("min_value", min_value, 0.0, inclusive=True)
        self.limit = None if limit is None else _float_arg("limit", limit, 0.0)
        self.history: dict[str, deque[float]] = {}

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        crossed = []
        for layer, v in self._readings(value).items():
            v = float(v)
            if math.isnan(v):
                continue
            hist = self.history.setdefault(str(layer), deque(maxlen=self.lag))
            limits = [] if self.limit is None else [self.limit]
            if len(hist) == self.lag and hist[0] > 0 and v > self.min_value:
                limits.append(self.factor * hist[0])
            if limits and v > min(limits):
                crossed.append((v / min(limits), str(layer), v, min(limits)))
            hist.append(v)
        if not crossed:
            return None
        v, limit, shown = self._worst(crossed, "limit")
        msg = (f"{self.WHAT} grew past {self.factor:g} x its value {self.lag} readings earlier"
               + ("" if self.limit is None else f" or past {self.limit:g}") + f": {shown}")
        return v, limit, msg, self.ACTION

    def _extra_state(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        self.history = {str(k): deque((float(x) for x in v), maxlen=self.lag)
                        for k, v in state["history"].items()}


class AttentionLogitGrowth(_GrowthRate):
    """A layer's max attention logit growing ``factor``-fold within ``lag`` readings, or above
    ``limit``.

    Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
    instabilities", Sec. 3.1) and Dehghani et al. 2023: uncontrolled growth of the attention
    logits precedes the divergence of the loss; in healthy training they also grow, from
    small values at initialisation to O(10), but slowly. A reading ``v`` fires when

    * ``v > limit`` (when ``limit`` is set), or
    * ``v > min_value`` and ``v > factor * u``, with ``u`` the same layer's reading ``lag``
      readings earlier (the growth-rate test; none during a layer's first ``lag`` readings,
      and none when ``u <= 0``).

    Args:
        factor: growth factor over ``lag`` readings (> 1; default 10).
        lag: readings between the two compared (>= 1; default 5).
        min_value: the growth test ignores readings at or below it (>= 0; default 10, so the
            growth from near 0 at initialisation is not an alert).
        limit: absolute bound (> 0) or None (default).
        cooldown: steps between two alerts (default 100).
    """

    NAME = "attention_logit_growth"
    TITLE = "Attention-logit growth"
    WHAT = "max attention logit"
    ACTION = ("lower the learning rate, add warmup, or normalise queries and keys (qk-layernorm, "
              "Dehghani et al. 2023)")

    def __init__(self, factor: float = 10.0, lag: int = 5, min_value: float = 10.0,
                 limit: float | None = None, cooldown: int = 100, name: str | None = None) -> None:
        super().__init__(factor, lag, min_value, limit, cooldown, name)

    @staticmethod
    def select(metrics: Mapping[str, Any]) -> dict[str, float]:
        """``{layer: value}`` of the ``geometry/attention/<layer>/max_logit`` entries."""
        return _select(metrics, "attention", "max_logit")


class AttentionEntropyCollapse(_EarlyReference):
    """A layer's attention entropy below ``fraction`` x its early reference, or below ``floor``.

    Zhai et al. 2023 ("Stabilizing Transformer Training by Preventing Attention Entropy
    Collapse", ICML): the attention entropy collapses with the loss spikes and divergences.

    Args:
        fraction: share of the early reference, in (0, 1) (default 0.5).
        floor: absolute floor in nats (> 0) or None (default).
        baseline: readings per layer that make the early reference (default 5).
        cooldown: steps between two alerts (default 100).
        summary: which entropy :meth:`select` picks: ``"entropy"`` (mean over heads, default)
            or ``"entropy_min"`` (lowest head).
    """

    ABOVE = False
    NAME = "attention_entropy_collapse"
    TITLE = "Attention-entropy collapse"
    WHAT = "attention entropy"
    ACTION = ("lower the learning rate or add warmup; sigma-reparameterise or normalise the "
              "attention (Zhai et al. 2023)")

    def __init__(self, fraction: float = 0.5, floor: float | None = None, baseline: int = 5,
                 cooldown: int = 100, name: str | None = None, summary: str = "entropy") -> None:
        self.fraction = _float_arg("fraction", fraction, 0.0, high=1.0)
        self.floor = None if floor is None else _float_arg("floor", floor, 0.0)
        if summary not in ("entropy", "entropy_min"):
            raise ValueError(f"summary must be 'entropy' or 'entropy_min', got {summary!r}")
        self.summary = summary
        super().__init__(self.fraction, self.floor, baseline, cooldown, name)

    def select(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """``{layer: value}`` of the ``geometry/attention/<layer>/<summary>`` entries."""
        return _select(metrics, "attention", self.summary)


class OutputLogitDivergence(_GrowthRate):
    """An output-logit norm growing ``factor``-fold within ``lag`` readings, or above ``limit``.

    Wortsman et al. 2023, Sec. 3.2: the output logits diverge (``log Z`` drifts far from 0);
    ``update(step, mean_abs)`` with ``geometry/output_logits/mean_abs`` by default. Same test
    as :class:`AttentionLogitGrowth` on one series (a float, or ``{"output": v}``).

    Args:
        factor: growth factor over ``lag`` readings (> 1; default 3).
        lag: readings between the two compared (>= 1; default 5).
        min_value: the growth test ignores readings at or below it (>= 0; default 5: the
            mean |logit| rises several-fold from near 0 in the first steps of healthy runs --
            0.5 to 2-3 in ``recipes/transformer_instability.py`` at lr 0.01-0.1 -- which is not
            an alert; a scale-dependent choice, set it for other vocabularies and models).
        limit: absolute bound (> 0) or None (default).
        cooldown: steps between two alerts (default 100).
        summary: which output summary :meth:`select` picks (``"mean_abs"``, ``"max"``,
            ``"log_z_sq"``; default ``"mean_abs"``).
    """

    NAME = "output_logit_divergence"
    TITLE = "Output-logit divergence"
    ACTION = "lower the learning rate, add a z-loss (Chowdhery et al. 2022) or weight decay"

    def __init__(self, factor: float = 3.0, lag: int = 5, min_value: float = 5.0,
                 limit: float | None = None, cooldown: int = 100, name: str | None = None,
                 summary: str = "mean_abs") -> None:
        if summary not in ("mean_abs", "max", "log_z_sq"):
            raise ValueError(f"summary must be 'mean_abs', 'max' or 'log_z_sq', got {summary!r}")
        super().__init__(factor, lag, min_value, limit, cooldown, name)
        self.summary = summary
        self.WHAT = f"output logits' {summary}"

    def _readings(self, value: Any) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"output": value}
        raise ValueError(f"value must be a number or a mapping for {self.name!r}, got "
                         f"{type(value).__name__}")

    def select(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """``{"output": value}`` of ``geometry/output_logits/<summary>`` (empty when absent)."""
        key = f"{PREFIX}/output_logits/{self.summary}"
        return {"output": float(metrics[key])} if key in metrics else {}
