"""An overhead budget: measure only while the monitor's cost stays under a fraction of training.

Schedules say when a measurement is *due*; the budget says whether it may run *now*. With
``fraction = 0.05``, ``elapsed`` the wall time since :meth:`OverheadBudget.start` and
``spent`` the seconds all measurements took so far, the *credit* is

    credit = fraction * (elapsed - spent) - spent

(what the monitor may still spend, counting everything it spent as time taken from
training). A due measurement of family ``f`` runs only if

    credit >= cost[f]                     (cost[f]: the last observed cost of ``f``)
    credit >= max(cost.values(), 0)       (``f`` never measured: its cost is unknown)

so a family's first measurement waits until the credit covers the costliest measurement seen
so far, and the monitor overshoots its fraction by at most the first measurement of each
family (their costs are unknown until they have run) and background parts still pending. A measurement with a background part is *pending* until that part is
charged: meanwhile its family is not admitted again. The background part is charged as CPU time: that of the
thread that ran it (``time.thread_time``, so time it spent blocked is not counted) plus that
of any child process working for it. Both are charged as if taken from training, which is
what happens on a machine without a spare core (measured on a 2-core VM: a child process at
the lowest priority still slowed a one-thread training loop), and conservative where there
is one. A deferred measurement stays due and runs
at the first step the budget allows, so the cadence stretches on fast training steps instead
of slowing training down. :meth:`remaining` is the credit left, e.g. how long to wait for
pending work at the end of a fit. Costs that belong to no measurement are charged with
:meth:`charge_bookkeeping`: the monitor's own per-step work, the framework's calls into it,
and the slowdown a measurement leaves in the training steps after it
(:class:`~geomonitor.monitor.aftereffect.AfterEffectMeter`), so that ``spent`` is what the
monitor costs the run, not only the time it is seen to take.

Timing makes the decisions machine-dependent: use ``fraction=None`` (no budget) where the
series must be reproducible step for step. The budget never touches the training itself.

Example:
    >>> b = OverheadBudget(0.05, clock=iter([0.0, 10.0, 10.0]).__next__)
    >>> b.start(); b.charge("sharpness", 0.2)
    >>> b.allows("sharpness")   # 0.05 * (10 - 0.2) - 0.2 = 0.29 >= 0.2
    True
    >>> round(b.remaining(), 2)
    0.29
"""
from __future__ import annotations

import math
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
        self.pending: set[str] = set()
        self.deferred: dict[str, int] = {}

    def start(self) -> None:
        """Start the training clock (call at the start of training); resets the accounts."""
        self._t0 = self._clock()
        self.spent = 0.0
        self.cost.clear()
        self.pending.clear()

    def allows(self, name: str) -> bool:
        """Whether a measurement of ``name`` may run now; counts a deferral when not."""
        credit = self.remaining()
        if credit is None:
            return True
        if name in self.pending:
            ok = False
        elif name in self.cost:
            ok = credit >= self.cost[name]
        else:  # never measured: its cost is unknown
            ok = credit >= max(self.cost.values(), default=0.0)
        if not ok:
            self.deferred[name] = self.deferred.get(name, 0) + 1
        return ok

    def ready_at(self, name: str) -> float:
        """The clock time from which :meth:`allows` admits ``name`` if nothing more is spent
        meanwhile (spending more only moves it later):

            fraction * (t - t0 - spent) - spent >= need
            <=>  t >= t0 + spent + (need + spent) / fraction

        with ``need`` the family's cost, or the costliest known cost for a family never
        measured. ``-inf`` without a budget or before :meth:`start` (always admitted),
        ``inf`` while ``name`` is pending (its background part decides, not the clock)."""
        if self.fraction is None or self._t0 is None:
            return -math.inf
        if name in self.pending:
            return math.inf
        need = self.cost[name] if name in self.cost else max(self.cost.values(), default=0.0)
        return self._t0 + self.spent + (need + self.spent) / self.fraction

    def remaining(self) -> float | None:
        """The credit, ``fraction * (elapsed - spent) - spent`` (may be negative after a
        first measurement); ``None`` without a fraction or before :meth:`start`."""
        if self.fraction is None or self._t0 is None:
            return None
        return self.fraction * (self._clock() - self._t0 - self.spent) - self.spent

    def charge_bookkeeping(self, seconds: float) -> None:
        """Record monitor time that belongs to no measurement (per-step checks, logging)."""
        self.spent += max(0.0, float(seconds))

    def charge(self, name: str, seconds: float, *, background: bool = False,
               pending: bool = False) -> None:
        """Record that (part of) a measurement of ``name`` took ``seconds``.

        The training-thread part of a measurement sets the family's cost (``pending=True``
        when a background part is still to come); the background part (``background=True``,
        charged when its result comes back) is added to it and ends the pending state.
        """
        seconds = max(0.0, float(seconds))
        self.spent += seconds
        self.cost[name] = self.cost.get(name, 0.0) + seconds if background else seconds
        if background:
            self.pending.discard(name)
        elif pending:
            self.pending.add(name)
