"""Alerts on instability while a model trains: a thin Lightning callback over the alert rules.

:class:`GeometryAlerts` feeds the rules of :mod:`geomonitor.monitor.alerts` with

* the training loss, from ``outputs`` of ``on_train_batch_end``;
* the total gradient 2-norm, computed in ``on_before_optimizer_step`` (one fused norm of the
  per-parameter norms; one device sync per step, read at batch end);
* the geometry the monitor callbacks put into ``trainer.callback_metrics`` --
  ``geometry/eos_ratio`` and ``geometry/id/<layer>`` -- each time a value changes.

Each alert goes to :meth:`TrainerSink.alert` (a console warning always, ``wandb.alert`` under a
WandbLogger, rate-limited by ``wait_duration``), is logged as the metric ``alerts/<rule>`` = 1
at its step, is passed to the ``on_alert`` hook, and triggers the rule's action: ``"warn"``
(nothing more), ``"stop"`` (``trainer.should_stop``, agreed across DDP ranks with
``strategy.reduce_boolean_decision(..., all=False)`` as Lightning's ``EarlyStopping`` does) or
``"checkpoint_and_stop"`` (``trainer.save_checkpoint`` first). Rule state (counters, running
medians, rate limits) is saved with the checkpoint and restored on resume.

Example:
    >>> from geomonitor.callbacks.alerts import GeometryAlerts
    >>> cb = GeometryAlerts(actions={"non_finite": "checkpoint_and_stop", "eos": "stop"})
    >>> # pl.Trainer(callbacks=[SharpnessMonitor(...), cb])                  # doctest: +SKIP
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from geomonitor.callbacks._lightning import CALLBACK_BASES
from geomonitor.callbacks.sinks import trainer_sink
from geomonitor.monitor.keys import PREFIX, metric_key
from geomonitor.monitor.alerts import (Alert, EdgeOfStability, GradNormExplosion, LossSpike,
                                       NonFinite, RankCollapse, RepresentationCollapse,
                                       Rule)
from geomonitor.monitor.attention_alerts import (AttentionEntropyCollapse, AttentionLogitGrowth,
                                                 OutputLogitDivergence)

_ATTENTION_RULES = (AttentionLogitGrowth, AttentionEntropyCollapse, OutputLogitDivergence)

__all__ = ["GeometryAlerts", "ACTIONS", "EOS_KEY", "ID_PREFIX"]

#: Built-in actions, per rule.
ACTIONS = ("warn", "stop", "checkpoint_and_stop")
#: Keys the monitor callbacks write: ``metric_key("eos_ratio")`` and ``metric_key("id", layer)``.
EOS_KEY = metric_key("eos_ratio")
ID_PREFIX = f"{PREFIX}/id/"


def default_rules() -> list[Rule]:
    """One rule of each kind with its documented defaults."""
    return [EdgeOfStability(), LossSpike(), GradNormExplosion(), NonFinite(), RepresentationCollapse(),
            RankCollapse()]


def _loss_from_outputs(outputs: Any) -> float | None:
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
        return float(outputs.detach())
    if isinstance(outputs, (int, float)):
        return float(outputs)
    return None  # manual optimisation without a returned loss: nothing to check


class GeometryAlerts(*CALLBACK_BASES):
    """Raise alerts (and optionally stop) when training turns unstable.

    Args:
        rules: the rules to run; default one :class:`EdgeOfStability`, :class:`LossSpike`,
            :class:`GradNormExplosion`, :class:`NonFinite`, :class:`RepresentationCollapse` (on
            ``geometry/id/*``) and :class:`RankCollapse` (on ``geometry/symmetry/*/rankme``)
            with their defaults. Names must be unique. The transformer rules of
            :mod:`geomonitor.monitor.attention_alerts` (not among the defaults) are fed what
            their ``select`` picks from the attention family's keys. Rules of other classes
            receive nothing.
        actions: rule name -> ``"warn"`` | ``"stop"`` | ``"checkpoint_and_stop"``; unnamed rules warn.
        on_alert: called with every :class:`Alert` (on every rank that sees it).
        wait_duration: seconds W&B waits before re-sending an alert with the same title.
        checkpoint_dir: where ``checkpoint_and_stop`` writes ``alert-<rule>-step=<step>.ckpt``;
            default ``trainer.default_root_dir``.
        check_activations: also check the outputs of every leaf module for NaN/inf (forward
            hooks; the flag stays on the device, one sync per batch). Off by default.

    Cost per training step: one ``.item()`` for the loss and one for the gradient norm (a
    fused norm over all parameters, O(#params)), plus O(window) for the running medians; under
    DDP, when some action stops, one boolean all-reduce per step. Under mixed precision with a
    gradient scaler, inf/NaN gradients are expected (the scaler skips those steps), so the
    gradient norm is not checked for finiteness there.

    Failure modes: a rule whose input never arrives (no SharpnessMonitor -> no ``eos_ratio``)
    stays silent. Geometry values are read when they *change*; a measurement equal to the
    previous one to the last bit is not counted twice.
    """

    def __init__(self, rules: Sequence[Rule] | None = None, *, actions: Mapping[str, str] | None = None,
                 on_alert: Callable[[Alert], None] | None = None, wait_duration: float = 300.0,
                 checkpoint_dir: str | None = None, check_activations: bool = False) -> None:
        super().__init__()
        self.rules = list(default_rules() if rules is None else rules)
        for r in self.rules:
            if not isinstance(r, Rule):
                raise ValueError(f"rules must be geomonitor.monitor.alerts.Rule instances, got {r!r}")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rules must have unique names, got {names}")
        actions = dict(actions or {})
        for name, action in actions.items():
            if name not in names:
                raise ValueError(f"actions names a rule {name!r} that is not among the rules {names}")
            if action not in ACTIONS:
                raise ValueError(f"action for {name!r} must be one of {ACTIONS}, got {action!r}")
        self.actions = {n: actions.get(n, "warn") for n in names}
        if on_alert is not None and not callable(on_alert):
            raise ValueError(f"on_alert must be callable or None, got {on_alert!r}")
        self.on_alert = on_alert
        if not (isinstance(wait_duration, (int, float)) and wait_duration >= 0 and math.isfinite(wait_duration)):
            raise ValueError(f"wait_duration must be a finite number of seconds >= 0, got {wait_duration!r}")
        self.wait_duration = float(wait_duration)
        self.checkpoint_dir = checkpoint_dir
        self.check_activations = bool(check_activations)
        self.alerts: list[Alert] = []          # this process's alerts, newest last (bounded below)
        self.checkpoints: list[str] = []
        self._last_seen: dict[str, float] = {}
        self._grad_norm: torch.Tensor | None = None
        self._act_ok: torch.Tensor | None = None
        self._hooks: list[Any] = []
        self._pending_stop = False

    # -- rules by kind ----------------------------------------------------------------------
    def _of(self, cls: type) -> list[Rule]:
        return [r for r in self.rules if isinstance(r, cls)]

    # -- Lightning hooks --------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.check_activations and not self._hooks:
            def hook(_module: Any, _inp: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    ok = torch.isfinite(out.detach()).all()
                    self._act_ok = ok if self._act_ok is None else self._act_ok & ok
            for module in pl_module.modules():
                if next(module.children(), None) is None:
                    self._hooks.append(module.register_forward_hook(hook))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.detach() for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self._grad_norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        found: list[Alert] = []
        values: dict[str, float] = {}
        loss = _loss_from_outputs(outputs)
        if loss is not None:
            values["loss"] = loss
            found += [a for r in self._of(LossSpike) if (a := r.update(step, loss))]
        if self._grad_norm is not None:
            gnorm = float(self._grad_norm)
            self._grad_norm = None
            if math.isfinite(gnorm) or getattr(trainer.precision_plugin, "scaler", None) is None:
                values["grad_norm"] = gnorm
            found += [a for r in self._of(GradNormExplosion) if (a := r.update(step, gnorm))]
        if self._act_ok is not None:
            values["activations"] = 1.0 if bool(self._act_ok) else math.nan
            self._act_ok = None
        found += [a for r in self._of(NonFinite) if (a := r.update(step, values))]
        found += self._geometry(trainer, step)
        self._handle(trainer, found)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._handle(trainer, self._geometry(trainer, trainer.global_step))

    # -- geometry from callback_metrics -------------------------------------------------------
    def _changed(self, key: str, value: Any) -> float | None:
        v = float(value.detach().reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value)
        old = self._last_seen.get(key)
        if old is not None and (old == v or (math.isnan(old) and math.isnan(v))):
            return None
        self._last_seen[key] = v
        return v

    def _geometry(self, trainer: Any, step: int) -> list[Alert]:
        metrics = trainer.callback_metrics
        found: list[Alert] = []
        if EOS_KEY in metrics and (v := self._changed(EOS_KEY, metrics[EOS_KEY])) is not None:
            found += [a for r in self._of(EdgeOfStability) if (a := r.update(step, v))]
        ids = {}
        for key in list(metrics):
            if key.startswith(ID_PREFIX) and (v := self._changed(key, metrics[key])) is not None:
                ids[key[len(ID_PREFIX):]] = v
        if ids:
            found += [a for r in self._of(RepresentationCollapse)
                      if not isinstance(r, RankCollapse) and (a := r.update(step, ids))]
        ranks = {layer: v for layer, raw in RankCollapse.select(metrics).items()
                 if (v := self._changed(f"rankme/{layer}", raw)) is not None}
        if ranks:
            found += [a for r in self._of(RankCollapse) if (a := r.update(step, ranks))]
        for r in self.rules:
            if isinstance(r, _ATTENTION_RULES):
                sel = {k: v for k, raw in r.select(metrics).items()
                       if (v := self._changed(f"{r.name}/{k}", raw)) is not None}
                if sel and (a := r.update(step, sel)):
                    found.append(a)
        return found

    # -- delivery and actions -----------------------------------------------------------------
    def _handle(self, trainer: Any, found: list[Alert]) -> None:
        sink = trainer_sink(trainer)
        stop = ckpt = None
        for alert in found:
            self.alerts.append(alert)
            del self.alerts[:-1000]  # bounded
            sink.alert(alert.title, alert.text, level=alert.level, wait_duration=self.wait_duration)
            sink.log_metrics({f"alerts/{alert.rule}": 1.0}, step=alert.step)
            if self.on_alert is not None:
                self.on_alert(alert)
            action = self.actions[alert.rule]
            if action != "warn":
                stop = stop or alert
            if action == "checkpoint_and_stop":
                ckpt = ckpt or alert
        if "stop" in self.actions.values() or "checkpoint_and_stop" in self.actions.values():
            # a collective on every rank at the same point, like EarlyStopping's check
            strategy = trainer.strategy
            any_stop = strategy.reduce_boolean_decision(stop is not None, all=False)
            # the same on every rank, so the second collective is entered by all or by none
            if any_stop and strategy.reduce_boolean_decision(ckpt is not None, all=False):
                rule = ckpt.rule if ckpt is not None else "remote"
                folder = self.checkpoint_dir or trainer.default_root_dir
                path = os.path.join(folder, f"alert-{rule}-step={trainer.global_step}.ckpt")
                trainer.save_checkpoint(path)
                self.checkpoints.append(path)
            if any_stop:
                trainer.should_stop = True

    # -- state ----------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(rules=[r.name for r in self.rules])

    def state_dict(self) -> dict[str, Any]:
        return {"rules": {r.name: r.state_dict() for r in self.rules},
                "last_seen": dict(self._last_seen)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("rules", {})
        for r in self.rules:
            if r.name in saved:
                r.load_state_dict(saved[r.name])
        self._last_seen = {str(k): float(v) for k, v in state_dict.get("last_seen", {}).items()}
