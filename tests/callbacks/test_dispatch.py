"""DispatchCost: one timed hook call every ``every`` batches, with a known injected cost."""
from __future__ import annotations

import time

from geomonitor.callbacks._dispatch import HOOKS_PER_BATCH, DispatchCost


class _SlowTrainer:
    """``lightning_module`` takes ``pause`` seconds: every timed hook call includes it."""

    def __init__(self, pause: float) -> None:
        self.pause, self.reads = pause, 0

    @property
    def lightning_module(self):
        self.reads += 1
        time.sleep(self.pause)
        return None


def test_samples_the_first_and_every_nth_batch():
    trainer, cost = _SlowTrainer(0.0), DispatchCost(every=4, history=3)
    for _ in range(13):
        cost.maybe_sample(trainer)
    assert trainer.reads == 4  # batches 1, 5, 9, 13
    cost.reset()
    assert cost.per_batch == 0.0
    cost.maybe_sample(trainer)
    assert trainer.reads == 5


def test_the_estimate_is_hooks_per_batch_times_the_median_sample():
    trainer, cost = _SlowTrainer(0.002), DispatchCost(every=1, history=5)
    for _ in range(3):
        cost.maybe_sample(trainer)
    assert HOOKS_PER_BATCH * 0.002 <= cost.per_batch < HOOKS_PER_BATCH * 0.05
    trainer.pause = 0.0  # three fast samples out of five: the median is a fast one
    for _ in range(3):
        cost.maybe_sample(trainer)
    assert cost.per_batch < HOOKS_PER_BATCH * 0.002


def test_no_callback_code_of_the_user_runs():
    calls = []

    class _Trainer:
        @property
        def lightning_module(self):
            calls.append("module")

    cost = DispatchCost()
    cost.maybe_sample(_Trainer())
    assert calls == ["module"] and 0.0 < cost.per_batch < 1.0
