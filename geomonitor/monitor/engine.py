"""``Monitor``: the framework-free monitor engine, for any training loop.

One object decides what is measured when, runs it on the fixed probe set, finishes
background work and hands the values to a sink. Adapters (Lightning, Hugging Face) are a
guard and one call per hook around it; a plain PyTorch or Fabric loop calls it directly::

    monitor = Monitor(model, probe=(X, y), sink=wandb.log, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    for step, (x, y) in enumerate(loader, 1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        monitor.step(step, optimizer=opt)
    monitor.close()

What happens at ``step(s)``: the families whose schedule is due at ``s`` (or at this epoch's
end with ``epoch_end=True``) are asked of the :class:`~geomonitor.monitor.cost.CostCap`
(rank 0's answer broadcast under ``torch.distributed``); admitted ones run inside a fork of
every RNG (the training run's random streams are untouched) on a :class:`Context` that
captures the selected layers' activations once; results computed in the background are
collected; then each step's values go to the sink once, with ``geometry/errors`` (failed
measurements so far), ``geometry/skipped/<family>`` (occurrences the cap skipped) and
``geometry/dropped/<family>`` (background jobs dropped because ``max_pending`` were in
flight) when they changed. ``step`` returns the values delivered by that call.

Guarantees: a measurement that raises is counted and warned once per family, and training
continues (``strict=True`` re-raises); a sink that raises is warned once; ``close()``
finishes pending work (``wait=True``) for at most one measurement's cost, or cancels it
(cancelled jobs are counted in ``geometry/dropped/<family>``), and no thread or process
outlives it (but a sink thread inside a hung call, which ends when the call returns). A sink
call is awaited at most ``sink_timeout`` seconds (:mod:`geomonitor.monitor.delivery`); under
``torch.distributed`` every rank delivers rank 0's values and counts every rank's failures
(:mod:`geomonitor.monitor.ranks`); background jobs in flight at a ``state_dict`` are counted
as dropped by the run that resumes from it.

Early stopping: ``stopping=NeuralPersistenceStopping(...)`` (or a list of them) is fed every
delivered ``geometry/neural_persistence/mean`` (:mod:`geomonitor.monitor.early_stopping`);
read ``monitor.should_stop`` after ``step`` and leave the loop when it is ``True``.

Cost between due steps: a few comparisons per family.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from geomonitor.monitor.cost import PAUSED, CostCap, run_length
from geomonitor.monitor.delivery import SinkCaller
from geomonitor.monitor.early_stopping import NeuralPersistenceStopping
from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.layers import LayerSelector, capture_activations
from geomonitor.monitor.model_io import (default_forward, make_probe, model_device,
                                         torch_broadcast, unwrap_model)
from geomonitor.monitor.periods import Periods
from geomonitor.monitor.probe import ProbeSet, size_warning
from geomonitor.monitor.ranks import agree, world_size
from geomonitor.monitor.sink import as_sink
from geomonitor.monitor.summary import format_summary, period_text, summarize
from geomonitor.monitor.worker import BackgroundWorker
from geomonitor.sharpness.isolation import preserved_rng

__all__ = ["Monitor", "MonitorWarning", "default_forward", "make_probe"]

_STATE_VERSION = 2


class MonitorWarning(RuntimeWarning):
    """A measurement failed, a family was disabled, or the state from a checkpoint differs."""


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class Monitor:
    """Measure the geometry of ``model`` on a schedule; see the module docstring.

    Args:
        model: the network (DDP, DataParallel and Fabric wrappers are unwrapped: measurements
            use the module inside, whose layer names are the user's).
        probe: the probe data: a DataLoader (``probe_size`` samples drawn by index with a
            seeded generator), a tensor or tuple of tensors, a :class:`ProbeSet`, or a
            zero-argument callable returning one of these (called at the first step).
        sink: where values go (:func:`geomonitor.monitor.sink.as_sink`: ``wandb.log``, any
            ``fn(metrics, step)``, a logger-like object, a list of them, or ``None``).
        families: the :class:`Family` objects to run; by default
            ``build_families(**family_options)`` (intrinsic dimension, sharpness, topology,
            neural persistence on their default schedules).
        layers: ``"auto"``, a module-name glob or a list of globs (activations).
        reduce: how a layer output becomes (N, features) (see :mod:`geomonitor.monitor.layers`).
        probe_size, probe_seed: size and seed of the probe draw.
        forward_fn: ``forward_fn(model, batch)`` for activations (default :func:`default_forward`).
        loss_fn: ``loss_fn(model, batch) -> scalar`` (training loss; families that need it,
            such as sharpness, are disabled with a warning without it).
        max_overhead: the cost cap's share of training time (``None``: no cap).
        strict: re-raise measurement and sink errors instead of counting them.
        max_pending: background jobs in flight before new ones are dropped (and counted).
        clock: wall clock for the cost cap (default ``time.perf_counter``); ``cpu_clock``:
            the background thread's CPU clock (default ``time.thread_time``).
        broadcast: ``broadcast(obj) -> rank 0's obj``, for the cap's decisions and plan; by
            default ``torch.distributed.broadcast_object_list`` when a process group is
            initialised.
        total_steps: the run's length in optimizer steps, or a zero-argument callable giving
            it at the first step (``None``, ``inf`` or a non-positive value: unknown); the cap
            then spreads the whole run's budget (:mod:`geomonitor.monitor.cost`).
        verbose: print the periods in force when the plan changes them, and the summary at
            ``close`` (rank 0 only).
        stopping: a :class:`~geomonitor.monitor.early_stopping.NeuralPersistenceStopping` or a
            list of them, fed the neural persistence this monitor delivers (the
            ``neural_persistence`` family must run); see :attr:`should_stop`.
        **family_options: passed to :func:`geomonitor.monitor.families.build_families`
            (``id_every_n_steps=50``, ``topology_every_n_epochs=None``, ...).

    Raises:
        ValueError: bad arguments, or a layer pattern that matches no module.
    """

    def __init__(self, model: nn.Module, probe: Any = None, sink: Any = None, *,
                 families: Sequence[Family] | None = None, layers: str | Sequence[str] = "auto",
                 reduce: str = "auto", probe_size: int | None = 256, probe_seed: int = 0,
                 forward_fn: Callable[[nn.Module, Any], Any] | None = None,
                 loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
                 max_overhead: float | None = 0.05, strict: bool = False, max_pending: int = 4,
                 clock: Callable[[], float] | None = None,
                 cpu_clock: Callable[[], float] | None = None,
                 broadcast: Callable[[Any], Any] | None = None,
                 total_steps: int | Callable[[], Any] | None = None,
                 verbose: bool = True,
                 stopping: NeuralPersistenceStopping | Sequence[NeuralPersistenceStopping] | None = None,
                 **family_options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if families is None:
            from geomonitor.monitor.families import build_families

            families = build_families(seed=probe_seed, **family_options)
        elif family_options:
            raise ValueError(f"family options {sorted(family_options)} apply to the default "
                             "families only; configure the families you pass instead")
        families = list(families)
        if not families or not all(isinstance(f, Family) for f in families):
            raise ValueError(f"families must be a non-empty list of Family objects, got {families!r}")
        for name, fn in (("forward_fn", forward_fn), ("loss_fn", loss_fn), ("cpu_clock", cpu_clock),
                         ("broadcast", broadcast)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name} must be callable or None, got {fn!r}")
        if not isinstance(strict, bool):
            raise ValueError(f"strict must be True or False, got {strict!r}")
        if not isinstance(verbose, bool):
            raise ValueError(f"verbose must be True or False, got {verbose!r}")
        if total_steps is not None and not callable(total_steps):
            run_length(total_steps)  # a bad value raises now
        self.model = unwrap_model(model)
        self.families = families
        self.sink = as_sink(sink)
        self._sinks = SinkCaller(self.sink, self.sink_timeout)
        self.forward_fn = forward_fn or default_forward
        self.loss_fn = loss_fn
        self.probe_size, self.probe_seed = probe_size, probe_seed
        self.strict, self.verbose = strict, verbose
        self.cap = CostCap(max_overhead, clock)
        self._total_steps = total_steps
        self.periods = Periods({f.name: f.schedule for f in families})
        self._cpu_clock = cpu_clock or time.thread_time
        self._broadcast = broadcast or torch_broadcast
        self._selector = LayerSelector(layers, reduce=reduce)
        self._config = {"layers": layers if isinstance(layers, str) else list(layers),
                        "reduce": reduce, "probe_size": probe_size, "probe_seed": probe_seed}
        self.errors: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.measured: dict[str, int] = {}
        self.latest: dict[str, float] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self._last: dict[str, int] = {}
        self._epoch = 0
        self._warned: set[str] = set()
        self._outbox: dict[int, dict[str, float]] = {}
        self._other_states: dict[str, Any] = {}  # checkpointed families not running now
        self._inflight: list[tuple[int, str]] = []  # background jobs submitted, not yet drained
        self._errors_base: dict[str, int] = {}  # errors at the last agreement (under DDP)
        self._probe_source = probe
        self._probe: ProbeSet | None = None
        self._probe_state: dict[str, Any] | None = None
        self._started = False
        self._closed = False
        self._setup_families()
        self.stopping = self._check_stopping(stopping)
        self._worker = BackgroundWorker(max_pending=max_pending, interrupt=self._close_families)

    # -- public -----------------------------------------------------------------------------
    @property
    def probe(self) -> ProbeSet | None:
        """The probe set (drawn at the first step; ``None`` before, or when no family needs one)."""
        return self._probe

    @property
    def modules(self) -> dict[str, nn.Module]:
        """The selected layers, name -> module."""
        return dict(self._modules)

    @property
    def should_stop(self) -> bool:
        """Whether a ``stopping`` rule has decided to stop (read after :meth:`step`)."""
        return any(rule.should_stop for rule in self.stopping)

    def step(self, step: int, *, loss: Any = None, optimizer: torch.optim.Optimizer | None = None,
             epoch_end: bool = False, epoch: int | None = None) -> dict[str, float]:
        """Call after each optimizer step (``step`` = optimizer steps taken so far, from 1), and
        with ``epoch_end=True`` at the end of each epoch (``epoch``: 0-based, counted by the
        monitor when omitted). ``loss`` is accepted for loops that pass it and not used by the
        families. Returns the values delivered to the sink by this call."""
        if self._closed:
            raise RuntimeError("Monitor.step after close()")
        if optimizer is not None:
            self.optimizer = optimizer
        if not self._started:
            self._start(step)
        self.cap.tick(step)
        if epoch_end:
            epoch = self._epoch if epoch is None else int(epoch)
            self._epoch = epoch + 1
            self.periods.epoch_end(step, epoch)
        due = [f for f in self.families if f.enabled and self._last.get(f.name) != step
               and (f.schedule.due_epoch(epoch) if epoch_end else f.schedule.due_step(step))]
        ran = bool(due) and self._measure(due, step, epoch if epoch_end else None)
        self._drain()
        if ran and self.cap.fraction is not None:
            self._replan(step)
        if world_size() > 1:  # every rank delivers the same values, at the asked steps
            if not due:
                return {}
            self._agree(step)
        return self._deliver()

    #: seconds ``close(wait=True)`` may always wait (a first measurement has no cost yet)
    close_wait_floor = 10.0
    #: seconds the training thread waits for one sink call (:mod:`geomonitor.monitor.delivery`)
    sink_timeout = 10.0

    def close(self, wait: bool = True) -> dict[str, float]:
        """Finish (``wait=True``) or cancel pending background work, deliver what finished,
        stop child processes. Idempotent. Returns the values delivered.

        Nothing waits on starved work. With ``wait=True`` every family is first asked to
        :meth:`~Family.prioritize` its jobs (the topology child leaves nice 19), then the
        pending jobs get at most one measurement's cost in all: the largest cost in
        ``cap.cost`` (a family's last measured seconds), at least :attr:`close_wait_floor`.
        Jobs still pending then are cancelled (the running one is stopped by closing the
        families), counted in ``dropped[family]`` and delivered as
        ``geometry/dropped/<family>`` at the step they describe. ``wait=False`` cancels
        them at once (counted the same way, not delivered)."""
        if self._closed:
            return {}
        self._closed = True
        self.cap.stop()
        cancelled: list[tuple[int, str]] = []
        try:
            if wait:
                for fam in self.families:
                    with contextlib.suppress(Exception):
                        fam.prioritize()
            bound = max([self.close_wait_floor, *self.cap.cost.values()])
            cancelled = self._worker.close(wait=wait, timeout=bound)
        finally:
            self._close_families()
        for step, name in cancelled:
            self._count_drop(name, step)
        delivered: dict[str, float] = {}
        if wait:
            self._drain()
            if world_size() > 1:
                self._agree(max([*self._outbox, *self._last.values(), 0]))
            delivered = self._deliver()
        self._call_sink("flush")
        self._sinks.close(self.sink_timeout)
        self._count_sink_errors(self._sinks.late_errors())
        if self.verbose and _rank() == 0 and self._started:
            print(format_summary(self.summary()))
        return delivered

    def summary(self) -> dict[str, Any]:
        """Per family: points measured, skipped, dropped, errors, the last cost in training
        steps, the asked period and the one in force (steps); and the run's totals."""
        return summarize(self)

    def state_dict(self) -> dict[str, Any]:
        """Probe set, family states, counters, costs (``torch.load(weights_only=True)``-safe)."""
        probe = self._probe.state_dict() if self._probe is not None else self._probe_state
        return {"version": _STATE_VERSION, "config": dict(self._config), "probe": probe,
                "families": {**self._other_states, **{f.name: f.state_dict() for f in self.families}},
                "errors": dict(self.errors), "skipped": dict(self.skipped),
                "dropped": dict(self.dropped), "measured": dict(self.measured),
                "last": dict(self._last), "epoch": self._epoch,
                "pending": [[s, n] for s, n in self._inflight],
                "cost": self.cap.state_dict(), "periods": self.periods.state_dict(),
                "stopping": [rule.state_dict() for rule in self.stopping]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The arguments this monitor was built with win: a
        changed probe size or seed draws a new probe set, and one :class:`MonitorWarning`
        names every difference."""
        self.check_state(state)
        old = state.get("config", {})
        differ = [f"{k}={v!r} (checkpoint: {old[k]!r})" for k, v in self._config.items()
                  if k in old and old[k] != v]
        if differ:
            warnings.warn(f"Monitor resumed with {', '.join(differ)}: the arguments apply"
                          + ("; a new probe set is drawn" if {"probe_size", "probe_seed"} & {
                              d.split("=")[0] for d in differ} else ""),
                          MonitorWarning, stacklevel=2)
        redraw = any(old.get(k) != self._config[k] for k in ("probe_size", "probe_seed") if k in old)
        self._probe_state = None if redraw else state.get("probe")
        if self._probe is not None and self._probe_state is not None:
            self._load_probe(self._probe)
        self._load_families(dict(state.get("families", {})))
        self.periods.load_state_dict(state.get("periods", {}))
        for name in ("errors", "skipped", "dropped", "measured", "last"):
            setattr(self, name if name != "last" else "_last",
                    {str(k): int(v) for k, v in state.get(name, {}).items()})
        self._epoch = int(state.get("epoch", 0))
        saved_rules = list(state.get("stopping", []))
        if saved_rules and len(saved_rules) != len(self.stopping):
            raise ValueError(f"the checkpoint holds {len(saved_rules)} stopping rule(s), this "
                             f"monitor has {len(self.stopping)}")
        for rule, saved in zip(self.stopping, saved_rules):
            rule.load_state_dict(saved)
        self._errors_base = dict(self.errors)
        for step, name in state.get("pending", []):  # in flight at the save: lost, counted
            self._count_drop(str(name), int(step))
        if "cost" in state:
            self.cap.load_state_dict(state["cost"])
            self.cap.start()  # training resumes now: its time until the next step counts

    def _load_families(self, saved: dict[str, Any]) -> None:
        # each family resumes from its own entry, whatever the others did: one turned on now
        # starts fresh, one turned off keeps its entry (written back by state_dict) for later
        names = [f.name for f in self.families]
        for fam in self.families:
            if fam.name in saved:
                fam.load_state_dict(saved[fam.name])
        self._other_states = {k: v for k, v in saved.items() if k not in names}
        fresh = [n for n in names if n not in saved]
        if saved and (fresh or self._other_states):
            warnings.warn("Monitor resumed with other families than the checkpoint's: "
                          + "; ".join(filter(None, [
                              fresh and f"{', '.join(fresh)} start fresh (no state in the checkpoint)",
                              self._other_states and f"{', '.join(sorted(self._other_states))} "
                              "not running now (their state is kept in this monitor's state_dict)"]))
                          + "; every other family resumes", MonitorWarning, stacklevel=3)

    @staticmethod
    def check_state(state: Any) -> None:
        """``ValueError`` unless ``state`` is a mapping of this version of :meth:`state_dict`."""
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"state_dict version must be {_STATE_VERSION}, got {got!r}")

    # -- set-up -----------------------------------------------------------------------------
    def _setup_families(self) -> None:
        for fam in self.families:
            reason = fam.setup(self.model)
            if reason is None and fam.needs_loss and self.loss_fn is None:
                reason = "it needs the training loss: pass loss_fn=callable(model, batch)"
            if reason is None and fam.needs_probe and self._probe_source is None:
                reason = "it needs probe data: pass probe=(inputs, targets) or a DataLoader"
            self._disable(fam, reason)
        self._modules: dict[str, nn.Module] = {}
        if any(f.enabled and f.needs_activations for f in self.families):
            try:
                self._modules = self._selector.resolve(self.model)
                if _rank() == 0:
                    print(f"geomonitor: {self._selector.describe(self._modules)}")
            except ValueError as exc:
                if self.strict or self._config["layers"] != "auto":
                    raise
                for fam in self.families:
                    if fam.needs_activations:
                        self._disable(fam, f"no layer to capture: {exc}")

    def _check_stopping(self, stopping: Any) -> list[NeuralPersistenceStopping]:
        rules = [] if stopping is None else (
            [stopping] if isinstance(stopping, NeuralPersistenceStopping) else list(stopping))
        if not all(isinstance(r, NeuralPersistenceStopping) for r in rules):
            raise ValueError("stopping must be a NeuralPersistenceStopping, a list of them or "
                             f"None, got {stopping!r}")
        if rules and not any(f.enabled and f.name == "neural_persistence" for f in self.families):
            raise ValueError("stopping needs the neural_persistence family running (e.g. "
                             "np_every_n_epochs=1); it is absent or disabled")
        return rules

    def _disable(self, fam: Family, reason: str | None) -> None:
        fam.enabled = reason is None
        if reason is not None:
            if self.strict:
                raise ValueError(f"Monitor: {fam.name} cannot run: {reason}")
            self._warn_once(fam.name, f"{fam.name} is disabled: {reason}")

    def _start(self, step: int) -> None:
        self._started = True
        total = self._total_steps() if callable(self._total_steps) else self._total_steps
        self.cap.horizon = run_length(total, strict=not callable(self._total_steps))
        if any(f.enabled and f.needs_probe for f in self.families):
            device = model_device(self.model)
            # reading the data (random transforms, a stream) must not move the run's RNG streams
            try:
                with preserved_rng([device] if device.type == "cuda" else []):
                    self._draw_probe()
            except (ValueError, TypeError) as exc:  # e.g. a one-shot stream: pass probe=...
                if self.strict:
                    raise
                for fam in self.families:
                    if fam.needs_probe:
                        self._disable(fam, f"no probe set could be drawn: {exc}")
        if not self.cap.started:  # a resume started it at load_state_dict
            self.cap.start(step)

    def _draw_probe(self) -> None:
        source = self._probe_source
        if callable(source) and not hasattr(source, "dataset"):
            source = source()
        probe = make_probe(source, self.probe_size, self.probe_seed)
        note = size_warning(len(probe), [f.name for f in self.families if f.enabled and f.needs_probe
                                         and getattr(f, "probe_size", None) is None])
        if note:  # families reading the whole probe set: its size is their cost
            self._warn_once("probe/size", note)
        if self._probe_state is not None:
            self._load_probe(probe)
        self._probe = probe.to(model_device(self.model))

    def _load_probe(self, probe: ProbeSet) -> None:
        try:
            probe.load_state_dict(self._probe_state)
        except ValueError as exc:
            warnings.warn(f"Monitor: the probe set in the checkpoint does not fit this data ({exc}); "
                          "a new probe set is drawn", MonitorWarning, stacklevel=3)
        self._probe_state = None

    # -- measuring --------------------------------------------------------------------------
    def _measure(self, due: list[Family], step: int, epoch: int | None) -> bool:
        # returns whether something ran (the same on every rank: the plan is redone after it);
        # due on the asked schedule (every rank reaches these steps together): "off" when the
        # plan's period skips the step, else "run" or "skip" by the guard, asked in turn (each
        # one sees what the ones admitted before it will spend)
        due = sorted(due, key=lambda f: not f.hooks_shared_forward)  # one shared forward
        states, planned = [], 0.0
        for f in due:
            if not self.periods.due(f.name, step, epoch):
                states.append("off")
            elif self.cap.allows(f.name, planned):
                states.append("run")
                planned += self.cap.cost.get(f.name, 0.0)
            else:
                states.append("skip")
        if self.cap.fraction is not None:  # rank 0 decides for every rank
            states = list(self._broadcast(states))
        kept = []  # what runs, and the first skip of each point (counted once)
        for f, state in zip(due, states):
            if state != "off" and (self.periods.mark(f.name, step, epoch, ran=state == "run")
                                   or state == "run"):
                kept.append((f, state == "run"))
        due, allowed = [f for f, _ in kept], [ok for _, ok in kept]
        batch = self._probe.batch if self._probe is not None else None
        model, forward = self.model, self.forward_fn

        def capture() -> dict[str, torch.Tensor]:
            return capture_activations(model, self._modules, lambda: forward(model, batch),
                                       reduce=self._config["reduce"], warned=self._selector.warned)

        ctx = Context(model, step, batch, capture, optimizer=self.optimizer,
                      loss_fn=self.loss_fn, forward=forward)
        device = model_device(model)
        with preserved_rng([device] if device.type == "cuda" else []):
            for fam, ok in zip(due, allowed):
                self._last[fam.name] = step  # asked: not asked again at this step
                if not ok:
                    self.skipped[fam.name] = self.skipped.get(fam.name, 0) + 1
                    self._put(step, {metric_key("skipped", fam.name): float(self.skipped[fam.name])})
                    continue
                t0 = self.cap.clock()
                try:
                    result = fam.run(ctx)
                except Exception as exc:  # noqa: BLE001 - a measurement never stops training
                    self._fail(fam.name, exc, step)
                else:
                    if isinstance(result, Measurement):
                        self._emit(fam.name, step, result)
                    elif self._worker.submit(step, _timed(fam.name, result, self._cpu_clock), fam.name):
                        self._inflight.append((step, fam.name))
                    else:
                        self._count_drop(fam.name, step)
                        self._warn_once(f"{fam.name}/dropped", f"{fam.name} measurement at step "
                                        f"{step} dropped: {self._worker.max_pending} still pending")
                self.cap.charge(fam.name, self.cap.clock() - t0)
        return any(allowed)

    def _drain(self) -> None:
        for step, result, error in self._worker.drain():
            done = next((j for j in self._inflight if j[0] == step
                         and (error is not None or j[1] == result[0])), None)
            if done is not None:
                self._inflight.remove(done)
            if error is not None:  # the job wrapper itself failed
                self._fail("worker", error, step)
                continue
            name, measurement, exc, cpu = result
            background = measurement.background_cpu if measurement is not None else 0.0
            self.cap.charge_background(name, cpu + background)
            if exc is not None:
                self._fail(name, exc, step)
            else:
                self._emit(name, step, measurement)

    def _replan(self, step: int) -> None:
        # rank 0 plans; every rank is here at the same step (after a measurement that rank 0
        # admitted for all), so its plan is broadcast and holds everywhere
        stretch = self.periods.multiples(self.cap.plan(self.periods.asked_all())) if _rank() == 0 else {}
        self._adopt(step, self.periods.adopt(self._broadcast(stretch)))

    def _adopt(self, step: int, changed: dict[str, int]) -> None:
        if not changed:
            return
        self._put(step, {metric_key("period", n): float(p if p < PAUSED else 0)
                         for n, p in changed.items()})
        if self.verbose and _rank() == 0:
            print(f"geomonitor: at step {step}, to keep within max_overhead={self.cap.fraction}: "
                  + ", ".join(f"{n} every {period_text(p)} (asked {self.periods.asked(n)})"
                              for n, p in changed.items()))

    def _emit(self, name: str, step: int, m: Measurement) -> None:
        self.measured[name] = self.measured.get(name, 0) + 1
        for exc in m.errors:
            self._fail(name, exc, step)
        self._put(step, m.metrics)
        for method, items in (("log_diagram", m.diagrams), ("log_profile", m.profiles),
                              ("log_spectrum", m.spectra)):
            for key, value in items.items():
                args = (key, value, step) if method == "log_diagram" else (key, *value, step)
                self._call_sink(method, *args)

    def _agree(self, step: int) -> None:
        # rank 0's values and the failures of every rank (geomonitor.monitor.ranks)
        before = sum(self._errors_base.values())
        new = {k: n - self._errors_base.get(k, 0) for k, n in self.errors.items()}
        self._outbox, added = agree(self._outbox, {k: n for k, n in new.items() if n})
        self.errors = {k: self._errors_base.get(k, 0) + added.get(k, 0)
                       for k in {*self._errors_base, *added}}
        self._errors_base = dict(self.errors)
        if sum(self.errors.values()) != before:
            self._put(step, {metric_key("errors"): float(sum(self.errors.values()))})

    def _count_drop(self, name: str, step: int) -> None:
        if (step, name) in self._inflight:
            self._inflight.remove((step, name))
        self.dropped[name] = self.dropped.get(name, 0) + 1
        self._put(step, {metric_key("dropped", name): float(self.dropped[name])})

    def _put(self, step: int, metrics: Mapping[str, float]) -> None:
        self._outbox.setdefault(step, {}).update({k: float(v) for k, v in metrics.items()})

    def _deliver(self) -> dict[str, float]:
        delivered: dict[str, float] = {}
        for step in sorted(self._outbox):
            metrics = self._outbox.pop(step)
            self._call_sink("log_metrics", metrics, step)
            for rule in self.stopping:
                rule.observe(step, metrics)
            self.latest.update(metrics)
            delivered.update(metrics)
        return delivered

    def _call_sink(self, method: str, *args: Any) -> None:
        # on the sink's own thread, awaited at most sink_timeout: a hung logger never stalls
        self._sinks.timeout = self.sink_timeout
        failed = self._sinks.late_errors()
        try:
            outcome = self._sinks.call(method, *args)
        except Exception as exc:  # noqa: BLE001 - a failing logger never stops training
            failed.append((method, exc))
            outcome = None
        self._count_sink_errors(failed)
        if outcome == "dropped":  # a value lost: counted like a failed call
            self.errors["sink"] = self.errors.get("sink", 0) + 1
        if outcome in ("timeout", "dropped"):
            if self.strict:
                raise TimeoutError(f"the sink did not return from {method} within "
                                   f"{self.sink_timeout} s")
            self._warn_once("sink/timeout", f"the sink did not return from {method} within "
                            f"{self.sink_timeout} s (Monitor.sink_timeout); training continues, "
                            f"later values wait for it (at most {self._sinks.max_queued} calls, "
                            "further ones dropped and counted in geometry/errors)")

    def _count_sink_errors(self, failed: list[tuple[str, BaseException]]) -> None:
        for name, exc in failed:
            if self.strict:
                raise exc
            self.errors["sink"] = self.errors.get("sink", 0) + 1
            self._warn_once(f"sink/{name}", f"the sink failed in {name}: {exc!r}; training "
                            "continues")

    def _fail(self, kind: str, exc: BaseException, step: int) -> None:
        if self.strict:
            raise exc
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self._warn_once(kind, f"{kind} measurement failed at step {step}: {exc!r}; training "
                        "continues (counted in geometry/errors; strict=True re-raises)")
        self._put(step, {metric_key("errors"): float(sum(self.errors.values()))})

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"Monitor: {message}", MonitorWarning, stacklevel=4)

    def _close_families(self) -> None:
        for fam in self.families:
            with contextlib.suppress(Exception):
                fam.close()


def _timed(name: str, job: Callable[[], Measurement], cpu_clock: Callable[[], float]) -> Callable[[], tuple]:
    # the job's cost is the CPU time of the thread running it, plus what it reports
    def run() -> tuple[str, Measurement | None, BaseException | None, float]:
        t0 = cpu_clock()
        try:
            return name, job(), None, cpu_clock() - t0
        except Exception as exc:  # noqa: BLE001 - reported on the training thread
            return name, None, exc, cpu_clock() - t0

    return run
