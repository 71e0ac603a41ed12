"""Early stopping on neural persistence: stop when the weights' topology stops growing.

Rieck et al., "Neural Persistence: A Complexity Measure for Deep Neural Networks Using
Algebraic Topology", ICLR 2019, Algorithm 2: at the end of every epoch compute the mean
normalised neural persistence ``NP`` of the network (the average over layers of the
normalised 2-norm of each layer's 0-dimensional persistence diagram under the descending
filtration of its absolute weights); when ``NP > best + delta_min`` remember it and reset the
counter, else count; stop when the counter reaches the patience ``g``. No validation data is
needed: the criterion reads the weights only.

:class:`NeuralPersistenceEarlyStopping` is Lightning's ``EarlyStopping`` with
``monitor="geometry/neural_persistence/mean"`` and ``mode="max"``, a thin adapter over the
framework-free rule :class:`geomonitor.monitor.early_stopping.NeuralPersistenceStopping` (the
one definition of the criterion, which plain loops and the Hugging Face callback use too). At
every training-epoch end it computes the value with
:func:`geomonitor.monitor.families.neural_persistence.neural_persistence_metrics` -- the one
definition the monitor's neural-persistence family uses too (Linear, Conv and Hugging Face
``Conv1D`` layers) -- logs it (and the per-layer values under
``geometry/neural_persistence/<layer>``) through :class:`TrainerSink` -- which also puts it
in ``trainer.callback_metrics`` -- and runs the parent's check, whose decision is the rule's
(:attr:`rule`; ``wait_count`` and ``best_score`` mirror it); the DDP-consistent stop decision
(any rank stops every rank), ``verbose`` and ``stopped_epoch`` are Lightning's own. The
checkpointed state is Lightning's plus the rule's ``state_dict`` under ``"rule"``.

Defaults: Algorithm 2's parameters are the patience ``g`` and ``delta_min``; the paper's
experiments sweep the patience together with a burn-in (epochs before the criterion is
applied) instead of fixing single values. We use ``min_delta = 0`` (Algorithm 2 with any
increase counting as an improvement; NP of a trained network changes by ~1e-3 per epoch
late in training, so a positive delta would be scale-dependent), ``patience = 3`` epochs
(Lightning's default, within the range the paper sweeps) and ``burn_in = 0``.

Cost per epoch: one neural-persistence evaluation, O(E log E) for E weights (a maximum
spanning forest per layer). Failure modes: a model without layers that
``neural_persistence_network`` understands raises its ``ValueError`` at the first epoch end;
non-finite weights give a non-finite value, which stops training under ``check_finite=True``
(Lightning's behaviour).

Example:
    >>> from geomonitor.callbacks.early_stopping import NeuralPersistenceEarlyStopping
    >>> es = NeuralPersistenceEarlyStopping(patience=3)
    >>> # pl.Trainer(callbacks=[es]).fit(model, train_loader)   # no val_dataloaders needed
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from geomonitor.callbacks._lightning import EARLY_STOPPING_BASES
from geomonitor.callbacks.sinks import trainer_sink
from geomonitor.monitor.early_stopping import NP_KEY, NeuralPersistenceStopping
from geomonitor.monitor.families.neural_persistence import neural_persistence_metrics

__all__ = ["NeuralPersistenceEarlyStopping", "NP_KEY"]


class NeuralPersistenceEarlyStopping(*EARLY_STOPPING_BASES):
    """Lightning ``EarlyStopping`` on the mean normalised neural persistence (Rieck et al. 2019).

    Args:
        patience: epochs without improvement before stopping (Algorithm 2's ``g``; >= 1).
        min_delta: an improvement is ``NP > best + min_delta`` (Algorithm 2's ``delta_min``; >= 0).
        burn_in: epochs at the start during which the value is logged but not checked (>= 0).
        log_per_layer: also log ``geometry/neural_persistence/<layer>``.
        measure: ``model -> {key: value}`` with :data:`NP_KEY`; default
            :func:`~geomonitor.monitor.families.neural_persistence.neural_persistence_metrics`
            on the LightningModule.
        verbose, check_finite, stopping_threshold, divergence_threshold, log_rank_zero_only:
            as in ``EarlyStopping``.

    Attributes:
        rule: the :class:`~geomonitor.monitor.early_stopping.NeuralPersistenceStopping` that decides.
        history: the value measured at each epoch end.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0, burn_in: int = 0, *,
                 log_per_layer: bool = True, measure: Callable[[Any], Any] | None = None,
                 verbose: bool = False, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 log_rank_zero_only: bool = False) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(f"burn_in must be an int >= 0, got {burn_in!r}")
        if measure is not None and not callable(measure):
            raise ValueError(f"measure must be callable or None, got {measure!r}")
        self.rule = NeuralPersistenceStopping(patience, float(min_delta), burn_in,
                                              check_finite=bool(check_finite),
                                              stopping_threshold=stopping_threshold,
                                              divergence_threshold=divergence_threshold)
        super().__init__(monitor=NP_KEY, min_delta=float(min_delta), patience=patience, verbose=verbose,
                         mode="max", strict=True, check_finite=check_finite,
                         stopping_threshold=stopping_threshold, divergence_threshold=divergence_threshold,
                         check_on_train_epoch_end=True, log_rank_zero_only=log_rank_zero_only)
        self.burn_in = burn_in
        self.log_per_layer = bool(log_per_layer)
        self.measure = measure or neural_persistence_metrics
        self.history: list[float] = []  # one value per epoch (bounded by max_epochs)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = dict(self.measure(pl_module))
        self.history.append(float(metrics[NP_KEY]))
        if not self.log_per_layer:
            metrics = {NP_KEY: metrics[NP_KEY]}
        trainer_sink(trainer).log_metrics(metrics, step=trainer.global_step)
        self._epoch = trainer.current_epoch
        if trainer.current_epoch < self.burn_in:
            self.rule.update(trainer.current_epoch, self.history[-1])  # counted, not checked
            return
        super().on_train_epoch_end(trainer, pl_module)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        # the rule decides, on the value as measured (float64; ``current`` is the logged copy)
        value = self.history[-1] if self.history else float(current)
        alert = self.rule.update(getattr(self, "_epoch", self.rule.n_seen), value)
        self.wait_count = self.rule.wait
        if self.rule.best > -math.inf:
            self.best_score = torch.tensor(self.rule.best)
        if alert is None:
            return False, None
        reason_enum = getattr(type(self.stopping_reason), {
            "non_finite": "NON_FINITE_METRIC", "stopping_threshold": "STOPPING_THRESHOLD",
            "divergence_threshold": "DIVERGENCE_THRESHOLD", "patience": "PATIENCE_EXHAUSTED",
        }[self.rule.reason], None) if hasattr(self, "stopping_reason") else None
        if reason_enum is not None:
            self.stopping_reason = reason_enum
        return True, f"{alert.text}. Signaling Trainer to stop."

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rule": self.rule.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "rule" in state_dict:
            self.rule.load_state_dict(state_dict["rule"])
        else:  # a checkpoint written before the rule: its counter and best value
            self.rule.reset()
            best = float(self.best_score)
            self.rule.best, self.rule.wait = best, int(self.wait_count)
            self.rule.n_seen = self.burn_in if math.isfinite(best) else 0
