"""What Lightning spends calling a callback's hooks, timed inside the training loop.

Lightning calls every hook of every callback, overridden or not, on every batch: with
automatic optimization and no gradient accumulation six of them (``on_train_batch_start``,
``on_before_backward``, ``on_after_backward``, ``on_before_optimizer_step``,
``on_before_zero_grad``, ``on_train_batch_end``; fewer per batch otherwise), each through the
trainer's profiler. That is a cost of the monitor the overhead budget cannot time, because it
happens outside the callback's own code. Measured on a 2-core VM: 1.6-2.0 us per hook call
in a tight loop, and 3-5 us inside a training loop (Lightning fits with and without ten no-op
callbacks; this module's own samples), where the training step in between has evicted
Lightning's and the interpreter's code and data from the caches.

:class:`DispatchCost` therefore times the same call pattern (``getattr``, ``callable``, the
profiler's ``profile`` context, ``trainer.lightning_module``, a call of a no-op hook) one call
at a time inside the training loop, every ``every``-th batch, and estimates the cost per
batch as ``HOOKS_PER_BATCH`` times the median of the last ``history`` samples. The hook called
is that of a plain :class:`~pytorch_lightning.Callback` of its own (so no user code runs),
inside a fresh :class:`~pytorch_lightning.profilers.PassThroughProfiler` (Lightning's default
profiler, so a user's profiler report gets no entries).

Cost: one hook-call pattern every ``every`` batches (a few microseconds); O(history log
history) per sample. Memory: ``history`` floats.

Example:
    >>> cost = DispatchCost()                                 # doctest: +SKIP
    >>> cost.maybe_sample(trainer); cost.per_batch            # doctest: +SKIP
    1.8e-05
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.profilers import PassThroughProfiler

__all__ = ["DispatchCost", "HOOKS_PER_BATCH"]

#: Callback hooks Lightning calls per training batch under automatic optimization without
#: gradient accumulation (fewer otherwise, so charging this many is conservative).
HOOKS_PER_BATCH = 6


class DispatchCost:
    """Lightning's per-batch cost of calling one callback's hooks (module docstring).

    Args:
        every: batches between two samples.
        history: samples kept; the estimate is their median.
    """

    def __init__(self, every: int = 32, history: int = 16) -> None:
        self._callback = pl.Callback()
        self.every = every
        self._samples = [0.0] * history
        self._n = 0
        self._calls = 0
        self._profiler = PassThroughProfiler()
        self.per_batch = 0.0  # seconds per batch; 0 before the first sample

    def reset(self) -> None:
        """Forget the samples (a new fit); the next :meth:`maybe_sample` samples."""
        self._n = self._calls = 0
        self.per_batch = 0.0

    def maybe_sample(self, trainer: Any) -> None:
        """Time one hook call now if this is the first call or an ``every``-th one."""
        self._calls += 1
        if (self._calls - 1) % self.every:
            return
        cb, args, kwargs = self._callback, (None,), {}
        t0 = time.perf_counter()
        hook = getattr(cb, "on_before_zero_grad")
        if callable(hook):
            with self._profiler.profile(f"[Callback]{cb.state_key}.on_before_zero_grad"):
                hook(trainer, trainer.lightning_module, *args, **kwargs)
        seconds = time.perf_counter() - t0
        self._samples[self._n % len(self._samples)] = seconds
        self._n += 1
        k = min(self._n, len(self._samples))
        self.per_batch = HOOKS_PER_BATCH * statistics.median(self._samples[:k])
