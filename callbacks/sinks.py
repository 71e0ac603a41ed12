"""Where measurements go: the one module that knows Lightning loggers and W&B.

:class:`TrainerSink` sends plain numbers to *every* logger of the trainer
(``trainer.loggers``: WandbLogger, TensorBoardLogger, CSVLogger, MLFlowLogger, ...) against
``trainer.global_step`` and mirrors them into ``trainer.callback_metrics`` so that Lightning's
own ``EarlyStopping`` and ``ModelCheckpoint`` can monitor any ``geometry/`` metric.

When a :class:`~pytorch_lightning.loggers.WandbLogger` is present it does more:

* ``define_metric("geometry/*", step_metric="trainer/global_step")`` (and ``alerts/*``) once,
  so a value computed later (off the training thread) lands on the step it describes;
* persistence diagrams as a ``wandb.Table`` with a scatter plot, and per-layer profiles
  (intrinsic dimension across layers) as a line plot per measurement;
* ``wandb.alert`` for alerts.

Loggers are rank-zero only by construction in Lightning, so calling the sink on every rank
logs once. Nothing here raises into training: a logger that fails is reported by the caller.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger("geomonitor")

__all__ = ["TrainerSink", "STEP_KEY"]

#: The step metric WandbLogger logs with every row; geometry metrics are charted against it.
STEP_KEY = "trainer/global_step"
_ALERT_LEVELS = ("INFO", "WARN", "ERROR")


class TrainerSink:
    """Send measurements to the trainer's loggers, ``callback_metrics`` and W&B.

    Args:
        trainer: the running ``pytorch_lightning.Trainer``.

    Example:
        >>> sink = TrainerSink(trainer)                      # doctest: +SKIP
        >>> sink.log_metrics({"geometry/sharpness": 12.5}, step=trainer.global_step)
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self._defined = False

    # -- W&B --------------------------------------------------------------------------------
    def wandb_run(self) -> Any | None:
        """The W&B run of the first WandbLogger on rank zero, else None."""
        if getattr(self.trainer, "global_rank", 0) != 0:
            return None
        from pytorch_lightning.loggers import WandbLogger

        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                return logger.experiment
        return None

    def _define_metrics(self) -> None:
        if self._defined:
            return
        self._defined = True
        run = self.wandb_run()
        if run is not None:
            run.define_metric(STEP_KEY)
            for pattern in ("geometry/*", "alerts/*"):
                run.define_metric(pattern, step_metric=STEP_KEY)

    # -- numbers ----------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` to every logger at ``step`` and put them in ``callback_metrics``."""
        if not metrics:
            return
        self._define_metrics()
        clean = {k: float(v) for k, v in metrics.items()}
        for logger in self.trainer.loggers:
            logger.log_metrics(clean, step=step)
        for k, v in clean.items():
            self.trainer.callback_metrics[k] = torch.tensor(v, dtype=torch.float64)

    # -- W&B media --------------------------------------------------------------------------
    def log_diagram(self, key: str, diagrams: Sequence[np.ndarray], step: int) -> None:
        """A persistence diagram as a ``wandb.Table`` (dim, birth, death) and a scatter plot.

        Infinite deaths are left out of the table (W&B cannot plot them). No-op without W&B.
        """
        run = self.wandb_run()
        if run is None:
            return
        import wandb

        self._define_metrics()
        rows = [[dim, float(b), float(d)] for dim, dgm in enumerate(diagrams)
                for b, d in np.asarray(dgm, dtype=float).reshape(-1, 2) if np.isfinite(d)]
        table = wandb.Table(columns=["dim", "birth", "death"], data=rows)
        plot = wandb.plot.scatter(table, "birth", "death", title=f"{key} (step {step})")
        run.log({f"{key}/table": table, f"{key}/plot": plot, STEP_KEY: step})

    def log_profile(self, key: str, names: Sequence[str], values: Sequence[float], step: int) -> None:
        """A per-layer profile (e.g. intrinsic dimension across layers) as a W&B line plot."""
        run = self.wandb_run()
        if run is None or not names:
            return
        import wandb

        self._define_metrics()
        data = [[i, str(n), float(v)] for i, (n, v) in enumerate(zip(names, values))]
        table = wandb.Table(columns=["depth", "layer", "value"], data=data)
        plot = wandb.plot.line(table, "depth", "value", title=f"{key} (step {step})")
        run.log({f"{key}/table": table, f"{key}/plot": plot, STEP_KEY: step})

    # -- alerts -----------------------------------------------------------------------------
    def alert(self, title: str, text: str, level: str = "WARN", wait_duration: float = 300.0) -> None:
        """A console warning always, and ``wandb.alert`` when a W&B run is attached.

        Args:
            title: short headline.
            text: what happened, the values, the threshold and a suggested action.
            level: one of ``"INFO"``, ``"WARN"``, ``"ERROR"``.
            wait_duration: seconds W&B waits before sending another alert with this title.
        """
        if level not in _ALERT_LEVELS:
            raise ValueError(f"level must be one of {_ALERT_LEVELS}, got {level!r}")
        log.warning("%s: %s", title, text)
        run = self.wandb_run()
        if run is not None:
            import wandb

            run.alert(title=title, text=text, level=getattr(wandb.AlertLevel, level),
                      wait_duration=float(wait_duration))
