"""Alert rules: when a training run is turning unstable, in plain numbers, without Lightning.

Every rule has the same shape: ``rule.update(step, value) -> Alert | None``. A rule keeps a
fixed-size history (``collections.deque(maxlen=...)``, so memory is bounded however long the
run), a per-rule cooldown in steps so that a persistent condition does not produce an alert at
every step, and ``state_dict()`` / ``load_state_dict()`` in plain Python types (loadable with
``torch.load(weights_only=True)``) so that counters, running medians and rate limits survive a
checkpoint and resume.

Rules and their sources:

* :class:`EdgeOfStability` -- Cohen et al., "Gradient Descent on Neural Networks Typically
  Occurs at the Edge of Stability", ICLR 2021: under full-batch GD with step size eta the top
  Hessian eigenvalue (sharpness) rises until it reaches 2/eta and then *hovers at, or just
  above*, 2/eta while the loss keeps decreasing non-monotonically. A ratio
  ``eos_ratio = sharpness / (2/eta)`` near 1 is therefore normal; a ratio well above it for
  several consecutive measurements means the quadratic model predicts divergence along the top
  eigendirection and the self-stabilisation is not happening. For adaptive optimisers the value
  is the preconditioned ratio (Cohen et al., "Adaptive Gradient Methods at the Edge of
  Stability", 2022); it arrives as ``geometry/eos_ratio`` either way.
* :class:`LossSpike` and :class:`GradNormExplosion` -- a value far above the running median of
  its own recent history (the median is robust to the spikes themselves). Gradient-norm spikes
  precede loss spikes in unstable large-model training (e.g. Wortsman et al., "Small-scale
  proxies for large-scale Transformer training instabilities", 2023; Chowdhery et al., PaLM,
  2022, on loss spikes).
* :class:`NonFinite` -- a NaN or infinite loss, gradient norm or activation: training state is
  already corrupted; level ``ERROR``.
* :class:`RepresentationCollapse` -- the intrinsic dimension of a layer's representation below a
  floor, or fallen by more than a fraction of its own running maximum (dimensional collapse:
  Jing et al., "Understanding Dimensional Collapse in Contrastive Self-supervised Learning",
  ICLR 2022; the intrinsic dimension of representations: Ansuini et al., NeurIPS 2019, who also
  show it *decreases* moderately in the last layers of healthy training -- hence a relative
  drop, not any drop).
* :class:`RankCollapse` -- the same test on a layer's RankMe (Garrido et al., "RankMe", ICML
  2023: the effective rank of the representation, whose fall signals dimensional collapse).

Example:
    >>> rule = LossSpike(factor=3.0, window=20, min_history=3)
    >>> [rule.update(s, 1.0) for s in range(3)]
    [None, None, None]
    >>> rule.update(3, 10.0).rule
    'loss_spike'
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Alert", "Rule", "EdgeOfStability", "LossSpike", "GradNormExplosion", "NonFinite",
           "RepresentationCollapse", "RankCollapse", "LEVELS"]

#: Alert levels, as ``wandb.AlertLevel`` names them.
LEVELS = ("INFO", "WARN", "ERROR")


@dataclass(frozen=True)
class Alert:
    """One alert: which rule, when, the value that crossed which threshold, and what to do.

    ``text`` states the step, the value(s), the threshold and a suggested action.
    """

    rule: str
    step: int
    value: float
    threshold: float
    level: str
    title: str
    text: str


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _float_arg(name: str, value: Any, low: float, *, inclusive: bool = False,
               high: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if inclusive else value > low) and (high is None or value < high)
    if not ok:
        span = f"{'>=' if inclusive else '>'} {low}" + ("" if high is None else f" and < {high}")
        raise ValueError(f"{name} must be a finite number {span}, got {value!r}")
    return float(value)


class Rule:
    """Common shape of every rule: ``update`` -> :class:`Alert` or None, cooldown, state.

    Subclasses implement ``_check(step, value)`` returning ``(value, threshold, message,
    action)`` when the condition holds, else None. The cooldown suppresses a firing when the
    previous alert of this rule was fewer than ``cooldown`` steps ago (suppressed firings are
    counted in ``n_suppressed``).

    Args:
        cooldown: minimum number of steps between two alerts of this rule (>= 0).
        name: the rule's name (metric ``alerts/<name>``); defaults to the class's ``NAME``.
    """

    NAME = "rule"
    LEVEL = "WARN"
    TITLE = "Alert"

    def __init__(self, cooldown: int, name: str | None = None) -> None:
        self.cooldown = _int_arg("cooldown", cooldown, 0)
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
        self.name = name or self.NAME
        self.last_fired: int | None = None
        self.n_fired = 0
        self.n_suppressed = 0

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        raise NotImplementedError

    def update(self, step: int, value: Any) -> Alert | None:
        """Feed one measurement taken at ``step``; return an :class:`Alert` when the rule fires."""
        hit = self._check(int(step), value)
        if hit is None:
            return None
        if self.last_fired is not None and 0 <= step - self.last_fired < self.cooldown:
            self.n_suppressed += 1
            return None
        self.last_fired = int(step)
        self.n_fired += 1
        val, thr, message, action = hit
        text = f"Step {int(step)}: {message}. Suggested action: {action}"
        return Alert(rule=self.name, step=int(step), value=float(val), threshold=float(thr),
                     level=self.LEVEL, title=f"{self.TITLE} ({self.name})", text=text)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters and history in plain types (ints, floats, lists, dicts)."""
        return {"last_fired": -1 if self.last_fired is None else self.last_fired,
                "n_fired": self.n_fired, "n_suppressed": self.n_suppressed, **self._extra_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        missing = {"last_fired", "n_fired", "n_suppressed"} - set(state)
        if missing:
            raise ValueError(f"state for rule {self.name!r} lacks keys {sorted(missing)}")
        self.last_fired = None if int(state["last_fired"]) < 0 else int(state["last_fired"])
        self.n_fired = int(state["n_fired"])
        self.n_suppressed = int(state["n_suppressed"])
        self._load_extra(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, cooldown={self.cooldown})"


class EdgeOfStability(Rule):
    """Sharpness above the stability threshold 2/eta by a margin, for ``patience`` measurements.

    Fires when ``eos_ratio > threshold`` for ``patience`` consecutive measurements (a NaN
    ratio, or one at or below the threshold, resets the count; ``+inf`` counts as above).

    Why the default margin 1.2: at the edge of stability sharpness hovers at or *just above*
    2/eta (Cohen et al. 2021, Figs. 1-2, overshoots of a few percent to ~10%, which the loss
    survives); a ratio persistently 20% above means the top direction is expanding by a factor
    ``|1 - eta*lambda| >= 1.4`` per step. ``patience`` (default 3) lets the brief catapult
    overshoots of a normal EoS phase pass.

    Args:
        threshold: ratio above which a measurement counts (> 0; default 1.2).
        patience: consecutive measurements above the threshold before firing (>= 1).
        cooldown: steps between two alerts (default 100).

    Cost: O(1) per update. Example: ``EdgeOfStability().update(step, 1.5)``.
    """

    NAME = "eos"
    TITLE = "Edge of stability exceeded"

    def __init__(self, threshold: float = 1.2, patience: int = 3, cooldown: int = 100,
                 name: str | None = None) -> None:
        super().__init__(cooldown, name)
        self.threshold = _float_arg("threshold", threshold, 0.0)
        self.patience = _int_arg("patience", patience, 1)
        self.count = 0
        self.recent: deque[float] = deque(maxlen=self.patience)

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        v = float(value)
        if v > self.threshold:  # False for NaN
            self.count += 1
            self.recent.append(v)
        else:
            self.count = 0
            self.recent.clear()
        if self.count < self.patience:
            return None
        shown = ", ".join(f"{x:.3g}" for x in self.recent)
        msg = (f"eos_ratio = sharpness/(2/lr) was above {self.threshold:g} for {self.count} "
               f"consecutive measurements (last {len(self.recent)}: {shown})")
        return v, self.threshold, msg, "lower the learning rate (by at least the ratio) or add warmup/gradient clipping"

    def _extra_state(self) -> dict[str, Any]:
        return {"count": self.count, "recent": list(self.recent)}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        self.count = int(state["count"])
        self.recent = deque((float(x) for x in state["recent"]), maxlen=self.patience)


class _AboveRunningMedian(Rule):
    """Value above ``factor`` x the median of the last ``window`` finite values."""

    WHAT = "value"
    ACTION = ""

    def __init__(self, factor: float, window: int, min_history: int, cooldown: int,
                 name: str | None) -> None:
        super().__init__(cooldown, name)
        self.factor = _float_arg("factor", factor, 1.0)
        self.window = _int_arg("window", window, 1)
        self.min_history = _int_arg("min_history", min_history, 1)
        if self.min_history > self.window:
            raise ValueError(f"min_history must be <= window ({self.window}), got {min_history!r}")
        self.history: deque[float] = deque(maxlen=self.window)

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        v = float(value)
        if not math.isfinite(v):  # the NonFinite rule's business; keep the history clean
            return None
        fired = None
        if len(self.history) >= self.min_history:
            median = statistics.median(self.history)
            limit = self.factor * median
            if median > 0 and v > limit:
                msg = (f"{self.WHAT} = {v:.4g} is above {self.factor:g} x the running median "
                       f"{median:.4g} of the last {len(self.history)} values (threshold {limit:.4g})")
                fired = (v, limit, msg, self.ACTION)
        self.history.append(v)
        return fired

    def _extra_state(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        self.history = deque((float(x) for x in state["history"]), maxlen=self.window)


class LossSpike(_AboveRunningMedian):
    """Training loss above ``factor`` x the running median of the last ``window`` losses.

    Meant for non-negative losses (cross-entropy, MSE); when the median is <= 0 the rule is
    silent. Non-finite losses are ignored here (see :class:`NonFinite`). Every finite loss
    enters the history (the median is robust to isolated spikes; a sustained higher level
    becomes the new normal after ``window/2`` steps).

    Args:
        factor: multiple of the running median (> 1; default 3).
        window: history length (default 100). min_history: values needed before firing (default 20).
        cooldown: steps between two alerts (default 50).

    Cost: O(window) per update (median).
    """

    NAME = "loss_spike"
    TITLE = "Loss spike"
    WHAT = "loss"
    ACTION = "check the batch and the learning rate; consider gradient clipping or a lower learning rate"

    def __init__(self, factor: float = 3.0, window: int = 100, min_history: int = 20,
                 cooldown: int = 50, name: str | None = None) -> None:
        super().__init__(factor, window, min_history, cooldown, name)


class GradNormExplosion(_AboveRunningMedian):
    """Total gradient 2-norm above ``factor`` x its running median over the last ``window`` steps.

    Args:
        factor: multiple of the running median (> 1; default 10).
        window: history length (default 100). min_history: values needed before firing (default 20).
        cooldown: steps between two alerts (default 50).

    Cost: O(window) per update.
    """

    NAME = "grad_norm"
    TITLE = "Gradient norm explosion"
    WHAT = "gradient norm"
    ACTION = "clip gradients (e.g. gradient_clip_val), lower the learning rate or add warmup"

    def __init__(self, factor: float = 10.0, window: int = 100, min_history: int = 20,
                 cooldown: int = 50, name: str | None = None) -> None:
        super().__init__(factor, window, min_history, cooldown, name)


class NonFinite(Rule):
    """A NaN or infinite value among named quantities (loss, gradient norm, activations).

    ``update(step, {"loss": 0.3, "grad_norm": nan})`` fires naming the non-finite entries.
    The alert's ``value`` is the first non-finite value, its ``threshold`` ``inf`` (every value
    must be finite). Level ``ERROR``. Default cooldown 0: every occurrence is reported (W&B's
    own ``wait_duration`` still rate-limits the notifications).
    """

    NAME = "non_finite"
    LEVEL = "ERROR"
    TITLE = "Non-finite values"

    def __init__(self, cooldown: int = 0, name: str | None = None) -> None:
        super().__init__(cooldown, name)

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        if not isinstance(value, Mapping):
            raise ValueError(f"value must be a mapping name -> number for {self.name!r}, got {type(value).__name__}")
        bad = {k: float(v) for k, v in value.items() if not math.isfinite(float(v))}
        if not bad:
            return None
        shown = ", ".join(f"{k} = {v}" for k, v in bad.items())
        msg = f"non-finite {shown} (all must be finite)"
        return next(iter(bad.values())), math.inf, msg, (
            "stop and resume from the last good checkpoint with a lower learning rate; "
            "check the data for NaN/inf and mixed-precision overflow")


class RepresentationCollapse(Rule):
    """A layer's intrinsic dimension below ``floor`` or below ``(1 - drop)`` x its running max.

    ``update(step, {"encoder.0": 7.5, "fc2": 1.1})``. Per layer the running maximum is kept
    (one float per layer: bounded by the model). A layer fires when its value is below the
    larger of the two limits; the alert reports the layer with the largest relative shortfall
    and names every collapsed layer. NaN values are ignored (the estimator's documented
    degradation on too few points).

    Args:
        floor: absolute floor (> 0) or None (no floor; default).
        drop: fraction in (0, 1) of the running maximum the dimension may lose (default 0.5;
            healthy training compresses late layers moderately, Ansuini et al. 2019).
        cooldown: steps between two alerts (default 100).
    """

    NAME = "collapse"
    TITLE = "Representation collapse"

    def __init__(self, floor: float | None = None, drop: float | None = 0.5, cooldown: int = 100,
                 name: str | None = None) -> None:
        super().__init__(cooldown, name)
        if floor is None and drop is None:
            raise ValueError("floor and drop are both None: at least one limit is needed")
        self.floor = None if floor is None else _float_arg("floor", floor, 0.0)
        self.drop = None if drop is None else _float_arg("drop", drop, 0.0, high=1.0)
        self.running_max: dict[str, float] = {}

    def _limit(self, layer: str) -> float:
        limits = [0.0]
        if self.floor is not None:
            limits.append(self.floor)
        if self.drop is not None and layer in self.running_max:
            limits.append((1.0 - self.drop) * self.running_max[layer])
        return max(limits)

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        if not isinstance(value, Mapping):
            raise ValueError(f"value must be a mapping layer -> intrinsic dimension for {self.name!r}, "
                             f"got {type(value).__name__}")
        collapsed = []
        for layer, v in value.items():
            v = float(v)
            if math.isnan(v):
                continue
            limit = self._limit(layer)
            if v < limit:
                collapsed.append((v / limit, layer, v, limit))
            self.running_max[layer] = max(self.running_max.get(layer, -math.inf), v)
        if not collapsed:
            return None
        collapsed.sort()
        _, layer, v, limit = collapsed[0]
        shown = ", ".join(f"{name} = {val:.3g} (limit {lim:.3g}, max {self.running_max[name]:.3g})"
                          for _, name, val, lim in collapsed)
        msg = f"intrinsic dimension collapsed in {shown}"
        return v, limit, msg, ("check for dying units, too strong weight decay or a too high "
                               "learning rate; inspect the layer's activations")

    def _extra_state(self) -> dict[str, Any]:
        return {"running_max": dict(self.running_max)}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        self.running_max = {str(k): float(v) for k, v in state["running_max"].items()}


class RankCollapse(RepresentationCollapse):
    """A layer's RankMe below ``floor`` or below ``(1 - drop)`` x its running maximum.

    Garrido, Balestriero, Najman & LeCun, "RankMe: Assessing the downstream performance of
    pretrained self-supervised representations by their rank", ICML 2023: a representation
    whose effective rank falls has lost directions (dimensional collapse; Jing et al. 2022).
    ``update(step, {"fc1": 31.5, "fc2": 12.0})`` with the values of
    ``geometry/symmetry/<layer>/rankme`` (:meth:`select` picks them out of a metrics dict).
    Same limits, running maxima, NaN handling, cooldown and state as
    :class:`RepresentationCollapse`.

    Args:
        floor: absolute floor (> 0) or None (default).
        drop: fraction in (0, 1) of the running maximum RankMe may lose (default 0.5).
        cooldown: steps between two alerts (default 100).
    """

    NAME = "rank_collapse"
    TITLE = "Representation rank collapse"

    @staticmethod
    def select(metrics: Mapping[str, Any]) -> dict[str, float]:
        """``{layer: value}`` of the ``geometry/symmetry/<layer>/rankme`` entries of ``metrics``."""
        head, tail = "geometry/symmetry/", "/rankme"
        return {k[len(head):-len(tail)]: float(v) for k, v in metrics.items()
                if k.startswith(head) and k.endswith(tail) and len(k) > len(head) + len(tail)}

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        if not isinstance(value, Mapping):
            raise ValueError(f"value must be a mapping layer -> RankMe for {self.name!r}, "
                             f"got {type(value).__name__}")
        hit = super()._check(step, value)
        if hit is None:
            return None
        v, limit, msg, _ = hit
        msg = msg.replace("intrinsic dimension collapsed in", "RankMe (effective rank of the "
                          "representation) collapsed in", 1)
        return v, limit, msg, ("check for dead units and too strong weight decay (see "
                               "geometry/symmetry/*/dead_fraction), or a too high learning rate")
