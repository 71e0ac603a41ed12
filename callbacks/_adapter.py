"""The Lightning adapter behind every geometry callback: a guard and one call per hook.

All measuring lives in :class:`geomonitor.monitor.Monitor`; this class builds one at
``setup`` (so the callback itself holds only its arguments and pickles, deep-copies and
crosses ``ddp_spawn``), feeds it ``trainer.global_step`` after each batch and at each epoch
end, and closes it at the end of the fit (pending work finished) or on an exception
(cancelled). What Lightning adds: the sink (:class:`~geomonitor.callbacks.sinks.TrainerSink`:
every logger, ``callback_metrics``, W&B), the training loss (``training_step`` on the probe
batch with its ``self.log`` calls silenced), rank 0's cost-cap decisions broadcast by
``trainer.strategy.broadcast``, and the progress bar.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from geomonitor.callbacks._lightning import CALLBACK_BASES
from geomonitor.callbacks.sinks import trainer_sink
from geomonitor.callbacks.wandb_layers import DEFAULT_MAX_LAYERS, check_max_layers
from geomonitor.monitor.engine import Monitor, MonitorWarning, default_forward
from geomonitor.monitor.families import build_families
from geomonitor.monitor.families.sharpness import as_loss

__all__ = ["MonitorCallback", "training_loss", "silenced_logging"]


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def silenced_logging(pl_module: nn.Module) -> Iterator[None]:
    """Make ``pl_module.log`` / ``log_dict`` no-ops on this instance, then restore them."""
    saved = {n: pl_module.__dict__[n] for n in ("log", "log_dict") if n in pl_module.__dict__}
    pl_module.log = _noop  # type: ignore[method-assign]
    pl_module.log_dict = _noop  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            if name in saved:
                setattr(pl_module, name, saved[name])
            else:
                pl_module.__dict__.pop(name, None)


def training_loss(pl_module: nn.Module, batch: Any) -> Any:
    """The module's own training loss on ``batch``: ``training_step(batch, 0)``, logging off."""
    with silenced_logging(pl_module):
        return as_loss(pl_module.training_step(batch, 0))


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


class MonitorCallback(*CALLBACK_BASES):
    """A :class:`~geomonitor.monitor.Monitor` driven by a Lightning Trainer.

    Not used directly: :class:`~geomonitor.callbacks.GeometryMonitor` and the focused monitors
    check their arguments and say which families run (``options`` for
    :func:`~geomonitor.monitor.families.build_families`).
    """

    def __init__(self, options: dict[str, Any], *, layers: Any = "auto", reduce: str = "auto",
                 probe_size: int = 256, probe_seed: int = 0, probe_data: Any = None,
                 forward_fn: Any = None, loss_fn: Any = None, prog_bar: list[str] | None = None,
                 strict: bool = False, max_pending: int = 4,
                 max_overhead: float | None = 0.05,
                 wandb_max_layers: int | None = DEFAULT_MAX_LAYERS) -> None:
        super().__init__()
        self.wandb_max_layers = check_max_layers(wandb_max_layers, "wandb_max_layers")
        build_families(seed=probe_seed, **options)  # checks the options now
        self._options = dict(options)
        self._kwargs = dict(layers=layers, reduce=reduce, probe_size=probe_size,
                            probe_seed=probe_seed, forward_fn=forward_fn, strict=strict,
                            max_pending=max_pending, max_overhead=max_overhead)
        self.probe_data, self.loss_fn = probe_data, loss_fn
        self.reduce, self.probe_size, self.probe_seed = reduce, probe_size, probe_seed
        self.prog_bar = list(prog_bar or [])
        self.monitor: Monitor | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        """The class name: one key whatever families run, so turning one on or off at a
        resume restores the others (each family's state is its own entry)."""
        return type(self).__qualname__

    @property
    def probe(self) -> Any:
        """The monitor's probe set (``None`` before the first step of a fit)."""
        return self.monitor.probe if self.monitor is not None else None

    @property
    def families(self) -> list[Any]:
        """The families this callback runs (those of the current fit once it is set up)."""
        if self.monitor is not None:
            return list(self.monitor.families)
        return build_families(seed=self._kwargs["probe_seed"], **self._options)

    @property
    def errors(self) -> dict[str, int]:
        """Failed measurements per family (see ``geometry/errors``)."""
        return dict(self.monitor.errors) if self.monitor is not None else {}

    # -- hooks: a guard and one call --------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._build(trainer, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning restores a callback's state only when the checkpoint has an entry for it,
        # and says nothing otherwise (e.g. a checkpoint written without this callback)
        if getattr(trainer, "ckpt_path", None) and not self._pending_state and trainer.is_global_zero:
            warnings.warn(f"{type(self).__name__}: resumed from {trainer.ckpt_path} at step "
                          f"{trainer.global_step} without monitor state in the checkpoint; the "
                          "geometry series starts afresh (a new probe set is drawn)",
                          MonitorWarning, stacklevel=2)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.monitor is not None:
            self._show(trainer, self.monitor.step(trainer.global_step, optimizer=_opt(trainer)))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self._show(trainer, self.monitor.step(trainer.global_step, optimizer=_opt(trainer),
                                                  epoch_end=True, epoch=trainer.current_epoch))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self._show(trainer, self.monitor.close(wait=True))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.monitor is not None:
            self.monitor.close(wait=False)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor.close(wait=False)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The monitor's :meth:`~geomonitor.monitor.Monitor.state_dict` (``weights_only``-safe)."""
        if self.monitor is not None:
            return self.monitor.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        Monitor.check_state(state_dict)
        self._pending_state = dict(state_dict)
        if self.monitor is not None:
            self.monitor.load_state_dict(self._pending_state)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # a checkpoint written when the key also named the families ("GeometryMonitor{'families':
        # [...]}"): its state is this callback's when it is the only one of its class
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        old = [k for k in states if isinstance(k, str) and k.startswith(self.state_key + "{")]
        if len(old) == 1:
            self.load_state_dict(states[old[0]])

    def __getstate__(self) -> dict[str, Any]:
        """A copy carries the monitor's state, not the monitor (threads, the trainer): it
        builds its own at its next ``setup``."""
        state = self.__dict__.copy()
        if state.get("monitor") is not None:
            state["_pending_state"] = state["monitor"].state_dict()
            state["monitor"] = None
        return state

    # -- implementation ---------------------------------------------------------------------
    def _build(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close(wait=False)
        data = self.probe_data
        forward = self._kwargs["forward_fn"] or default_forward
        loss_fn = self.loss_fn or (training_loss if getattr(pl_module, "automatic_optimization", True)
                                   else None)
        self.monitor = Monitor(
            pl_module, probe=data if data is not None else lambda: _first_loader(trainer.train_dataloader),
            sink=trainer_sink(trainer, self.wandb_max_layers), families=build_families(seed=self._kwargs["probe_seed"], **self._options),
            forward_fn=forward, loss_fn=loss_fn,
            broadcast=lambda decisions: trainer.strategy.broadcast(decisions, src=0),
            total_steps=lambda: _total_steps(trainer),
            **{k: v for k, v in self._kwargs.items() if k != "forward_fn"})
        if self._pending_state:
            self.monitor.load_state_dict(self._pending_state)

    def _show(self, trainer: Any, values: dict[str, float]) -> None:
        # into the dict behind trainer.progress_bar_metrics, once per new value
        for name in self.prog_bar:
            value = values.get(f"geometry/{name}")
            if value is not None:
                trainer.progress_bar_metrics[name] = value


def _total_steps(trainer: Any) -> Any:
    # the fit's length when Lightning knows it (max_steps / max_epochs); inf or an error: unknown
    try:
        return trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - e.g. no dataloader length: the cap plans without it
        return None


def _opt(trainer: Any) -> Any:
    optimizers = trainer.optimizers
    return optimizers[0] if optimizers else None
