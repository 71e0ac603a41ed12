"""Early stopping on neural persistence, framework-free: stop when the weights' topology stops growing.

Rieck et al., "Neural Persistence: A Complexity Measure for Deep Neural Networks Using
Algebraic Topology", ICLR 2019, Algorithm 2: after every epoch compute the mean normalised
neural persistence ``NP`` of the network (the average over layers of the normalised 2-norm of
each layer's 0-dimensional persistence diagram under the descending filtration of its
absolute weights; :func:`~geomonitor.monitor.families.neural_persistence.neural_persistence_metrics`);
when ``NP > best + delta_min`` remember it and reset the counter, else count; stop when the
counter reaches the patience ``g``. No validation data is needed: the criterion reads the
weights only.

Definition of :class:`NeuralPersistenceStopping` (one measurement ``v`` per ``update``; the
first ``burn_in`` measurements are recorded and not checked), in this order:

1. ``check_finite`` and ``v`` not finite: stop (reason ``non_finite``);
2. ``stopping_threshold`` set and ``v > stopping_threshold``: stop (``stopping_threshold``);
3. ``divergence_threshold`` set and ``v < divergence_threshold``: stop (``divergence_threshold``);
4. ``v > best + min_delta``: ``best = v``, ``wait = 0``;
5. else ``wait += 1``; ``wait >= patience``: stop (``patience``).

``best`` starts at ``-inf`` (Algorithm 2 starts it at 0; the two agree for every positive first
value, and NP of a network with a nonzero weight is positive). Steps 1-3 are the options of
Lightning's ``EarlyStopping``, in its order, so that
:class:`~geomonitor.callbacks.NeuralPersistenceEarlyStopping` -- the Lightning adapter, which
decides with this rule -- keeps their meaning. Once stopped the rule stays stopped
(:attr:`should_stop`) and ignores further values.

Where the values come from:

* a plain loop: ``rule.update(epoch, np_value)`` with a value you computed;
* :class:`~geomonitor.monitor.Monitor`: ``Monitor(..., stopping=rule, np_every_n_epochs=1)``
  feeds the rule every ``geometry/neural_persistence/mean`` it delivers (:meth:`observe`), and
  ``monitor.should_stop`` is read after ``monitor.step``. Patience then counts neural-persistence
  measurements, on the family's schedule (Algorithm 2: one per epoch);
* the Hugging Face ``GeometryTrainerCallback(early_stopping=rule)`` sets
  ``control.should_training_stop``; the Lightning ``NeuralPersistenceEarlyStopping`` stops the
  Trainer.

Ranks: the rule is a pure function of the values it is fed. Under ``torch.distributed`` the
monitor delivers rank 0's values on every rank (:mod:`geomonitor.monitor.ranks`), so every
rank's rule decides the same at the same step; the Lightning adapter reduces the decision
across ranks as Lightning's ``EarlyStopping`` does.

Defaults: ``patience = 3`` measurements, ``min_delta = 0`` (NP of a trained network changes by
~1e-3 per epoch late in training, so a positive delta would be scale-dependent), ``burn_in = 0``
(the paper sweeps patience and burn-in rather than fixing them).

Cost: O(1) per update; state: a few numbers (``state_dict`` in plain Python types).

Example:
    >>> rule = NeuralPersistenceStopping(patience=2)
    >>> [rule.update(e, v) is not None for e, v in enumerate([0.1, 0.3, 0.2, 0.25])]
    [False, False, False, True]
    >>> rule.should_stop, rule.stopped_step, rule.best
    (True, 3, 0.3)
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from geomonitor.monitor.alerts import Alert, Rule, _float_arg, _int_arg
from geomonitor.monitor.keys import metric_key

__all__ = ["NeuralPersistenceStopping", "NP_KEY", "REASONS"]

#: The value the rule reads from a monitor's metrics.
NP_KEY = metric_key("neural_persistence", summary="mean")
#: Why the rule stopped (``""`` while it has not).
REASONS = ("non_finite", "stopping_threshold", "divergence_threshold", "patience")


def _optional(name: str, value: Any) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    return float(value)


class NeuralPersistenceStopping(Rule):
    """Rieck et al. 2019's early-stopping criterion on normalised neural persistence (see module doc).

    ``update(step, value) -> Alert | None``: the alert (level ``INFO``) comes once, at the
    measurement that stops; :attr:`should_stop` stays ``True`` after it.

    Args:
        patience: measurements without improvement before stopping (Algorithm 2's ``g``; >= 1).
        min_delta: an improvement is ``NP > best + min_delta`` (Algorithm 2's ``delta_min``; >= 0).
        burn_in: measurements at the start that are recorded but not checked (>= 0).
        check_finite: stop at a NaN or infinite value (else it counts as no improvement).
        stopping_threshold: stop as soon as NP is above it (``None``: off).
        divergence_threshold: stop as soon as NP is below it (``None``: off).
        name: the rule's name (default ``np_early_stopping``).

    Attributes:
        best, wait, n_seen: the best value (``-inf`` before one), the counter, values seen.
        should_stop, stopped_step, reason: whether, at which step and why (:data:`REASONS`) it stopped.

    Raises:
        ValueError: an argument out of range (named in the message).
    """

    NAME = "np_early_stopping"
    LEVEL = "INFO"
    TITLE = "Neural persistence early stopping"

    def __init__(self, patience: int = 3, min_delta: float = 0.0, burn_in: int = 0, *,
                 check_finite: bool = True, stopping_threshold: float | None = None,
                 divergence_threshold: float | None = None, name: str | None = None) -> None:
        super().__init__(0, name)
        self.patience = _int_arg("patience", patience, 1)
        self.min_delta = _float_arg("min_delta", min_delta, 0.0, inclusive=True)
        self.burn_in = _int_arg("burn_in", burn_in, 0)
        if not isinstance(check_finite, bool):
            raise ValueError(f"check_finite must be True or False, got {check_finite!r}")
        self.check_finite = check_finite
        self.stopping_threshold = _optional("stopping_threshold", stopping_threshold)
        self.divergence_threshold = _optional("divergence_threshold", divergence_threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every value (a new run)."""
        self.best = -math.inf
        self.wait = 0
        self.n_seen = 0
        self.should_stop = False
        self.stopped_step: int | None = None
        self.reason = ""
        self.last_fired, self.n_fired, self.n_suppressed = None, 0, 0

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Alert | None:
        """``update(step, metrics[NP_KEY])`` when ``metrics`` holds :data:`NP_KEY`, else nothing."""
        if NP_KEY not in metrics:
            return None
        return self.update(step, metrics[NP_KEY])

    def update(self, step: int, value: Any) -> Alert | None:
        if self.should_stop:
            return None
        alert = super().update(step, value)
        if alert is not None:
            self.should_stop, self.stopped_step = True, int(step)
        return alert

    def _check(self, step: int, value: Any) -> tuple[float, float, str, str] | None:
        v = float(value)
        self.n_seen += 1
        if self.n_seen <= self.burn_in:
            return None
        hit = None
        if self.check_finite and not math.isfinite(v):
            hit = ("non_finite", math.inf, f"neural persistence = {v} is not finite")
        elif self.stopping_threshold is not None and v > self.stopping_threshold:
            hit = ("stopping_threshold", self.stopping_threshold,
                   f"neural persistence = {v:.6g} is above the stopping threshold {self.stopping_threshold:g}")
        elif self.divergence_threshold is not None and v < self.divergence_threshold:
            hit = ("divergence_threshold", self.divergence_threshold,
                   f"neural persistence = {v:.6g} is below the divergence threshold {self.divergence_threshold:g}")
        elif v > self.best + self.min_delta:  # False for NaN
            self.best, self.wait = v, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                hit = ("patience", self.best + self.min_delta,
                       f"neural persistence did not rise above best + min_delta = "
                       f"{self.best:.6g} + {self.min_delta:g} in the last {self.wait} measurements")
        if hit is None:
            return None
        self.reason, threshold, msg = hit
        return v, threshold, msg, "stop training (Rieck et al. 2019, Algorithm 2)"

    # -- state ----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"best": float(self.best), "wait": self.wait, "n_seen": self.n_seen,
                "should_stop": self.should_stop,
                "stopped_step": -1 if self.stopped_step is None else self.stopped_step,
                "reason": self.reason}

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        missing = {"best", "wait", "n_seen", "should_stop", "stopped_step", "reason"} - set(state)
        if missing:
            raise ValueError(f"state for rule {self.name!r} lacks keys {sorted(missing)}")
        self.best = float(state["best"])
        self.wait = int(state["wait"])
        self.n_seen = int(state["n_seen"])
        self.should_stop = bool(state["should_stop"])
        self.stopped_step = None if int(state["stopped_step"]) < 0 else int(state["stopped_step"])
        self.reason = str(state["reason"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(patience={self.patience}, min_delta={self.min_delta:g}, "
                f"burn_in={self.burn_in})")
