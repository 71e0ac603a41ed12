"""The shared Lightning adapter behind every geometry callback.

:class:`GeometryCallbackBase` owns what all monitors have in common — the probe set, the layer
selection, the :class:`~geomonitor.callbacks.sinks.TrainerSink`, the background worker, error
accounting, the progress bar and checkpoint state — and delegates the measuring itself to a
list of *families* (:mod:`geomonitor.callbacks._families`). Each Lightning hook is a guard
plus one private call.

Guarantees:

* **No observer effect.** Measurements run inside a fork of the CPU/CUDA, numpy and Python
  RNG states; the probe set is read from ``dataloader.dataset`` by index with its own
  generator (the train sampler is never iterated); forward passes are no-grad in eval mode;
  the sharpness estimator restores parameters, gradients and BatchNorm statistics.
* **Never kills training.** An exception inside a measurement (or a logger) is counted in
  ``geometry/errors`` and warned once per family; ``strict=True`` re-raises instead.
* **No thread outlives the Trainer.** The worker is closed (pending work finished and
  logged) at ``on_fit_end``/``teardown`` and cancelled on ``on_exception`` (which Lightning
  also calls on ``KeyboardInterrupt``).
* **Distributed.** Every rank measures the same probe set (drawn by the same seeded indices
  from the full dataset) with its own replica of the module: identical weights give identical
  numbers, no collective is run (so none can deadlock), and only rank zero writes to the
  loggers (Lightning's loggers are rank-zero only). ``callback_metrics`` agree on every rank,
  so ``EarlyStopping``/``ModelCheckpoint`` on a ``geometry/`` metric decide consistently.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from geomonitor.callbacks._dispatch import DispatchCost
from geomonitor.callbacks._families import Context, Measurement, _Family, default_forward
from geomonitor.callbacks.sinks import TrainerSink
from geomonitor.monitor.admission import Admission
from geomonitor.monitor.aftereffect import AfterEffectMeter
from geomonitor.monitor.budget import OverheadBudget
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.layers import LayerSelector, capture_activations
from geomonitor.monitor.probe import ProbeSet
from geomonitor.monitor.worker import BackgroundWorker
from geomonitor.sharpness.isolation import preserved_rng

__all__ = ["GeometryCallbackBase"]

_STATE_VERSION = 1


class GeometryCallbackBase(pl.Callback):
    """Probe set, layers, sink, worker, errors, progress bar and state for a list of families.

    Not used directly: see :class:`~geomonitor.callbacks.GeometryMonitor` and the focused
    monitors, which check their arguments and build the families.
    """

    def __init__(self, families: Sequence[_Family], *, identity: Mapping[str, Any],
                 layers: str | Sequence[str] = "auto", reduce: str = "flatten",
                 probe_size: int = 256, probe_seed: int = 0, probe_data: Any = None,
                 forward_fn: Callable[[Any, Any], Any] | None = None,
                 prog_bar: Sequence[str] = (), strict: bool = False, max_pending: int = 4,
                 max_overhead: float | None = None) -> None:
        super().__init__()
        self._families = list(families)
        self._identity = dict(identity)
        self._state_key: str | None = None
        self._selector = LayerSelector(layers, reduce=reduce)
        self.reduce = reduce
        self.probe_size = probe_size
        self.probe_seed = probe_seed
        self.probe_data = probe_data
        self.forward_fn = forward_fn
        self.prog_bar = list(prog_bar)
        self.strict = strict
        self.max_pending = max_pending
        self.budget = OverheadBudget(max_overhead)
        self._admission = Admission(self.budget)
        self._meter = AfterEffectMeter()
        self._dispatch = DispatchCost()
        self._own = 0.0  # this callback's time on the training thread since the last batch end
        self.errors: dict[str, int] = {}
        self._warned: set[str] = set()
        self._last: dict[str, int] = {}
        self._fresh = False  # a value arrived that the progress bar has not shown yet
        self._latest: dict[str, float] = {}
        self._probe: ProbeSet | None = None
        self._probe_state: dict[str, Any] | None = None
        self._modules: dict[str, torch.nn.Module] = {}
        self._sink: TrainerSink | None = None
        self._worker: BackgroundWorker | None = None

    @property
    def state_key(self) -> str:
        # Lightning reads this on every hook call: built once from the identifying arguments.
        if self._state_key is None:
            self._state_key = self._generate_state_key(**self._identity)
        return self._state_key

    @property
    def probe(self) -> ProbeSet | None:
        """The fixed probe set drawn at fit start (None before, or if no family needs one)."""
        return self._probe

    # -- hooks: a guard and one call --------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._setup(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._worker is not None:
            self._start(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._worker is not None:
            self._step(trainer, pl_module, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._worker is not None:
            self._step(trainer, pl_module, None)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._worker is not None:
            self._finish(wait=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._worker is not None:
            self._finish(wait=True, log=False)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if self._worker is not None:
            self._finish(wait=False, log=False)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Probe-set seed/indices, family states (sharpness warm start), counters.

        Only tensors, numbers, strings and containers: loadable with
        ``torch.load(..., weights_only=True)``.
        """
        probe = self._probe.state_dict() if self._probe is not None else self._probe_state
        return {"version": _STATE_VERSION, "probe": probe,
                "families": {f.name: f.state_dict() for f in self._families},
                "errors": dict(self.errors), "last": dict(self._last)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version")
        if version != _STATE_VERSION:
            raise ValueError(f"state_dict version must be {_STATE_VERSION}, got {version!r}")
        self._probe_state = state_dict.get("probe")
        if self._probe is not None and self._probe_state is not None:
            self._probe.load_state_dict(self._probe_state)
        fam_states = state_dict.get("families", {})
        for fam in self._families:
            if fam.name in fam_states:
                fam.load_state_dict(fam_states[fam.name])
        self.errors = {str(k): int(v) for k, v in state_dict.get("errors", {}).items()}
        self._last = {str(k): int(v) for k, v in state_dict.get("last", {}).items()}

    # -- implementation ---------------------------------------------------------------------
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sink = TrainerSink(trainer)
        for fam in self._families:
            reason = fam.setup(trainer, pl_module)
            fam.enabled = reason is None
            if reason is not None:
                if self.strict:
                    raise ValueError(f"{type(self).__name__}: {fam.name} cannot run: {reason}")
                self._warn_once(fam.name, f"{fam.name} is disabled: {reason}")
        if any(f.enabled and f.needs_activations for f in self._families):
            self._modules = self._selector.resolve(pl_module)
        if self._worker is not None:
            self._worker.close(wait=False)
        self._worker = BackgroundWorker(max_pending=self.max_pending, interrupt=self._close_families)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t0 = time.perf_counter()
        self._draw_probe(trainer, pl_module)
        self._dispatch.reset()
        self.budget.start()
        self._admission.start()
        self._meter.reset()
        self._own = 0.0
        self.budget.charge_bookkeeping(time.perf_counter() - t0)  # the probe set is ours too

    def _draw_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not any(f.enabled and f.needs_probe for f in self._families):
            return
        data = self.probe_data
        if data is None:
            data = _first_loader(trainer.train_dataloader)
        if isinstance(data, DataLoader):
            probe = ProbeSet.from_dataloader(data, self.probe_size, seed=self.probe_seed)
        elif isinstance(data, torch.Tensor):
            probe = ProbeSet.from_tensors(data, size=self.probe_size, seed=self.probe_seed)
        else:
            probe = ProbeSet.from_tensors(*data, size=self.probe_size, seed=self.probe_seed)
        if self._probe_state is not None:
            probe.load_state_dict(self._probe_state)
        self._probe = probe.to(pl_module.device)

    def _step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
              batch_idx: int | None) -> None:
        """After a batch (``batch_idx``) or at the end of an epoch (``None``): measure what
        is due and admitted, log finished background work, and charge the budget for the
        time taken here, for Lightning's calls of this callback's hooks (DispatchCost) and
        for the slowdown a measurement leaves in the batches after it (AfterEffectMeter)."""
        start = time.perf_counter()
        charge, measured = 0.0, 0.0
        if batch_idx is not None:  # one period from this hook to the next batch's
            charge = self._meter.tick(start, self._own, boundary=batch_idx == 0)
            self._dispatch.maybe_sample(trainer)
            charge += self._dispatch.per_batch
        step = trainer.global_step
        epoch = None if batch_idx is not None else trainer.current_epoch
        due = self._admission.select(self._families, step, epoch, last=self._last)
        if due:
            measured = self._measure(trainer, pl_module, due, step)  # charged there
        self._drain()
        if self._fresh and self.prog_bar:
            self._show(trainer)
        own = time.perf_counter() - start
        self.budget.charge_bookkeeping(charge + own - measured)
        self._own = own if batch_idx is not None else self._own + own

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                 due: list[_Family], step: int) -> float:
        """Run the admitted families; returns the seconds charged to them."""
        batch = self._probe.batch if self._probe is not None else None
        forward = self.forward_fn or default_forward

        def capture() -> dict[str, torch.Tensor]:
            return capture_activations(pl_module, self._modules,
                                       lambda: forward(pl_module, batch), reduce=self.reduce)

        ctx = Context(trainer, pl_module, step, batch, capture)
        charged = 0.0
        with preserved_rng([pl_module.device] if pl_module.device.type == "cuda" else []):
            blocked = False
            for i, fam in enumerate(due):
                # the measurements before it were charged: ask again, and if refused, the
                # ones after it wait too
                if blocked or (i and not self.budget.allows(fam.name)):
                    blocked = True
                    self._admission.defer(fam)
                    continue
                self._last[fam.name] = step
                self._meter.disturb()
                ctx.credit = self.budget.remaining()
                t0 = time.perf_counter()
                try:
                    result = fam.run(ctx)
                except Exception as exc:  # noqa: BLE001 - measurement errors never stop training
                    seconds = time.perf_counter() - t0
                    charged += seconds
                    self.budget.charge(fam.name, seconds)
                    self._fail(fam.name, exc, step)
                    continue
                seconds = time.perf_counter() - t0
                charged += seconds
                if isinstance(result, Measurement):
                    self.budget.charge(fam.name, seconds)
                    self._emit(fam.name, step, result)
                elif self._worker.submit(step, _tagged(fam.name, result)):
                    self.budget.charge(fam.name, seconds, pending=True)
                else:
                    self.budget.charge(fam.name, seconds)
                    self._warn_once(f"{fam.name}/dropped", f"{fam.name} measurement at step "
                                    f"{step} dropped: {self.max_pending} still pending")
        return charged

    def _drain(self) -> None:
        done = self._worker.drain()
        if done:
            self._admission.wake()  # a pending family may be admitted again
        for step, result, error in done:
            if error is not None:  # the job wrapper itself failed: which family is unknown
                self.budget.pending.clear()
                self._fail("worker", error, step)
                continue
            name, measurement, exc, seconds = result
            child = measurement.child_cpu if measurement is not None else 0.0
            self.budget.charge(name, seconds + child, background=True)
            if measurement is not None:  # a one-off cost, not the family's
                self.budget.charge_bookkeeping(measurement.child_startup)
            if exc is not None:
                self._fail(name, exc, step)
            else:
                self._emit(name, step, measurement)

    def _emit(self, name: str, step: int, m: Measurement) -> None:
        for exc in m.errors:
            self._fail(name, exc, step)
        try:
            self._sink.log_metrics(m.metrics, step)
            for key, dgms in m.diagrams.items():
                self._sink.log_diagram(key, dgms, step)
            for key, (names, values) in m.profiles.items():
                self._sink.log_profile(key, names, values, step)
        except Exception as exc:  # noqa: BLE001 - a failing logger never stops training
            self._fail("logging", exc, step)
        self._latest.update(m.metrics)
        self._fresh = True

    def _fail(self, kind: str, exc: BaseException, step: int) -> None:
        if self.strict:
            raise exc
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self._warn_once(kind, f"{kind} measurement failed at step {step}: {exc!r}; training "
                        "continues (counted in geometry/errors; strict=True re-raises)")
        with contextlib.suppress(Exception):
            self._sink.log_metrics({metric_key("errors"): float(sum(self.errors.values()))}, step)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"{type(self).__name__}: {message}", RuntimeWarning, stacklevel=3)

    def _show(self, trainer: pl.Trainer) -> None:
        # Into the dict behind ``trainer.progress_bar_metrics``, which Lightning keeps for
        # the whole fit and the progress bar reads: nothing to pay on the steps in between
        # (a value logged with ``pl_module.log(..., on_step=True)`` is processed again by
        # Lightning on every later step of the epoch).
        self._fresh = False
        shown = trainer.progress_bar_metrics
        for name in self.prog_bar:
            value = self._latest.get(f"geometry/{name}")
            if value is not None:
                shown[name] = value

    def _close_families(self) -> None:
        for fam in self._families:
            try:
                fam.close()
            except Exception as exc:  # noqa: BLE001 - closing never stops training
                self._warn_once(f"{fam.name}/close", f"{fam.name} did not close cleanly: {exc!r}")

    def _finish(self, *, wait: bool, log: bool = True) -> None:
        # Pending background work is finished, within what is left of the overhead budget
        # (all of it without a budget); what is left then is cancelled.
        worker, self._worker = self._worker, None
        cancelled = worker.cancelled
        self.budget.charge_bookkeeping(self._meter.flush())
        try:
            credit = self.budget.remaining() if wait else None
            worker.close(wait=wait, timeout=30.0 if credit is None else max(0.0, credit))
        finally:
            self._close_families()
        cancelled = worker.cancelled - cancelled
        if wait and cancelled:
            self._warn_once("cancelled", f"{cancelled} background measurement(s) still pending at "
                            "the end of fit cancelled, to stay within max_overhead")
        starved = self.budget.starved()
        if wait and log and starved:
            self._warn_once("starved", f"no {', '.join(starved)} measurement fitted in "
                            f"max_overhead={self.budget.fraction:g} of this training, which was too "
                            "short for it: raise max_overhead, or set it to None to measure on "
                            "schedule")
        if log:
            self._worker = worker  # _drain reads self._worker
            try:
                self._drain()
            finally:
                self._worker = None


def _tagged(name: str, job: Callable[[], Measurement]) -> Callable[[], tuple]:
    # the job's cost is the CPU time of the thread running it (see OverheadBudget)
    def run() -> tuple[str, Measurement | None, BaseException | None, float]:
        t0 = time.thread_time()
        try:
            return name, job(), None, time.thread_time() - t0
        except Exception as exc:  # noqa: BLE001 - reported on the training thread
            return name, None, exc, time.thread_time() - t0

    return run


def _first_loader(loaders: Any) -> Any:
    """The train dataloader, or the first one of a list/dict of them."""
    if isinstance(loaders, Mapping):
        return next(iter(loaders.values()))
    if isinstance(loaders, (list, tuple)) and loaders and isinstance(loaders[0], DataLoader):
        return loaders[0]
    if loaders is None:
        raise ValueError("the trainer has no train dataloader to draw the probe set from; "
                         "pass probe_data=...")
    return loaders
