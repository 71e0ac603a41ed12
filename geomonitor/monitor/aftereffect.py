"""The cost a measurement leaves behind: how much slower the training steps after it run.

A measurement evicts training's data and code from the CPU caches and branch predictors and
moves the allocator's free lists around, so the training steps that follow it run slower
than the steps before it. Timing the measurement itself does not see this. Measured on the
quickstart MLP (2-core VM, about 1.2 ms steps; ``benchmarks/bench_after_effect.py --loop
lightning``): the first training step after a measurement took 10-70% longer, and the
steps after it together 4-22% of the measurement's own time, not counting the data loading
and the framework's work between steps.

:class:`AfterEffectMeter` times the training steps instead. With ``period`` the wall time
from one training step's start to the next one's, less the monitor's own (already charged)
time in between, it keeps the last ``history`` undisturbed periods in a ring buffer. A
measurement (:meth:`disturb`) fixes the baseline ``b`` = median of that buffer and opens a
window of ``window`` steps; when the window closes, :meth:`tick` returns

    excess = max(0, sum over the window's periods p_i of (p_i - b))

the seconds to charge. The sum is signed, so step-to-step noise cancels (its standard
deviation grows as sqrt(window)) instead of adding up, and only the total is clipped at zero.
A measurement inside an open window extends it with the same baseline (no undisturbed
period lies between the two). A period that crosses an epoch boundary (``boundary=True``:
the end-of-epoch hooks, validation, a new dataloader iterator) is compared with nothing and
charged nothing, but counts towards the window.

Memory: a ring buffer of ``history`` floats. Cost: O(1) per step; O(history log history)
per measurement (the median). The clock is the caller's: this module never reads time.

Failure modes: before ``min_history`` undisturbed periods have been seen there is no
baseline, and the window of a measurement then is not charged (returns 0).

Example:
    >>> m = AfterEffectMeter(window=2, history=4, min_history=2)
    >>> [m.tick(t) for t in (0.0, 1.0, 2.0, 3.0)]     # periods 1, 1, 1: the baseline is 1
    [0.0, 0.0, 0.0, 0.0]
    >>> m.disturb()
    >>> m.tick(4.5), round(m.tick(5.7), 6)              # periods 1.5 and 1.2: 0.5 + 0.2 excess
    (0.0, 0.7)
"""
from __future__ import annotations

import statistics

from geomonitor._checks import positive_int

__all__ = ["AfterEffectMeter"]


class AfterEffectMeter:
    """Excess wall time of the training steps that follow a measurement (module docstring).

    Args:
        window: steps after a measurement whose excess is charged to it.
        history: undisturbed periods kept for the baseline (a ring buffer).
        min_history: periods needed before a baseline exists (at most ``history``).

    Raises:
        ValueError: a count that is not a positive int, or ``min_history > history``.
    """

    def __init__(self, window: int = 16, history: int = 32, min_history: int = 4) -> None:
        self.window = positive_int("window", window)
        self.history = positive_int("history", history)
        self.min_history = positive_int("min_history", min_history)
        if min_history > history:
            raise ValueError(f"min_history must be at most history={history}, got {min_history!r}")
        self._ring = [0.0] * history
        self._n = 0  # filled slots
        self._i = 0  # next slot
        self._last: float | None = None
        self._left = 0  # steps left in the open window
        self._baseline: float | None = None
        self._excess = 0.0
        self.charged = 0.0  # total returned so far

    def reset(self) -> None:
        """Forget the periods and any open window (a new fit)."""
        self._n = self._i = self._left = 0
        self._last, self._baseline, self._excess = None, None, 0.0
        self.charged = 0.0

    @property
    def baseline(self) -> float | None:
        """Median of the undisturbed periods seen, or None with fewer than ``min_history``."""
        if self._n < self.min_history:
            return None
        return statistics.median(self._ring[:self._n])

    def tick(self, now: float, own: float = 0.0, *, boundary: bool = False) -> float:
        """A training step starts at clock time ``now``; returns seconds to charge (>= 0).

        Args:
            now: the clock at the start of this step.
            own: the monitor's own time since the previous tick, already charged elsewhere.
            boundary: the period since the previous tick crosses an epoch boundary.
        """
        last, self._last = self._last, now
        if last is None:
            return 0.0
        period = now - last - own
        if self._left:
            if not boundary and self._baseline is not None:
                self._excess += period - self._baseline
            self._left -= 1
            return 0.0 if self._left else self.flush()
        if not boundary:
            self._ring[self._i] = period
            self._i = (self._i + 1) % self.history
            self._n = min(self._n + 1, self.history)
        return 0.0

    def disturb(self) -> None:
        """A measurement ran since the last tick: open (or extend) the window."""
        if not self._left:
            self._baseline = self.baseline
            self._excess = 0.0
        self._left = self.window

    def flush(self) -> float:
        """Close the open window now (e.g. at the end of fit); returns its excess (>= 0)."""
        excess = max(0.0, self._excess)
        self._left, self._excess = 0, 0.0
        self.charged += excess
        return excess
