"""An overhead budget: measure only while the monitor's cost stays under a fraction of training.

Schedules say when a measurement is *due*; the budget says whether it may run *now*. With
``fraction = 0.05`` a due measurement of family ``f`` runs only if

    spent + cost[f] <= fraction * (elapsed - spent)

where ``elapsed`` is wall time since :meth:`OverheadBudget.start`, ``spent`` the seconds all
measurements took so far (training thread and background thread alike: on a machine with few
cores the background competes with training) and ``cost[f]`` the last observed cost of that
family (background time is subtracted from training time as if it were serial, which is
conservative when it actually overlaps training). A deferred measurement stays due and runs at the first step the budget allows, so
the cadence stretches on fast training steps instead of slowing training down. The first
measurement of each family always runs (its cost is unknown until then).

Timing makes the decisions machine-dependent: use ``fraction=None`` (no budget) where the
series must be reproducible step for step. The budget never touches the training itself.

Example:
    >>> b = OverheadBudget(0.05, clock=iter([0.0, 10.0]).__next__)
    >>> b.start(); b.charge("sharpness", 0.2)
    >>> b.allows("sharpness")   # 0.2 + 0.2 <= 0.05 * (10 - 0.2)
    True
"""
from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["OverheadBudget"]


class OverheadBudget:
    """Admit measurements while their total cost is at most ``fraction`` of training time.

    Args:
        fraction: allowed overhead, in (0, 1]; ``None`` admits everything.
        clock: seconds as a float, monotonic (default ``time.perf_counter``).

    Raises:
        ValueError: ``fraction`` not None and not in (0, 1].
    """

    def __init__(self, fraction: float | None, *, clock: Callable[[], float] = time.perf_counter) -> None:
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0.0 < fraction <= 1.0):
            raise ValueError(f"max_overhead must be a number in (0, 1] or None, got {fraction!r}")
        self.fraction = None if fraction is None else float(fraction)
        self._clock = clock
        self._t0: float | None = None
        self.spent = 0.0
        self.cost: dict[str, float] = {}
        self.deferred: dict[str, int] = {}

    def start(self) -> None:
        """Start the training clock (call at the start of training); resets the accounts."""
        self._t0 = self._clock()
        self.spent = 0.0
        self.cost.clear()

    def allows(self, name: str) -> bool:
        """Whether a measurement of ``name`` may run now; counts a deferral when not."""
        if self.fraction is None or self._t0 is None or name not in self.cost:
            return True
        training = self._clock() - self._t0 - self.spent
        if self.spent + self.cost[name] <= self.fraction * training:
            return True
        self.deferred[name] = self.deferred.get(name, 0) + 1
        return False

    def charge(self, name: str, seconds: float, *, background: bool = False) -> None:
        """Record that a measurement of ``name`` took ``seconds``.

        The training-thread part of a measurement sets the family's cost; its background part
        (``background=True``, charged when the result comes back) is added to it.
        """
        seconds = max(0.0, float(seconds))
        self.spent += seconds
        self.cost[name] = self.cost.get(name, 0.0) + seconds if background else seconds
