"""The cost cap: skip a due measurement that would take the monitor over its share of time.

The rule, in full: measure on the schedule. Keep each family's cost — the training-thread
seconds of its last measurement (including its logging) plus the background CPU seconds of
its last finished job. At a due occurrence of family f, with ``spent`` the monitor's total
measured cost so far and ``training`` the wall time since the start minus the monitor's own
training-thread time::

    run  if f was never measured, or  spent + cost[f] <= max_overhead * training
    skip otherwise (counted in ``skipped[f]``)

So the first measurement of every family always runs (a short run shows every curve at
least once) and the cap is exceeded by at most those first costs; a skipped occurrence
never moves the later ones (the schedule is not shifted, the next occurrence is simply
asked again). Time comes from the injected ``clock`` (default ``time.perf_counter``), so
tests script it. ``max_overhead=None`` measures every occurrence.

Under DDP the engine asks rank 0's cap and broadcasts its decisions, so ranks measure at the
same steps.

Example:
    >>> t = [0.0]
    >>> cap = CostCap(0.05, clock=lambda: t[0])
    >>> cap.start()
    >>> cap.allows("id")                   # never measured: runs
    True
    >>> cap.charge("id", 1.0)              # it took 1 s of the training thread
    >>> t[0] = 11.0                        # 10 s of training since (11 s wall - 1 s monitor)
    >>> cap.allows("id")                   # 1 + 1 > 0.05 * 10: skipped
    False
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CostCap"]


class CostCap:
    """Admit or skip due measurements by the rule in the module docstring.

    Args:
        max_overhead: the monitor's share of training time, a float in (0, 1], or ``None``
            (no cap: every due measurement runs).
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
        self.cost: dict[str, float] = {}      # family -> last measured cost (thread + background)
        self._thread: dict[str, float] = {}   # family -> training-thread part of that cost
        self.spent = 0.0                      # total measured cost
        self.own = 0.0                        # the training-thread part of ``spent``
        self._t0: float | None = None
        self._before = 0.0                    # training seconds restored from a checkpoint

    def start(self) -> None:
        """Start (or restart, after a resume) the training-time clock."""
        self._t0 = self.clock()
        self._own0 = self.own

    def stop(self) -> None:
        """Freeze the training-time clock (the end of training: idle time is not training)."""
        self._before = self.training_time()
        self._t0 = None

    def training_time(self) -> float:
        """Seconds of training so far: wall time since ``start`` minus the monitor's own."""
        if self._t0 is None:
            return self._before
        return self._before + max(0.0, self.clock() - self._t0 - (self.own - self._own0))

    def allows(self, family: str, planned: float = 0.0) -> bool:
        """Whether a due measurement of ``family`` runs now (see the rule); ``planned``: the
        cost of the measurements already admitted at this step, not yet charged."""
        if self.fraction is None or family not in self.cost:
            return True
        return self.spent + planned + self.cost[family] <= self.fraction * self.training_time()

    @property
    def started(self) -> bool:
        """Whether the training-time clock runs (``start`` called since the last load)."""
        return self._t0 is not None

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
                "training": self.training_time()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.cost = {str(k): float(v) for k, v in state["cost"].items()}
        self._thread = {str(k): float(v) for k, v in state["thread"].items()}
        self.spent = float(state["spent"])
        self._before = float(state["training"])
        self.own = 0.0
        self._t0 = None
