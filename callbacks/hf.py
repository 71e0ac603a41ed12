"""``GeometryTrainerCallback``: the geometry of a model while a Hugging Face ``Trainer`` trains it.

The Hugging Face adapter of :class:`geomonitor.monitor.Monitor`, the counterpart of the
Lightning :class:`~geomonitor.callbacks.GeometryMonitor` (same arguments, same families, same
metric keys; see that class for what is measured and what it costs). One call per hook:

==================  ==========================================================================
hook                what happens
==================  ==========================================================================
``on_train_begin``  a ``Monitor`` is built on ``model`` (the callback itself holds only its
                    arguments, so it pickles and deep-copies); on a resumed run the monitor
                    state saved next to the checkpoint is loaded, so the series continues
``on_step_end``     ``monitor.step(state.global_step, optimizer=...)`` (optimizer steps, from 1)
``on_epoch_end``    ``monitor.step(..., epoch_end=True, epoch=e)``, ``e`` the 0-based epoch;
                    when the training stops there (``control.should_training_stop``, or the
                    last step reached), then ``monitor.close(wait=True)``, so pending
                    background values reach the integrations before their own
                    ``on_train_end`` closes them (TensorBoard's writer, MLflow's run)
``on_save``         the monitor state, ``geomonitor_state.pt``, in the new checkpoint folder
``on_train_end``    ``monitor.close(wait=True)`` if not closed yet
==================  ==========================================================================

Early stopping on neural persistence (Rieck et al. 2019): with
``early_stopping=NeuralPersistenceStopping(patience=...)`` the monitor feeds the rule every
``geometry/neural_persistence/mean`` it delivers (on the ``np_every_n_*`` schedule; Algorithm 2
is ``np_every_n_epochs=1, np_every_n_steps=None``), and once it decides,
``control.should_training_stop`` is set at that ``on_step_end`` / ``on_epoch_end``. The rule is
reset at each ``train()`` and its state travels with the monitor state (``on_save``, resume).

Defaults fitted to Hugging Face models:

* probe set: ``probe_size`` samples read as ``train_dataset[i]`` (indices drawn once with a
  seeded ``torch.Generator``) and collated by the train dataloader's ``collate_fn`` (the
  Trainer's data collator, with its unused-column removal), so the probe batch is a dict like
  the training batches. The training dataloader is never iterated and no global RNG stream
  is touched. An ``IterableDataset`` has no indices: its first ``probe_size`` samples are
  read through a separate, seeded ``DataLoader`` with the same collator;
* loss (sharpness): ``model(**batch).loss`` (a model computes it when the batch has
  ``labels``); forward (activations): ``model(**batch)``;
* optimizer: the Trainer's (``accelerate``'s wrapper removed), so ``eos_ratio`` uses Adam's
  preconditioned threshold (Cohen et al. 2022) for the default AdamW.

Where values go (world process zero only; every process measures, so that collective
operations inside a sharded model's forward stay in lockstep, rank 0 deciding the cost cap):

* ``trainer.state.log_history`` as ``{**metrics, "step": s}`` (saved in ``trainer_state.json``);
* every ``report_to`` integration of the Trainer (TensorBoard, MLflow, Comet, ClearML, DVCLive,
  ...; any callback that is an instance of one of ``transformers``' integration callbacks)
  through its own ``on_log``, the route the Trainer's ``log`` takes, called with a shallow copy
  of the ``TrainerState`` whose ``global_step`` is the step the values describe (so a value
  computed in the background lands on its step) and a throwaway ``TrainerControl`` (nothing
  the integration sets reaches the training loop). ``log_history`` is not appended to twice
  and the Trainer's own logging (``logging_steps``, the loss accumulator) is untouched. Each
  integration names the values as it names the Trainer's: TensorBoard and W&B's callback
  prefix ``train/`` (``train/geometry/sharpness``), MLflow keeps ``geometry/sharpness``. An
  integration that fails is warned once and the others still get the values. The
  integrations are those of the ``CallbackHandler`` that calls ``on_train_begin``;
* W&B, when ``"wandb"`` is in ``args.report_to`` and a run is active, through
  :class:`~geomonitor.callbacks.sinks.WandbSink` rather than ``WandbCallback.on_log``
  (``geometry/*`` charted against ``geometry/step``, one row per delivery that also carries
  ``train/global_step``; persistence diagrams and the ID profile as charts; statistics over
  layers past ``wandb_max_layers`` layers).

Example:
    >>> trainer = Trainer(model, args, train_dataset=ds,                     # doctest: +SKIP
    ...                   callbacks=[GeometryTrainerCallback(layers="transformer.h.?", reduce="mean")])
"""
from __future__ import annotations

import math
import os
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from geomonitor.callbacks import _checks as check
from geomonitor.callbacks.hf_sink import LogHistorySink, calling_handler
from geomonitor.callbacks.wandb_layers import DEFAULT_MAX_LAYERS, check_max_layers
from geomonitor.monitor.early_stopping import NeuralPersistenceStopping
from geomonitor.monitor.engine import Monitor, MonitorWarning
from geomonitor.monitor.families import build_families
from geomonitor.monitor.families.sharpness import as_loss

__all__ = ["GeometryTrainerCallback", "LogHistorySink", "STATE_FILE", "model_loss"]

#: The monitor state's file in each checkpoint folder (``torch.load(weights_only=True)``-safe).
STATE_FILE = "geomonitor_state.pt"


def model_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch).loss``: the loss a Hugging Face model computes when given ``labels``.

    Raises:
        TypeError: ``batch`` is not a mapping, or the model returned no loss.
    """
    if not isinstance(batch, Mapping):
        raise TypeError("the default loss is model(**batch).loss and needs a dict batch, got "
                        f"{type(batch).__name__}; pass loss_fn=lambda model, batch: ...")
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise TypeError(f"model(**batch) returned no loss for a probe batch with keys {sorted(batch)}: "
                        "the batch needs 'labels' for the model to compute it; pass "
                        "loss_fn=lambda model, batch: ...")
    return as_loss(loss)


def _unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside ``accelerate``'s ``AcceleratedOptimizer`` (or any ``.optimizer``)."""
    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


def _probe_loader(loader: Any, seed: int) -> Any:
    """What the probe set is drawn from: the train dataloader read by index, or for an
    ``IterableDataset`` a fresh loader with the same collator and a seeded generator (so the
    training loader, and the global RNG, are left alone)."""
    if loader is None:
        raise ValueError("the Trainer passed no train_dataloader to draw the probe set from; "
                         "pass probe_data=...")
    base = getattr(loader, "base_dataloader", loader)
    dataset = getattr(base, "dataset", None)
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=getattr(base, "batch_size", None) or 1,
                          collate_fn=getattr(base, "collate_fn", None),
                          generator=torch.Generator().manual_seed(seed))
    return base


def _report_to_wandb(args: Any) -> bool:
    report_to = getattr(args, "report_to", None) or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    return "wandb" in report_to or "all" in report_to




def _close_quietly(monitor: Monitor) -> None:
    try:
        monitor.close(wait=False)
    except Exception:  # noqa: BLE001 - at interpreter exit nothing can be reported
        pass



class GeometryTrainerCallback(TrainerCallback):
    """Intrinsic dimension, sharpness, persistence and neural persistence of a ``Trainer`` run.

    The arguments are those of :class:`~geomonitor.callbacks.GeometryMonitor` (checked here,
    ``ValueError`` naming the argument), without ``prog_bar``. Steps are optimizer steps
    (``state.global_step``); epoch schedules fire at every ``on_epoch_end``, including the
    last, partial epoch of a run stopped by ``max_steps``.

    Args:
        layers, reduce, probe_size, probe_seed: as in ``GeometryMonitor``; ``layers`` names
            modules of the Hugging Face model (``"transformer.h.?"``, ``"model.layers.*.mlp"``).
        probe_data: ``None`` (from the Trainer's train dataset, see the module docstring), a
            DataLoader, a tensor or a tuple of tensors.
        id_method, id_every_n_steps, id_every_n_epochs, sharpness_every_n_steps,
        sharpness_every_n_epochs, sharpness_max_hvp, sharpness_tol, sharpness_probe_size, sharpness_hvp,
        topology_every_n_steps, topology_every_n_epochs, topology_landmarks,
        np_every_n_steps, np_every_n_epochs, symmetry_every_n_steps, symmetry_every_n_epochs,
        connectivity_every_n_steps, connectivity_every_n_epochs, spectrum_every_n_steps,
        spectrum_every_n_epochs, attention_every_n_steps, attention_every_n_epochs,
        log_diagrams, strict, max_pending,
        max_overhead: as in ``GeometryMonitor``.
        loss_fn: ``loss_fn(model, batch) -> scalar`` for sharpness (default
            :func:`model_loss`, ``model(**batch).loss``).
        forward_fn: ``forward_fn(model, batch)`` for activations (default ``model(**batch)``
            for dict batches).
        wandb_max_layers: W&B gets per-layer keys for at most this many measured layers,
            the mean, min and max over layers past it, with one warning (a W&B project holds
            under 10,000 keys; :mod:`~geomonitor.callbacks.wandb_layers`); ``None``: no limit.
            The other integrations and ``log_history`` get every layer.
        early_stopping: a :class:`~geomonitor.monitor.early_stopping.NeuralPersistenceStopping`
            that stops the training (``control.should_training_stop``) when it decides, or
            ``None``; it needs the neural-persistence family (``np_every_n_*``) on.

    Attributes:
        monitor: the :class:`~geomonitor.monitor.Monitor` of the current (or last) run, or
            ``None`` before ``train()``.

    Checkpoints: ``on_save`` writes the monitor state to ``<checkpoint>/geomonitor_state.pt``;
    ``trainer.train(resume_from_checkpoint=...)`` on a checkpoint of ``args.output_dir``
    reloads it (same probe set, counters, warm starts); a state given by
    :meth:`load_state_dict` before ``train()`` wins. The callback is deliberately not a
    ``transformers.ExportableState``: that state is JSON inside ``trainer_state.json`` (here
    one float per parameter, the sharpness warm start), and the Trainer would rebuild the
    callback from JSON arguments, dropping ``loss_fn``/``forward_fn``/``probe_data``.
    """

    def __init__(
        self,
        layers: str | list[str] = "auto",
        reduce: str = "auto",
        probe_size: int = 256,
        probe_seed: int = 0,
        probe_data: Any = None,
        id_method: str = "twonn",
        id_every_n_steps: int | None = 10,
        id_every_n_epochs: int | None = None,
        sharpness_every_n_steps: int | None = 10,
        sharpness_every_n_epochs: int | None = None,
        sharpness_max_hvp: int = 20,
        sharpness_tol: float = 1e-2,
        sharpness_probe_size: int | None = 32,
        sharpness_hvp: str = "auto",
        topology_every_n_steps: int | None = 10,
        topology_every_n_epochs: int | None = None,
        topology_landmarks: int | None = 128,
        np_every_n_steps: int | None = 10,
        np_every_n_epochs: int | None = None,
        symmetry_every_n_steps: int | None = 10,
        symmetry_every_n_epochs: int | None = None,
        connectivity_every_n_steps: int | None = None,
        connectivity_every_n_epochs: int | None = None,
        spectrum_every_n_steps: int | None = None,
        spectrum_every_n_epochs: int | None = None,
        attention_every_n_steps: int | None = None,
        attention_every_n_epochs: int | None = None,
        log_diagrams: bool = True,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        forward_fn: Callable[[Any, Any], Any] | None = None,
        strict: bool = False,
        max_pending: int = 4,
        max_overhead: float | None = 0.05,
        wandb_max_layers: int | None = DEFAULT_MAX_LAYERS,
        early_stopping: NeuralPersistenceStopping | None = None,
    ) -> None:
        layers = check.layers(layers)
        self.wandb_max_layers = check_max_layers(wandb_max_layers, "wandb_max_layers")
        check.choice("reduce", reduce, check.REDUCTIONS)
        probe_data = check.common(probe_size, probe_seed, probe_data, strict, max_pending)
        check.max_overhead(max_overhead)
        check.callables(loss_fn=loss_fn, forward_fn=forward_fn)
        self._options = check.geometry_options(
            "GeometryTrainerCallback", id_method=id_method, sharpness_max_hvp=sharpness_max_hvp,
            sharpness_tol=sharpness_tol, sharpness_probe_size=sharpness_probe_size,
            sharpness_hvp=sharpness_hvp,
            topology_landmarks=topology_landmarks, log_diagrams=log_diagrams,
            id_every_n_steps=id_every_n_steps, id_every_n_epochs=id_every_n_epochs,
            sharpness_every_n_steps=sharpness_every_n_steps,
            sharpness_every_n_epochs=sharpness_every_n_epochs,
            topology_every_n_steps=topology_every_n_steps,
            topology_every_n_epochs=topology_every_n_epochs,
            np_every_n_steps=np_every_n_steps, np_every_n_epochs=np_every_n_epochs,
            symmetry_every_n_steps=symmetry_every_n_steps,
            symmetry_every_n_epochs=symmetry_every_n_epochs,
            connectivity_every_n_steps=connectivity_every_n_steps,
            connectivity_every_n_epochs=connectivity_every_n_epochs,
            spectrum_every_n_steps=spectrum_every_n_steps,
            spectrum_every_n_epochs=spectrum_every_n_epochs,
            attention_every_n_steps=attention_every_n_steps,
            attention_every_n_epochs=attention_every_n_epochs)
        build_families(seed=probe_seed, **self._options)  # the families' own checks, now
        if early_stopping is not None and not isinstance(early_stopping, NeuralPersistenceStopping):
            raise ValueError("early_stopping must be a NeuralPersistenceStopping or None, got "
                             f"{early_stopping!r}")
        if early_stopping is not None and np_every_n_steps is None and np_every_n_epochs is None:
            raise ValueError("early_stopping needs neural persistence measured: set "
                             "np_every_n_epochs (Algorithm 2: 1) or np_every_n_steps")
        self.early_stopping = early_stopping
        self._kwargs = dict(layers=layers, reduce=reduce, probe_size=probe_size,
                            probe_seed=probe_seed, strict=strict, max_pending=max_pending,
                            max_overhead=max_overhead)
        self.probe_data, self.loss_fn, self.forward_fn = probe_data, loss_fn, forward_fn
        self.monitor: Monitor | None = None
        self._ended = False
        self._pending_state: dict[str, Any] | None = None
        self._finalizer: weakref.finalize | None = None

    # -- what the run measured --------------------------------------------------------------
    @property
    def probe(self) -> Any:
        """The monitor's probe set (``None`` before the first step of a run)."""
        return self.monitor.probe if self.monitor is not None else None

    @property
    def families(self) -> list[Any]:
        """The families this callback runs (those of the current run once it has begun)."""
        if self.monitor is not None:
            return list(self.monitor.families)
        return build_families(seed=self._kwargs["probe_seed"], **self._options)

    @property
    def errors(self) -> dict[str, int]:
        """Failed measurements per family (see ``geometry/errors``)."""
        return dict(self.monitor.errors) if self.monitor is not None else {}

    # -- hooks: a guard and one call --------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("GeometryTrainerCallback.on_train_begin needs the model "
                             "(the Trainer passes it as model=...)")
        self._build(args, state, model, train_dataloader, calling_handler(self))

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                    **kwargs: Any) -> None:
        if self.monitor is not None and not self._ended:
            self._step(state.global_step, optimizer=optimizer)
            self._stop_if_decided(control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                     **kwargs: Any) -> None:
        if self.monitor is not None and not self._ended:
            # state.epoch is e + 1 after a full epoch e (0-based), e + fraction after a partial one
            epoch = max(0, math.ceil(round(float(state.epoch or 0.0), 6)) - 1)
            self._step(state.global_step, optimizer=optimizer, epoch_end=True, epoch=epoch)
            self._stop_if_decided(control)
            stops = bool(getattr(control, "should_training_stop", False))
            if stops or 0 < (state.max_steps or 0) <= state.global_step:
                # the last hook before the integrations' on_train_end: deliver what is pending
                self._ended = True
                self.monitor.close(wait=True)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            torch.save(self.monitor.state_dict(), os.path.join(folder, STATE_FILE))
        else:
            warnings.warn(f"GeometryTrainerCallback: no checkpoint folder {folder}; the monitor "
                          "state is not saved with this checkpoint", MonitorWarning, stacklevel=2)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close(wait=True)
            if self._finalizer is not None:
                self._finalizer.detach()

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The monitor's :meth:`~geomonitor.monitor.Monitor.state_dict` (``weights_only``-safe)."""
        if self.monitor is not None:
            return self.monitor.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: now if a run is live, else at the next ``train()``."""
        self._pending_state = dict(state_dict)
        if self.monitor is not None:
            self.monitor.load_state_dict(self._pending_state)

    def __getstate__(self) -> dict[str, Any]:
        # the live monitor (threads, a child process) stays behind; its state travels
        out = dict(self.__dict__)
        if self.monitor is not None:
            out["_pending_state"] = self.monitor.state_dict()
        out["monitor"], out["_finalizer"] = None, None
        return out

    # -- implementation ---------------------------------------------------------------------
    def _build(self, args: Any, state: Any, model: Any, train_dataloader: Any,
               handler: Any = None) -> None:
        if self.monitor is not None:
            _close_quietly(self.monitor)
            if self._finalizer is not None:
                self._finalizer.detach()
        seed = self._kwargs["probe_seed"]
        data = self.probe_data
        probe = data if data is not None else (lambda: _probe_loader(train_dataloader, seed))
        sink = LogHistorySink(state, _report_to_wandb(args), handler=handler, args=args,
                              wandb_max_layers=self.wandb_max_layers)
        self._ended = False
        if self.early_stopping is not None:
            self.early_stopping.reset()
        self.monitor = Monitor(model, probe=probe, sink=sink, stopping=self.early_stopping,
                               families=build_families(seed=seed, **self._options),
                               forward_fn=self.forward_fn, loss_fn=self.loss_fn or model_loss,
                               total_steps=lambda: state.max_steps, **self._kwargs)
        # a run that raises never reaches on_train_end: no worker outlives the callback
        self._finalizer = weakref.finalize(self, _close_quietly, self.monitor)
        resumed = self._pending_state
        if resumed is None and state.global_step > 0:
            resumed = self._saved_state(args, state.global_step)
        if resumed:
            self.monitor.load_state_dict(resumed)
        self._pending_state = None

    @staticmethod
    def _saved_state(args: Any, step: int) -> dict[str, Any] | None:
        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}", STATE_FILE)
        if not os.path.isfile(path):
            warnings.warn(f"GeometryTrainerCallback: resumed at step {step} without {path}; the "
                          "geometry series starts afresh (a new probe set is drawn)",
                          MonitorWarning, stacklevel=3)
            return None
        return torch.load(path, weights_only=True)

    def _stop_if_decided(self, control: Any) -> None:
        if self.monitor is not None and self.monitor.should_stop:
            control.should_training_stop = True

    def _step(self, step: int, **kwargs: Any) -> None:
        assert self.monitor is not None
        kwargs["optimizer"] = _unwrap_optimizer(kwargs.get("optimizer"))
        self.monitor.step(step, **kwargs)

