"""An overhead budget: measure only while the monitor's cost stays under a fraction of training.

Schedules say when a measurement is *due*; the budget says whether it may run *now*. With
``fraction = 0.05``, ``elapsed`` the wall time since :meth:`OverheadBudget.start` and
``spent`` the seconds all measurements took so far, the *credit* is

    credit = fraction * (elapsed - spent) - spent

(what the monitor may still spend, counting everything it spent as time taken from
training). A due measurement of family ``f`` runs only if

    credit >= cost[f]                              (cost[f]: the last observed cost of ``f``)
    credit >= max(cost.values(), first_cost)       (``f`` never measured: its cost is unknown)

so a family's first measurement waits until the credit covers the costliest measurement seen
so far, and at least ``first_cost`` (0.02 s by default: on the quickstart MLP, 2-core VM, a
first measurement took 4 ms (TwoNN, neural persistence) to 25 ms (persistence of three
layers) and 40 ms (sharpness from a random start)). The monitor overshoots its fraction by at
most what the first measurement of each family costs beyond that (costs are unknown until
they have run) and background parts still pending; a training too short to earn
``first_cost`` is not measured at all. A measurement with a background part is *pending* until that part is
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
        first_cost: seconds of credit a never-measured family needs at least (>= 0).
        clock: seconds as a float, monotonic (default ``time.perf_counter``).

    Raises:
        ValueError: ``fraction`` not None and not in (0, 1]; ``first_cost`` negative or
            not a number.
    """

    def __init__(self, fraction: float | None, *, first_cost: float = 0.02,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0.0 < fraction <= 1.0):
            raise ValueError(f"max_overhead must be a number in (0, 1] or None, got {fraction!r}")
        if isinstance(first_cost, bool) or not isinstance(first_cost, (int, float)) or not first_cost >= 0:
            raise ValueError(f"first_cost must be a number of seconds >= 0, got {first_cost!r}")
        self.fraction = None if fraction is None else float(fraction)
        self.first_cost = float(first_cost)
        self._clock = clock
        self._t0: float | None = None
        self.spent = 0.0
        self.cost: dict[str, float] = {}
        self.pending: set[str] = set()
        self.deferred: dict[str, int] = {}  # steps a due measurement waited, all fits
        self._waited: set[str] = set()  # families that waited in this fit

    def start(self) -> None:
        """Start the training clock (call at the start of training); resets the accounts."""
        self._t0 = self._clock()
        self.spent = 0.0
        self.cost.clear()
        self.pending.clear()
        self._waited.clear()

    def allows(self, name: str) -> bool:
        """Whether a measurement of ``name`` may run now; counts a deferral when not."""
        credit = self.remaining()
        if credit is None:
            return True
        ok = name not in self.pending and credit >= self._need(name)
        if not ok:
            self.count_wait(name)
        return ok

    def count_wait(self, name: str) -> None:
        """A due measurement of ``name`` waited one more step (``deferred[name] += 1``)."""
        self.deferred[name] = self.deferred.get(name, 0) + 1
        self._waited.add(name)

    def starved(self) -> list[str]:
        """Families that waited since :meth:`start` and never ran: the training was too
        short for them at this fraction."""
        return sorted(self._waited.difference(self.cost))

    def ready_at(self, name: str) -> float:
        """The clock time from which :meth:`allows` admits ``name`` if nothing more is spent
        meanwhile (spending more only moves it later):

            fraction * (t - t0 - spent) - spent >= need
            <=>  t >= t0 + spent + (need + spent) / fraction

        with ``need`` the family's cost, or for a family never measured the costliest known
        cost and at least ``first_cost``. ``-inf`` without a budget or before :meth:`start`
        (always admitted), ``inf`` while ``name`` is pending (its background part decides,
        not the clock)."""
        if self.fraction is None or self._t0 is None:
            return -math.inf
        if name in self.pending:
            return math.inf
        return self._t0 + self.spent + (self._need(name) + self.spent) / self.fraction

    def _need(self, name: str) -> float:
        if name in self.cost:
            return self.cost[name]
        return max([self.first_cost, *self.cost.values()])  # never measured: cost unknown

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
