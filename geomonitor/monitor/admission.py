"""Which measurements run at a training step: the schedules, a queue, and the budget.

A family's :class:`~geomonitor.monitor.schedule.Every` says when a measurement is *due*; the
:class:`~geomonitor.monitor.budget.OverheadBudget` says whether it may run *now*. A due
measurement the budget refuses is *deferred*: it joins a queue and stays due at every later
step until admitted. Admission is longest-deferred first, and once one family is refused for
lack of credit the ones behind it wait too, so that cheap, frequent families cannot starve an
expensive one (a family refused only because its own background part is still pending blocks
nobody).

The check runs after every optimizer step, so its common case must cost next to nothing:
:meth:`Admission.select` first compares the step with the next step any schedule can be due
at, and the clock with the time the head of the queue can be admitted
(:meth:`OverheadBudget.ready_at`); only when either is reached does it look at the families
and ask the budget. ``budget.deferred[name]`` still counts every step a deferred measurement
of ``name`` waited.

Cost: O(1) per step in the common case; O(F) for F families when something is due.
Memory: the queue (at most one entry per family).

Example:
    >>> from geomonitor.monitor.budget import OverheadBudget
    >>> from geomonitor.monitor.schedule import Every
    >>> class Fam:
    ...     def __init__(self, name, n): self.name, self.schedule, self.enabled = name, Every(n), True
    >>> adm = Admission(OverheadBudget(None))
    >>> adm.start()
    >>> [[f.name for f in adm.select([Fam("id", 2), Fam("sharpness", 3)], s)] for s in range(1, 7)]
    [[], ['id'], ['sharpness'], ['id'], [], ['id', 'sharpness']]
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from geomonitor.monitor.budget import OverheadBudget
from geomonitor.monitor.schedule import Every

__all__ = ["Admission"]


class _Family(Protocol):
    name: str
    schedule: Every
    enabled: bool


class Admission:
    """Due measurements admitted by an overhead budget, with a queue for the deferred ones.

    Args:
        budget: the :class:`OverheadBudget` that decides (``fraction=None``: all admitted).
        clock: the budget's clock (default ``time.perf_counter``).
    """

    def __init__(self, budget: OverheadBudget, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget = budget
        self._clock = clock
        self.queue: dict[str, int] = {}  # deferred family -> its place (when first deferred)
        self._order = itertools.count()
        self._next_step = 0  # no step schedule is due before this step
        self._retry_at = -math.inf  # the queue's head cannot be admitted before this time

    def start(self) -> None:
        """A new fit: empty queue, everything re-checked at the next step."""
        self.queue.clear()
        self.wake()
        self._next_step = 0

    def wake(self) -> None:
        """Re-check the queue at the next step (a pending background part came back)."""
        self._retry_at = -math.inf

    def select(self, families: Sequence[_Family], step: int, epoch: int | None = None, *,
               last: Mapping[str, int] | None = None) -> list[Any]:
        """The families to measure now, longest-deferred first; refused ones are deferred.

        Args:
            families: objects with ``name``, ``schedule`` and ``enabled``.
            step: the optimizer step just taken (``trainer.global_step``).
            epoch: the epoch just ended (0-based) at an end-of-epoch check, else ``None``.
            last: family -> step of its last measurement (never measured twice at a step).
        """
        by_epoch = epoch is not None
        if not by_epoch and step < self._next_step and (not self.queue or self._clock() < self._retry_at):
            for name in self.queue:
                self.budget.count_wait(name)
            return []
        last = last or {}
        due = [f for f in families if f.enabled and last.get(f.name) != step and (
            f.name in self.queue or (f.schedule.due_epoch(epoch) if by_epoch else f.schedule.due_step(step)))]
        due.sort(key=lambda f: self.queue.get(f.name, math.inf))
        admitted, blocked = [], False
        for fam in due:
            if not blocked and self.budget.allows(fam.name):
                admitted.append(fam)
                self.queue.pop(fam.name, None)
            else:
                blocked = blocked or fam.name not in self.budget.pending
                self.defer(fam)
        if not by_epoch:
            steps = [f.schedule.n_steps for f in families if f.enabled and f.schedule.n_steps]
            self._next_step = min(((step // n + 1) * n for n in steps), default=math.inf)
        return admitted

    def defer(self, fam: _Family) -> None:
        """Keep ``fam`` due; its place in the queue is when it was first deferred. The queue
        is re-checked once the budget can admit the first family in it that is not pending
        (the families behind it wait for it; a pending one waits for :meth:`wake`)."""
        self.queue.setdefault(fam.name, next(self._order))
        ahead = sorted(self.queue, key=self.queue.__getitem__)
        blocker = next((name for name in ahead if name not in self.budget.pending), None)
        self._retry_at = math.inf if blocker is None else self.budget.ready_at(blocker)
