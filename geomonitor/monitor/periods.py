"""The periods in force: each family's asked schedule, stretched by the cost cap's plan.

A family asks for a period (its :class:`~geomonitor.monitor.schedule.Every`: ``n_steps``, or
``n_epochs`` epochs, counted in steps once the first epoch has ended). The cap
(:meth:`geomonitor.monitor.cost.CostCap.plan`) answers with a period that is a whole
multiple ``m`` of it. The family is then due at an asked step ``s`` (a multiple of
``n_steps``) when ``s - last >= n_steps * m``, ``last`` being the step at which it was last
measured (at the end of an asked epoch ``e`` when ``e - last_epoch >= n_epochs * m``). So
the points stay on the asked steps, a period counts from the previous point (a change of
plan never bunches or drops points), and the first occurrence always comes. A point the
cap's guard skips is asked again at each asked step until it runs (one skip counted).

Example:
    >>> from geomonitor.monitor.schedule import Every
    >>> p = Periods({"id": Every(n_steps=10)})
    >>> due = []
    >>> for s in range(1, 100):
    ...     if p.due("id", s):
    ...         due.append(s); _ = p.mark("id", s)
    ...         if s == 10: _ = p.update({"id": 30})  # the plan after the first point
    >>> due
    [10, 40, 70]

Resume: :meth:`Periods.state_dict` keeps the asked schedules too, and
:meth:`Periods.load_state_dict` warns (``MonitorWarning``) naming every schedule that differs
from the checkpoint's as its option (``id_every_n_steps=20 (checkpoint: 10)``): the
schedules given now apply, counted from the checkpoint's last points.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from geomonitor.monitor.schedule import Every

__all__ = ["Periods"]

_OPTION = {"neural_persistence": "np"}  # family name -> its options' prefix, where they differ


class Periods:
    """Asked schedules and the stretch the plan put on them (see the module docstring).

    Args:
        schedules: family name -> its asked :class:`Every`.
    """

    def __init__(self, schedules: Mapping[str, Every]) -> None:
        self.schedules = dict(schedules)
        self.stretch = {name: 1 for name in self.schedules}
        self.last: dict[str, int] = {}          # step of the last measured point
        self.last_epoch: dict[str, int] = {}    # epoch of the last point at an epoch end
        self.waiting: set[str] = set()          # skipped by the guard, asked again
        self.steps_per_epoch: float | None = None

    def epoch_end(self, step: int, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) ended after ``step`` optimizer steps."""
        if step > 0:
            self.steps_per_epoch = step / (epoch + 1)

    def asked(self, name: str) -> int | None:
        """The asked period in steps (``None`` for an epoch schedule before an epoch ended)."""
        sched = self.schedules[name]
        if sched.n_steps is not None:
            return sched.n_steps
        if self.steps_per_epoch is None:
            return None
        return max(1, round(sched.n_epochs * self.steps_per_epoch))

    def in_force(self, name: str) -> int | None:
        """The period in force in steps (asked x stretch), ``None`` when not known yet."""
        asked = self.asked(name)
        return None if asked is None else asked * self.stretch[name]

    def due(self, name: str, step: int, epoch: int | None = None) -> bool:
        """Whether ``name`` is due at ``step`` (or, with ``epoch``, at that epoch's end)."""
        sched, m = self.schedules[name], self.stretch[name]
        if epoch is not None:
            last = self.last_epoch.get(name)
            return sched.due_epoch(epoch) and (last is None or epoch - last >= sched.n_epochs * m)
        last = self.last.get(name)
        return sched.due_step(step) and (last is None or step - last >= sched.n_steps * m)

    def mark(self, name: str, step: int, epoch: int | None = None, *, ran: bool = True) -> bool:
        """A point of ``name`` at ``step`` (at ``epoch``'s end) was measured (``ran``), or
        skipped by the cap's guard: then it is asked again at the next asked step, and the
        period counts from the point that runs. Returns whether this is the first skip of
        that point (the skip that is counted)."""
        if not ran:
            first = name not in self.waiting
            self.waiting.add(name)
            return first
        self.waiting.discard(name)
        if epoch is not None:
            self.last_epoch[name] = epoch
        else:
            self.last[name] = step
        return False

    def multiples(self, planned: Mapping[str, int]) -> dict[str, int]:
        """The stretch multipliers of the plan's periods (in steps)."""
        return {name: max(1, period // asked) for name, period in planned.items()
                if (asked := self.asked(name)) is not None}

    def update(self, planned: Mapping[str, int]) -> dict[str, int]:
        """Take the plan's periods (in steps); returns those in force that changed."""
        return self.adopt(self.multiples(planned))

    def adopt(self, stretch: Mapping[str, int]) -> dict[str, int]:
        """Take the stretch multipliers (e.g. rank 0's); returns the periods that changed."""
        changed = {}
        for name, m in stretch.items():
            if name in self.stretch and m != self.stretch[name]:
                self.stretch[name] = int(m)
                asked = self.asked(name)
                changed[name] = (asked or 1) * int(m)
        return changed

    def asked_all(self) -> dict[str, int]:
        """The asked periods in steps of every family whose period is known."""
        return {n: a for n in self.schedules if (a := self.asked(n)) is not None}

    def state_dict(self) -> dict[str, Any]:
        return {"stretch": dict(self.stretch), "last": dict(self.last),
                "last_epoch": dict(self.last_epoch), "waiting": sorted(self.waiting),
                "steps_per_epoch": self.steps_per_epoch,
                "asked": {n: [e.n_steps, e.n_epochs] for n, e in self.schedules.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._name_changed_schedules(state.get("asked", {}))
        for name, m in state.get("stretch", {}).items():
            if name in self.stretch:
                self.stretch[name] = max(1, int(m))
        for attr in ("last", "last_epoch"):
            setattr(self, attr, {n: int(v) for n, v in state.get(attr, {}).items() if n in self.stretch})
        self.waiting = {n for n in state.get("waiting", []) if n in self.stretch}
        spe = state.get("steps_per_epoch")
        self.steps_per_epoch = None if spe is None else float(spe)

    def _name_changed_schedules(self, saved: Mapping[str, Any]) -> None:
        differ = []
        for name, sched in self.schedules.items():
            if name not in saved:
                continue
            for unit, now, then in zip(("steps", "epochs"), (sched.n_steps, sched.n_epochs), saved[name]):
                if now != then:
                    differ.append(f"{_OPTION.get(name, name)}_every_n_{unit}={now!r} (checkpoint: {then!r})")
        if differ:
            from geomonitor.monitor.engine import MonitorWarning  # the engine imports this module

            warnings.warn(f"Monitor resumed with {', '.join(differ)}: these schedules apply, counted "
                          "from the checkpoint's last points", MonitorWarning, stacklevel=4)
