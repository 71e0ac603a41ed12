"""The cost cap: plan each family's period so that the monitor fits its share of training.

Costs are counted in **training steps**: a family's cost is the training-thread seconds of
its last measurement (its logging included) plus the background CPU seconds of its last
finished job, divided by the mean training step (training time / optimizer steps).

The plan (:func:`plan_periods`), redone whenever a cost changes: the families share the rate
``r`` (cost per training step) the cap may spend, and the cap finds the **shortest common
period T** for which ::

    sum_f cost[f] / period_f(T) <= r,      period_f(T) = p_f * ceil(T / p_f)

where ``p_f`` is the period the user asked for: a family asked for more often than every T
steps is measured every T steps (rounded up to a multiple of its own period, so the steps
stay on its schedule), one asked for less often keeps its period. So every stretched family
gets the same number of points, evenly spread. ``r = max_overhead`` for a run of unknown
length; when the run's length is known (``horizon`` steps) the cap spreads what is left of
the whole run's budget over what is left of the run::

    r = (max_overhead * horizon_time - spent) / (horizon_time - training_time)

with ``horizon_time`` = mean step x ``horizon``. A family measured never yet has no cost: it
runs at its own period, and the first measurement of every family always runs.

A guard catches what the plan did not foresee (a measurement that got dearer): a due
occurrence is skipped (counted in ``skipped[f]``) when
``spent + planned + cost[f] > max_overhead * budget_time``, ``budget_time`` being the
horizon's training time when known, else the training time so far. ``max_overhead=None``
measures every occurrence at the asked periods.

Time comes from the injected ``clock`` (default ``time.perf_counter``), so tests script it.
Under DDP the engine asks rank 0's cap and broadcasts its decisions.

Example:
    >>> plan_periods({"id": 1.0, "sharpness": 4.0}, {"id": 10, "sharpness": 10}, 0.05)
    {'id': 100, 'sharpness': 100}
    >>> plan_periods({"id": 1.0}, {"id": 500}, 0.05)   # affordable as asked: kept
    {'id': 500}
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PAUSED", "CostCap", "plan_periods", "run_length"]

#: the period of a family no rate affords: no run reaches it (paused until the plan changes)
PAUSED = 10**12


def plan_periods(cost: Mapping[str, float], period: Mapping[str, int], rate: float) -> dict[str, int]:
    """The stretched periods (see the module docstring) for ``cost`` in training steps per
    measurement, asked ``period`` in steps, and the affordable ``rate``. Families without a
    cost keep their period. With ``rate <= 0`` every costed family is paused (``10**12``).

    Raises:
        ValueError: a period that is not a positive int, or a negative cost.
    """
    for name, p in period.items():
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ValueError(f"period[{name!r}] must be a positive int, got {p!r}")
    if any(not c >= 0 for c in cost.values()):
        raise ValueError(f"costs must be >= 0, got {dict(cost)!r}")
    costed = {f: float(cost[f]) for f in period if f in cost}

    def stretched(T: int) -> dict[str, int]:
        return {f: p if f not in costed else p * -(-T // p) for f, p in period.items()}

    def fits(T: int) -> bool:
        per = stretched(T)
        return sum(c / per[f] for f, c in costed.items()) <= rate

    if not costed or fits(1):
        return dict(period)
    if rate <= 0 or not fits(PAUSED):
        return {f: (PAUSED if f in costed else p) for f, p in period.items()}
    lo, hi = 1, 1
    while not fits(hi):  # fits() is monotone in T: double, then bisect
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return stretched(hi)


def run_length(total: Any, strict: bool = True) -> int | None:
    """A run's length in steps as a positive int, or ``None`` when unknown (``None``, ``inf``,
    NaN, <= 0). A value of another type raises ``ValueError`` when ``strict``, else is unknown.
    """
    if total is None:
        return None
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        if strict:
            raise ValueError(f"total_steps must be a positive int, a callable or None, got {total!r}")
        return None
    if total != total or total == float("inf") or total <= 0:
        return None
    return int(total)


class CostCap:
    """Plan periods and guard due measurements by the rules in the module docstring.

    Args:
        max_overhead: the monitor's share of training time, a float in (0, 1], or ``None``
            (no cap: every due measurement runs at the asked period).
        clock: wall clock in seconds, ``time.perf_counter`` by default.

    Raises:
        ValueError: ``max_overhead`` outside (0, 1], or ``clock`` not callable.
    """

    def __init__(self, max_overhead: float | None = 0.05,
                 clock: Callable[[], float] | None = None) -> None:
        if max_overhead is not None and (isinstance(max_overhead, bool)
                                         or not isinstance(max_overhead, (int, float))
                                         or not 0 < max_overhead <= 1):
            raise ValueError(f"max_overhead must be a float in (0, 1] or None, got {max_overhead!r}")
        if clock is not None and not callable(clock):
            raise ValueError(f"clock must be a callable returning seconds, got {clock!r}")
        self.fraction = None if max_overhead is None else float(max_overhead)
        self.clock = clock or time.perf_counter
        self.cost: dict[str, float] = {}      # family -> last measured cost, seconds
        self._thread: dict[str, float] = {}   # family -> training-thread part of that cost
        self.spent = 0.0                      # total measured cost, seconds
        self.own = 0.0                        # the training-thread part of ``spent``
        self.horizon: int | None = None       # the run's length in steps, when known
        self.step = 0                         # the latest optimizer step seen (``tick``)
        self._t0: float | None = None
        self._step0: int | None = 0
        self._before = 0.0                    # training seconds restored from a checkpoint
        self._steps_before = 0                # timed steps restored from a checkpoint

    def start(self, step: int | None = None) -> None:
        """Start the training-time clock after optimizer ``step``; ``None`` (a resume: the
        clock starts before the next step's work) counts from the step before the next tick."""
        self._t0 = self.clock()
        self._own0 = self.own
        self._step0 = step
        if step is not None:
            self.step = step

    def tick(self, step: int) -> None:
        """Optimizer ``step`` was taken (the engine calls this at every step)."""
        if self._step0 is None:
            self._step0 = step - 1
        self.step = step

    def stop(self) -> None:
        """Freeze the training-time clock (the end of training: idle time is not training)."""
        self._before = self.training_time()
        self._steps_before = self.steps_timed()
        self._t0 = None

    @property
    def started(self) -> bool:
        """Whether the training-time clock runs (``start`` called since the last load)."""
        return self._t0 is not None

    def training_time(self) -> float:
        """Seconds of training so far: wall time since ``start`` minus the monitor's own."""
        if self._t0 is None:
            return self._before
        return self._before + max(0.0, self.clock() - self._t0 - (self.own - self._own0))

    def steps_timed(self) -> int:
        """Optimizer steps taken while the clock ran (the clock starts at the first one)."""
        if self._t0 is None:
            return self._steps_before
        return self._steps_before + (0 if self._step0 is None else max(0, self.step - self._step0))

    def step_time(self) -> float:
        """The mean training step in seconds; 0 before a step was timed."""
        n = self.steps_timed()
        return self.training_time() / n if n > 0 else 0.0

    def in_steps(self, seconds: float) -> float:
        """``seconds`` in training steps (``inf`` before a step was timed)."""
        t = self.step_time()
        return seconds / t if t > 0 else math.inf

    def rate(self) -> float:
        """The cost per training step the plan may spend now (module docstring)."""
        if self.fraction is None:
            return math.inf
        if self.horizon is None or self.horizon <= self.step:
            return self.fraction
        total = self.step_time() * self.horizon
        left = total - self.training_time()
        return (self.fraction * total - self.spent) / left if left > 0 else self.fraction

    def plan(self, periods: Mapping[str, int]) -> dict[str, int]:
        """:func:`plan_periods` for the asked ``periods`` with the current costs and rate."""
        step = self.step_time()
        if self.fraction is None or step <= 0:
            return dict(periods)
        cost = {f: c / step for f, c in self.cost.items() if f in periods}
        return plan_periods(cost, periods, self.rate())

    def allows(self, family: str, planned: float = 0.0) -> bool:
        """The guard: whether a due measurement of ``family`` runs now; ``planned``: the
        cost of the measurements already admitted at this step, not yet charged."""
        if self.fraction is None or family not in self.cost:
            return True
        budget_time = self.training_time()
        if self.horizon is not None and self.horizon > self.step:
            budget_time = max(budget_time, self.step_time() * self.horizon)
        return self.spent + planned + self.cost[family] <= self.fraction * budget_time

    def charge(self, family: str, seconds: float) -> None:
        """A measurement of ``family`` took ``seconds`` of the training thread."""
        seconds = max(0.0, float(seconds))
        background = self.cost.get(family, 0.0) - self._thread.get(family, 0.0)
        self._thread[family] = seconds
        self.cost[family] = seconds + background   # + the last finished job's background part
        self.spent += seconds
        self.own += seconds

    def charge_background(self, family: str, seconds: float) -> None:
        """A background job of ``family`` finished after ``seconds`` of CPU off the thread."""
        seconds = max(0.0, float(seconds))
        self.cost[family] = self._thread.get(family, 0.0) + seconds
        self.spent += seconds

    def overhead(self) -> float:
        """``spent / training_time`` (0 before any training time)."""
        t = self.training_time()
        return self.spent / t if t > 0 else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"cost": dict(self.cost), "thread": dict(self._thread), "spent": self.spent,
                "training": self.training_time(), "steps": self.steps_timed()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cost = {str(k): float(v) for k, v in state["cost"].items()}
        self._thread = {str(k): float(v) for k, v in state["thread"].items()}
        self.spent = float(state["spent"])
        self._before = float(state["training"])
        self._steps_before = int(state.get("steps", 0))
        self.own = 0.0
        self._t0 = None
