"""Where a Hugging Face ``Trainer`` run's geometry values go: :class:`LogHistorySink`.

Into ``state.log_history`` (``{**metrics, "step": s}``, saved in ``trainer_state.json``), into
the ``on_log`` of every ``report_to`` integration callback of the Trainer's
``CallbackHandler`` but W&B's (TensorBoard, MLflow, Comet, ClearML, DVCLive, ...: any
instance of one of ``transformers``' integration callbacks), called the way the Trainer's
``log`` calls them, with a shallow copy of the ``TrainerState`` whose ``global_step`` is the
step the values describe and a throwaway ``TrainerControl``; and to W&B through
:class:`~geomonitor.callbacks.sinks.WandbSink` (one committed row per delivery carrying
``geometry/step`` and ``train/global_step``). Only the world process zero writes; an
integration that raises is warned once and the others still get the values.

The Trainer hands its callbacks no reference to its ``CallbackHandler``:
:func:`calling_handler`, called from a hook, reads it from the ``call_event`` frame that
called the hook (only that frame's locals; ``None`` when the hook was called another way),
and the sink holds it weakly (the handler holds the callback, whose finalizer holds the
monitor and this sink).
"""
from __future__ import annotations

import copy
import sys
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

from transformers import TrainerControl
from transformers.integrations import integration_utils
from transformers.trainer_callback import CallbackHandler

from geomonitor.callbacks.sinks import GEOMETRY_STEP, WandbSink
from geomonitor.callbacks.wandb_layers import DEFAULT_MAX_LAYERS

__all__ = ["HF_STEP_KEY", "LogHistorySink", "calling_handler", "integrations"]

#: The step metric of the Trainer's own W&B rows (``WandbCallback``).
HF_STEP_KEY = "train/global_step"


def integrations(handler: Any) -> list[Any]:
    """The ``report_to`` integration callbacks of a ``CallbackHandler`` (W&B's left out: the
    values reach W&B through :class:`WandbSink`)."""
    if handler is None:
        return []
    kinds = tuple(integration_utils.INTEGRATION_TO_CALLBACK.values())
    return [cb for cb in handler.callbacks
            if isinstance(cb, kinds) and not isinstance(cb, integration_utils.WandbCallback)]


def calling_handler(callback: Any) -> Any | None:
    """The ``CallbackHandler`` whose ``call_event`` called the hook that calls this (the
    Trainer hands its callbacks no reference to the handler), or ``None`` when the hook was
    called some other way. Only a ``call_event`` frame's locals are read (reading another
    frame's locals would keep a snapshot of them alive)."""
    try:
        frame = sys._getframe(2)
    except ValueError:  # a call stack shallower than the hook and this function
        return None
    if frame.f_code is not CallbackHandler.call_event.__code__:
        return None
    owner = frame.f_locals.get("self")
    del frame
    if isinstance(owner, CallbackHandler) and any(cb is callback for cb in owner.callbacks):
        return owner
    return None


class LogHistorySink:
    """Values into ``state.log_history`` (``{**metrics, "step": step}``), into the ``on_log``
    of the Trainer's ``report_to`` integrations and, when the Trainer reports to W&B and a run
    is active, to W&B via :class:`~geomonitor.callbacks.sinks.WandbSink` (the run resolved at
    each call). Only the world process zero writes.

    Args:
        state: the Trainer's ``TrainerState``.
        wandb: whether to send values to W&B (``"wandb"`` in ``args.report_to``).
        handler: the Trainer's ``CallbackHandler`` (its integrations get the values), or None.
        args: the ``TrainingArguments`` the integrations are called with.
        wandb_max_layers: see :class:`~geomonitor.callbacks.sinks.WandbSink` ``max_layers``.

    Called on the training thread (``caller_thread``): the integrations keep per-thread state
    (MLflow's active run), as the Trainer's own logging to them is.
    """

    caller_thread = True

    def __init__(self, state: Any, wandb: bool = False, handler: Any = None, args: Any = None,
                 wandb_max_layers: int | None = DEFAULT_MAX_LAYERS) -> None:
        self.state, self.args = state, args
        # weak: the handler holds the callback, whose finalizer holds the monitor and this sink
        self._handler = weakref.ref(handler) if handler is not None else None
        self._failed: set[str] = set()
        # one committed row per delivery: the Trainer commits a row only every logging_steps, and
        # uncommitted values of several steps would merge into one row; both step keys, since
        # the Trainer's define_metric("*", step_metric="train/global_step") matches geometry/*
        self.wandb = WandbSink(commit=True, step_keys=(GEOMETRY_STEP, HF_STEP_KEY),
                               max_layers=wandb_max_layers) if wandb else None

    @property
    def handler(self) -> Any | None:
        """The Trainer's ``CallbackHandler`` (``None``: none given, or the Trainer is gone)."""
        return self._handler() if self._handler is not None else None

    def _writes(self) -> bool:
        return bool(getattr(self.state, "is_world_process_zero", True))

    def _wandb(self) -> WandbSink | None:
        if self.wandb is None or not self._writes() or self.wandb.wandb_run() is None:
            return None
        return self.wandb

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not metrics or not self._writes():
            return
        values = {k: float(v) for k, v in metrics.items()}
        self.state.log_history.append({**values, "step": int(step)})
        self._to_integrations(values, int(step))
        sink = self._wandb()
        if sink is not None:
            sink.log_metrics(metrics, step)

    def _to_integrations(self, values: dict[str, float], step: int) -> None:
        h = self.handler
        callbacks = integrations(h)
        if not callbacks:
            return
        state = copy.copy(self.state)  # shallow: the integrations read global_step from it
        state.global_step = step
        for cb in callbacks:
            try:
                cb.on_log(self.args, state, TrainerControl(), logs=dict(values), model=h.model,
                          processing_class=h.processing_class, optimizer=h.optimizer,
                          lr_scheduler=h.lr_scheduler, train_dataloader=h.train_dataloader,
                          eval_dataloader=h.eval_dataloader)
            except Exception as exc:  # noqa: BLE001 - one integration never takes the others down
                name = type(cb).__name__
                if name not in self._failed:
                    self._failed.add(name)
                    warnings.warn(f"{name} failed to log geometry metrics: {exc!r}; the other "
                                  "integrations still get them (warned once)", RuntimeWarning,
                                  stacklevel=3)

    def log_diagram(self, key: str, diagrams: Any, step: int) -> None:
        sink = self._wandb()
        if sink is not None:
            sink.log_diagram(key, diagrams, step)

    def log_profile(self, key: str, names: Any, values: Any, step: int) -> None:
        sink = self._wandb()
        if sink is not None:
            sink.log_profile(key, names, values, step)

    def log_spectrum(self, key: str, nodes: Any, weights: Any, step: int) -> None:
        sink = self._wandb()
        if sink is not None:
            sink.log_spectrum(key, nodes, weights, step)
