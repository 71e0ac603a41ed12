"""The cost-cap rule written out by brute force, from the docstring of ``geomonitor.monitor.cost``.

Nothing is accumulated: every question replays the whole event log. ``spent`` is the sum of
every charge (training-thread and background); ``own`` the sum of the training-thread
charges since the last start; training time is the wall time since that start minus ``own``,
plus the training time carried over from a checkpoint; a family's cost is the
training-thread seconds of its last measurement plus the background seconds of its last
finished job. A due occurrence runs when the family was never charged, or when
``spent + cost <= max_overhead * training``.

The plan, by brute force: costs in steps are ``cost / (training / steps_timed)``; every T from
1 upwards is tried until ``sum cost_f / (p_f * ceil(T / p_f)) <= max_overhead`` (no horizon).
"""
from __future__ import annotations

import math


class ReferenceRule:
    def __init__(self, max_overhead: float | None) -> None:
        self.fraction = max_overhead
        self.events: list[tuple] = []   # ("thread", f, s), ("background", f, s), ("start", t), ("stop",)
        self.carried = 0.0              # training seconds before a resume

    def start(self, t: float) -> None:
        self.events.append(("start", t))

    def resume(self, now: float) -> None:
        """A checkpoint taken at ``now`` and loaded: training so far is carried over, the
        clock stops until the next ``start``."""
        self.carried = self.training(now)
        self.events.append(("stop",))

    def charge(self, family: str, seconds: float) -> None:
        self.events.append(("thread", family, seconds))

    def charge_background(self, family: str, seconds: float) -> None:
        self.events.append(("background", family, seconds))

    def spent(self) -> float:
        return sum(e[2] for e in self.events if e[0] in ("thread", "background"))

    def training(self, now: float) -> float:
        starts = [i for i, e in enumerate(self.events) if e[0] in ("start", "stop")]
        if not starts or self.events[starts[-1]][0] == "stop":
            return self.carried
        i = starts[-1]
        own = sum(e[2] for e in self.events[i:] if e[0] == "thread")
        return self.carried + now - self.events[i][1] - own

    def cost(self, family: str) -> float | None:
        thread = [e[2] for e in self.events if e[0] == "thread" and e[1] == family]
        if not thread:
            return None
        background = [e[2] for e in self.events if e[0] == "background" and e[1] == family]
        return thread[-1] + (background[-1] if background else 0.0)

    def allows(self, family: str, now: float) -> bool:
        cost = self.cost(family)
        if self.fraction is None or cost is None:
            return True
        return self.spent() + cost <= self.fraction * self.training(now)

    def plan(self, periods: dict[str, int], now: float, steps_timed: int) -> dict[str, int]:
        """The periods in force, by trying every T in turn (runs of unknown length)."""
        training = self.training(now)
        if self.fraction is None or training <= 0 or steps_timed <= 0:
            return dict(periods)
        step = training / steps_timed
        cost = {f: self.cost(f) / step for f in periods if self.cost(f) is not None}
        for T in range(1, 10**6):
            per = {f: p * math.ceil(T / p) for f, p in periods.items()}
            if sum(c / per[f] for f, c in cost.items()) <= self.fraction:
                return {f: (per[f] if f in cost else p) for f, p in periods.items()}
        raise AssertionError("no period up to 10**6 fits")
