"""The overhead budget in a real fit: deferred measurements, schedule kept without a budget."""
from __future__ import annotations

import threading
import time
import warnings

import gph  # noqa: F401 - imported here, not inside the first timed measurement
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from geomonitor.callbacks import GeometryMonitor
from geomonitor.topology.ripser_process import ripser_in_process


class _Recorder(Logger):
    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def experiment(self):
        return None

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(4, 16), torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(max_overhead, first_cost=0.0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    mon = GeometryMonitor(layers=["fc1"], probe_size=32, sharpness_every_n_steps=1,
                          id_every_n_steps=None, topology_every_n_epochs=None,
                          np_every_n_epochs=None, prog_bar=None, strict=True,
                          max_overhead=max_overhead)
    mon.budget.first_cost = first_cost  # 0: a first measurement needs no more than credit >= 0
    rec = _Recorder()
    torch.manual_seed(0)
    trainer = pl.Trainer(max_steps=40, logger=rec, callbacks=[mon], accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.fit(_Net(), torch.utils.data.DataLoader(data, batch_size=4))
    steps = [s for s, m in rec.rows if "geometry/sharpness" in m]
    return mon, steps


def test_without_a_budget_every_scheduled_step_is_measured():
    mon, steps = _fit(None)
    assert steps == list(range(1, 41)) and mon.budget.deferred == {}


def test_a_tight_budget_defers_measurements_and_never_measures_off_step():
    mon, steps = _fit(0.2)
    assert 0 < len(steps) < 40 and mon.budget.deferred["sharpness"] > 0
    assert steps == sorted(set(steps)) and all(1 <= s <= 40 for s in steps)


def test_drawing_the_probe_set_is_charged_before_any_measurement():
    mon, steps = _fit(1e-4)  # 40 steps earn ~10 us of credit: less than drawing the probe set
    assert steps == [] and mon.budget.spent > 0
    assert mon.budget.deferred["sharpness"] >= 40  # asked (and refused) at every step


def test_a_training_too_short_for_a_first_measurement_measures_nothing_and_says_so():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon, steps = _fit(0.05, first_cost=0.02)  # 40 steps of ~1 ms earn ~2 ms of credit
    assert steps == [] and mon.budget.starved() == ["sharpness"]
    assert [str(w.message) for w in caught if "fitted in" in str(w.message)] == [
        "GeometryMonitor: no sharpness measurement fitted in max_overhead=0.05 of this "
        "training, which was too short for it: raise max_overhead, or set it to None to "
        "measure on schedule"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon, steps = _fit(None)
    assert steps and not [w for w in caught if "fitted in" in str(w.message)]


def test_bad_max_overhead_is_rejected_at_construction():
    with pytest.raises(ValueError, match=r"max_overhead must be a number in \(0, 1\] or None, got 2"):
        GeometryMonitor(max_overhead=2)


class _SlowRipser:
    """Stands in for the giotto-ph child process: blocks ``delay`` seconds per call (as the
    worker does while the child computes; recorded in ``waited``), then computes in this
    process; ``close`` ends a waiting call at once, as killing the child does."""

    def __init__(self, delay: float, cpu: float = 0.0, startup: float = 0.0) -> None:
        self.delay, self.waited, self.calls = delay, 0.0, 0
        self.cpu, self.cpu_time = cpu, 0.0  # CPU seconds the "child" reports per call
        self.startup_estimate, self.startup_cpu, self.running = 0.0, 0.0, False
        self.startup = startup  # reported with the first answer, as the child does
        self._stop = threading.Event()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._stop.clear()
        self.running = True

    def close(self) -> None:
        self._stop.set()

    def __call__(self, D, maxdim):
        t0 = time.perf_counter()
        stopped = self._stop.wait(self.delay)
        self.waited += time.perf_counter() - t0
        if stopped:
            raise RuntimeError("closed")
        self.calls += 1
        self.cpu_time += self.cpu
        self.startup_cpu, self.startup = self.startup_cpu + self.startup, 0.0
        return ripser_in_process(D, maxdim)


def _topology_fit(max_overhead, delay, max_steps=20, cpu=0.0, startup=0.0):
    # first_cost 0 throughout: these fits are far too short to earn the default 20 ms
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    mon = GeometryMonitor(layers=["fc1"], probe_size=32, topology_every_n_steps=1,
                          topology_every_n_epochs=None, id_every_n_steps=None,
                          sharpness_every_n_steps=None, np_every_n_epochs=None, prog_bar=None,
                          log_diagrams=False, max_overhead=max_overhead)
    mon.budget.first_cost = 0.0
    fam = next(f for f in mon._families if f.name == "topology")
    if delay is not None:  # else the real child process
        fam._ripser = _SlowRipser(delay, cpu, startup)
    rec = _Recorder()
    trainer = pl.Trainer(max_steps=max_steps, logger=rec, callbacks=[mon], accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_Net(), torch.utils.data.DataLoader(data, batch_size=4))
    wall = time.perf_counter() - t0
    steps = [s for s, m in rec.rows if "geometry/ph/fc1/h1_n_bars" in m]
    return mon, fam._ripser, steps, [str(w.message) for w in caught], wall


def test_under_a_budget_a_family_waits_for_its_pending_background_job():
    mon, ripser, steps, messages, _ = _topology_fit(1.0, delay=0.02, max_steps=80)
    # without the wait for the pending job, 80 due measurements would overflow the 4-slot queue ("dropped")
    assert not [m for m in messages if "dropped" in m]
    assert 2 <= len(steps) < 80 and steps == sorted(set(steps)) and ripser.calls == len(steps)


def test_waiting_on_the_child_is_not_charged_but_its_cpu_time_is():
    mon, ripser, steps, _, _ = _topology_fit(None, delay=0.2, max_steps=3)
    assert steps == [1, 2, 3] and ripser.waited >= 0.6
    assert mon.budget.spent < 0.2  # the three 0.2 s waits are not in it
    mon, ripser, steps, _, _ = _topology_fit(None, delay=0.0, max_steps=3, cpu=0.25)
    assert steps == [1, 2, 3] and mon.budget.spent >= 0.75 and mon.budget.cost["topology"] >= 0.25


def test_at_the_end_of_fit_pending_work_is_cancelled_within_the_budget():
    mon, ripser, steps, messages, wall = _topology_fit(1.0, delay=30.0, max_steps=4)
    assert steps == [] and ripser.calls == 0 and wall < 10.0  # did not wait the 30 s
    assert any("background measurement(s) still pending at the end of fit cancelled, to stay "
               "within max_overhead" in m for m in messages)


def test_without_a_budget_pending_work_is_finished_and_logged():
    mon, ripser, steps, messages, _ = _topology_fit(None, delay=0.3, max_steps=2)
    assert steps == [1, 2] and not [m for m in messages if "cancelled" in m]


def test_per_step_bookkeeping_is_charged_even_when_nothing_is_measured():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    never = 10 ** 6
    mon = GeometryMonitor(layers=["fc1"], probe_size=32, id_every_n_steps=never,
                          sharpness_every_n_steps=never, topology_every_n_epochs=never,
                          np_every_n_epochs=never, prog_bar=None, max_overhead=0.05)
    trainer = pl.Trainer(max_steps=30, logger=False, callbacks=[mon], accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.fit(_Net(), torch.utils.data.DataLoader(data, batch_size=4))
    assert mon.budget.cost == {} and 0.0 < mon.budget.spent < 0.5
    # Lightning's calls of the callback's hooks are charged on every batch
    assert mon._dispatch.per_batch > 0.0 and mon.budget.spent > 30 * mon._dispatch.per_batch


class _SlowAfter(_Net):
    """Sleeps in the next ``slow_left`` training steps: a stand-in for the slower steps after a
    measurement (evicted caches), ``pause`` seconds each."""

    slow_left, pause = 0, 0.005

    def training_step(self, batch, batch_idx):
        if self.slow_left:
            self.slow_left -= 1
            time.sleep(self.pause)
        return super().training_step(batch, batch_idx)


def _after_effect_fit(slow_steps):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    mon = GeometryMonitor(layers=["fc1"], probe_size=32, id_every_n_steps=None,
                          sharpness_every_n_steps=None, topology_every_n_epochs=None,
                          np_every_n_steps=20, np_every_n_epochs=None, prog_bar=None,
                          max_overhead=None)
    fam = mon._families[0]
    run = fam.run

    def slowing(ctx):
        ctx.pl_module.slow_left = slow_steps
        return run(ctx)

    fam.run = slowing
    trainer = pl.Trainer(max_steps=60, logger=False, callbacks=[mon], accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.fit(_SlowAfter(), torch.utils.data.DataLoader(data, batch_size=4))
    return mon


def test_steps_slowed_after_a_measurement_are_charged_to_the_budget():
    # measurements at steps 20, 40 and 60; each of the first two slows the next 3 steps by
    # 5 ms (the steps after 60 never run): 30 ms more than the same fit without the slowdown
    slow, control = _after_effect_fit(3), _after_effect_fit(0)
    assert 0.015 < slow._meter.charged - control._meter.charged < 0.1
    assert slow.budget.spent > slow._meter.charged


def test_the_childs_start_up_is_charged_once_and_not_as_the_familys_cost():
    mon, ripser, steps, _, _ = _topology_fit(None, delay=0.0, max_steps=3, startup=0.5)
    assert steps == [1, 2, 3] and ripser.startup_cpu == 0.5
    assert mon.budget.spent >= 0.5 and mon.budget.cost["topology"] < 0.5


def test_a_budget_that_cannot_pay_the_childs_start_up_computes_here_without_a_child():
    mon, _, steps, _, _ = _topology_fit(0.5, delay=None, max_steps=10)
    fam = next(f for f in mon._families if f.name == "topology")
    # a credit of milliseconds never covers the child's ~1 s start-up: measured and logged at
    # once, on the training thread
    assert steps and mon.budget.pending == set()
    assert fam._ripser.launches == 0 and fam._ripser.cpu_time == 0.0
