"""Where measurements go: the one module that knows Lightning loggers and W&B.

:class:`TrainerSink` sends plain numbers to *every* logger of the trainer
(``trainer.loggers``: WandbLogger, TensorBoardLogger, CSVLogger, MLFlowLogger, ...) against
``trainer.global_step`` and mirrors them into ``trainer.callback_metrics`` so that Lightning's
own ``EarlyStopping`` and ``ModelCheckpoint`` can monitor any ``geometry/`` metric.

When a :class:`~pytorch_lightning.loggers.WandbLogger` is present it does more:

* ``define_metric("geometry/*", step_metric="trainer/global_step")`` (and ``alerts/*``) once,
  so a value computed later (off the training thread) lands on the step it describes;
* each persistence diagram as one scatter chart (death against birth) logged under its key,
  whose table (dim, birth, death) W&B stores as ``<key>_table``;
* the ID profile (intrinsic dimension against depth) as one line-series chart under its key,
  one line per measured step (at most :data:`PROFILE_LINES`, spread over the run), from one
  table ``<key>_table`` (columns depth, layer, step, series, value);
* past ``max_layers`` measured layers, statistics over layers instead of per-layer keys
  (:class:`~geomonitor.callbacks.wandb_layers.LayerBudget`: a W&B project holds under 10,000
  keys); the other loggers still get every layer;
* Hessian spectral densities as a ``wandb.Histogram`` of the quadrature mass and a
  ``wandb.Table`` of nodes and weights;
* ``wandb.alert`` for alerts.

Every logger is called on its own: one that raises is warned once (``RuntimeWarning``)
and the others, and ``callback_metrics`` (updated first), still get every value. Loggers are
rank-zero only by construction in Lightning, so calling the sink on every rank logs once.

:class:`WandbSink` is the same W&B treatment for a plain loop (``Monitor(sink=wandb.log)``
wraps the run in it): ``geometry/*`` charted against ``geometry/step``, values added to the
current row without committing it, so the loop's own ``wandb.log`` steps are kept.
"""
from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from geomonitor.callbacks.wandb_layers import DEFAULT_MAX_LAYERS, LayerBudget

log = logging.getLogger("geomonitor")

__all__ = ["TrainerSink", "WandbSink", "trainer_sink", "STEP_KEY", "GEOMETRY_STEP", "PROFILE_LINES"]

#: The step metric WandbLogger logs with every row; geometry metrics are charted against it.
STEP_KEY = "trainer/global_step"
#: The step metric of :class:`WandbSink` (plain loops): the step a value describes.
GEOMETRY_STEP = "geometry/step"
_ALERT_LEVELS = ("INFO", "WARN", "ERROR")
#: The most steps (lines) one ID-profile chart shows: the first, the last and evenly spaced ones.
PROFILE_LINES = 8


class TrainerSink:
    """Send measurements to the trainer's loggers, ``callback_metrics`` and W&B.

    Args:
        trainer: the running ``pytorch_lightning.Trainer``.
        max_layers: W&B gets per-layer keys for at most this many layers, statistics over
            layers past it (:mod:`~geomonitor.callbacks.wandb_layers`); ``None``: no limit.

    Example:
        >>> sink = TrainerSink(trainer)                      # doctest: +SKIP
        >>> sink.log_metrics({"geometry/sharpness": 12.5}, step=trainer.global_step)
    """

    def __init__(self, trainer: Any, max_layers: int | None = DEFAULT_MAX_LAYERS) -> None:
        self.trainer = trainer
        self.budget = LayerBudget(max_layers)
        self.profiles = _Profiles()
        self._defined = False
        self._failed: set[str] = set()

    # -- W&B --------------------------------------------------------------------------------
    def wandb_run(self) -> Any | None:
        """The W&B run of the first WandbLogger on rank zero, else None."""
        if getattr(self.trainer, "global_rank", 0) != 0:
            return None
        from geomonitor.callbacks._lightning import WANDB_LOGGERS

        for logger in self.trainer.loggers:
            if isinstance(logger, WANDB_LOGGERS):
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
        clean = {k: float(v) for k, v in metrics.items()}
        for k, v in clean.items():
            self.trainer.callback_metrics[k] = torch.tensor(v, dtype=torch.float64)
        try:
            self._define_metrics()
        except Exception as exc:  # noqa: BLE001 - W&B set-up failing leaves the other loggers
            self._warn("wandb", exc)
        from geomonitor.callbacks._lightning import WANDB_LOGGERS

        wandb_metrics = None
        for logger in self.trainer.loggers:
            try:
                if isinstance(logger, WANDB_LOGGERS):
                    if wandb_metrics is None:
                        wandb_metrics = self.budget.metrics(clean)
                    logger.log_metrics(wandb_metrics, step=step)
                else:
                    logger.log_metrics(clean, step=step)
            except Exception as exc:  # noqa: BLE001 - one logger never takes the others down
                self._warn(type(logger).__name__, exc)

    def _warn(self, name: str, exc: BaseException) -> None:
        if name not in self._failed:
            self._failed.add(name)
            warnings.warn(f"{name} failed to log geometry metrics: {exc!r}; the other loggers still "
                          "get them (warned once)", RuntimeWarning, stacklevel=3)

    # -- W&B media --------------------------------------------------------------------------
    def log_diagram(self, key: str, diagrams: Sequence[np.ndarray], step: int) -> None:
        """A persistence diagram as one scatter chart of a ``wandb.Table`` (dim, birth, death).

        Infinite deaths are left out of the table (W&B cannot plot them). No-op without W&B,
        and for a layer past ``max_layers``.
        """
        run = self.wandb_run()
        if run is None or not self.budget.keeps_diagram(key):
            return
        self._define_metrics()
        run.log({**_diagram_media(key, diagrams, step), STEP_KEY: step})

    def log_profile(self, key: str, names: Sequence[str], values: Sequence[float], step: int) -> None:
        """A per-layer profile (intrinsic dimension against depth) as one W&B line-series chart."""
        run = self.wandb_run()
        if run is None or not names:
            return
        self._define_metrics()
        run.log({**self.profiles.media(key, names, values, step), STEP_KEY: step})

    def log_spectrum(self, key: str, nodes: Sequence[float], weights: Sequence[float], step: int) -> None:
        """A spectral density (quadrature nodes and weights) as a W&B histogram and table."""
        run = self.wandb_run()
        if run is None or len(nodes) == 0:
            return
        self._define_metrics()
        run.log({**_spectrum_media(key, nodes, weights), STEP_KEY: step})

    # -- alerts -----------------------------------------------------------------------------
    def alert(self, title: str, text: str, level: str = "WARN", wait_duration: float = 300.0) -> None:
        """A console warning always, and ``wandb.alert`` when a W&B run is attached.

        Args:
            title: short headline.
            text: what happened, the values, the threshold and a suggested action.
            level: one of ``"INFO"``, ``"WARN"``, ``"ERROR"``.
            wait_duration: seconds W&B waits before sending another alert with this title.
        """
        _alert(self.wandb_run(), title, text, level, wait_duration)


_SINKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_UNSET: Any = object()


def trainer_sink(trainer: Any, max_layers: int | None = _UNSET) -> TrainerSink:
    """The one :class:`TrainerSink` of ``trainer``, shared by every callback of the fit: one
    ``define_metric``, and one warning per failing logger for the whole fit. ``max_layers``,
    when given, sets the W&B layer budget while it has counted no layer yet (the monitor's
    setting wins over a callback that made the sink first without one)."""
    sink = _SINKS.get(trainer)
    if sink is None:
        sink = _SINKS[trainer] = TrainerSink(
            trainer, DEFAULT_MAX_LAYERS if max_layers is _UNSET else max_layers)
    elif max_layers is not _UNSET and not sink.budget.layers and not sink.budget.aggregated:
        sink.budget = LayerBudget(max_layers)
    return sink


def _diagram_media(key: str, diagrams: Sequence[np.ndarray], step: int) -> dict[str, Any]:
    """A diagram as one scatter chart (death against birth) of a ``wandb.Table`` (dim, birth,
    death; infinite deaths left out), logged under ``key`` (W&B stores the table as ``<key>_table``)."""
    import wandb

    rows = [[dim, float(b), float(d)] for dim, dgm in enumerate(diagrams)
            for b, d in np.asarray(dgm, dtype=float).reshape(-1, 2) if np.isfinite(d)]
    table = wandb.Table(columns=["dim", "birth", "death"], data=rows)
    return {key: wandb.plot.scatter(table, "birth", "death", title=f"{key} (step {step})")}


def _spread(n: int, k: int) -> list[int]:
    """``min(n, k)`` indices of ``range(n)`` spread evenly, the first and the last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


class _Profiles:
    """The profiles of a run so far, per key: each delivery re-logs one line-series chart of
    the steps measured so far (at most :data:`PROFILE_LINES`: the first, the last and evenly
    spaced ones), so one panel shows how the profile across depth moved. Held by the sink, not
    the monitor's ``state_dict``: a resumed run's chart starts from its first profile after the
    resume (the earlier tables stay in the run)."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[int, tuple[list[str], list[float]]]] = {}

    def media(self, key: str, names: Sequence[str], values: Sequence[float], step: int) -> dict[str, Any]:
        import wandb

        runs = self.seen.setdefault(key, {})
        runs[int(step)] = ([str(n) for n in names], [float(v) for v in values])
        steps = sorted(runs)
        shown = [steps[i] for i in _spread(len(steps), PROFILE_LINES)]
        data = [[depth, layer, s, f"step {s}", value] for s in shown
                for depth, (layer, value) in enumerate(zip(*runs[s]))]
        table = wandb.Table(columns=["depth", "layer", "step", "series", "value"], data=data)
        chart = wandb.plot_table(
            "wandb/lineseries/v0", table, {"step": "depth", "lineKey": "series", "lineVal": "value"},
            {"title": f"{key} against depth (steps {shown[0]}..{shown[-1]})", "xname": "depth"})
        return {key: chart}


#: Bins of the spectrum histogram.
SPECTRUM_BINS = 64


def _spectrum_media(key: str, nodes: Sequence[float], weights: Sequence[float]) -> dict[str, Any]:
    """A discrete measure as a ``wandb.Histogram`` of its mass per bin (64 bins over the
    nodes' range) and a ``wandb.Table`` (node, weight)."""
    import wandb

    x, w = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float)
    hist = np.histogram(x, bins=SPECTRUM_BINS, weights=w)
    table = wandb.Table(columns=["node", "weight"], data=[[float(a), float(b)] for a, b in zip(x, w)])
    return {f"{key}/histogram": wandb.Histogram(np_histogram=hist), f"{key}/table": table}


def _alert(run: Any, title: str, text: str, level: str, wait_duration: float) -> None:
    if level not in _ALERT_LEVELS:
        raise ValueError(f"level must be one of {_ALERT_LEVELS}, got {level!r}")
    log.warning("%s: %s", title, text)
    if run is not None:
        import wandb

        run.alert(title=title, text=text, level=getattr(wandb.AlertLevel, level),
                  wait_duration=float(wait_duration))


class WandbSink:
    """W&B for a plain training loop: ``Monitor(model, probe, sink=WandbSink())``.

    ``define_metric("geometry/*", step_metric="geometry/step")`` once, then every batch of
    values is added to the current W&B row with ``geometry/step`` = the step it describes
    (``commit=False``: the loop's next ``wandb.log`` commits the row, so its steps are
    untouched; a value computed in the background lands on its own step in the charts).
    Diagrams, profiles, spectra and alerts as in :class:`TrainerSink`.

    Args:
        run: a W&B run; ``None`` uses ``wandb.run`` at each call (nothing is logged while there
            is none).
        commit: commit a row per delivery instead of adding to the loop's current row (for a
            loop that commits rarely, such as the Hugging Face Trainer every ``logging_steps``:
            uncommitted values of several steps would merge into one row).
        step_keys: the keys that carry the described step in each row (the first is the step
            metric ``geometry/*`` is charted against).
        max_layers: per-layer keys for at most this many layers, statistics over layers past
            it (:mod:`~geomonitor.callbacks.wandb_layers`); ``None``: no limit.

    Raises:
        ValueError: empty ``step_keys``, or ``max_layers`` not ``None`` or an int >= 1.
    """

    def __init__(self, run: Any = None, *, commit: bool = False,
                 step_keys: Sequence[str] = (GEOMETRY_STEP,),
                 max_layers: int | None = DEFAULT_MAX_LAYERS) -> None:
        if not step_keys or not all(isinstance(k, str) and k for k in step_keys):
            raise ValueError(f"step_keys must be a non-empty sequence of keys, got {step_keys!r}")
        self.budget = LayerBudget(max_layers)
        self.profiles = _Profiles()
        self._run = run
        self.commit = bool(commit)
        self.step_keys = tuple(step_keys)
        self._defined: set[int] = set()
        self._row: tuple[int, int] | None = None    # (run, W&B step) of the row written last
        self._described: int | None = None         # the geometry step that row describes
        self._held: dict[int, dict[str, Any]] = {}  # step -> values waiting for a row of their own

    def wandb_run(self) -> Any | None:
        if self._run is not None:
            return self._run
        import wandb

        return wandb.run

    def _ready(self) -> Any | None:
        run = self.wandb_run()
        if run is not None and id(run) not in self._defined:
            self._defined.add(id(run))
            run.define_metric(self.step_keys[0])
            for pattern in ("geometry/*", "alerts/*"):
                run.define_metric(pattern, step_metric=self.step_keys[0])
        return run

    def _log(self, data: dict[str, Any], step: int) -> None:
        run = self._ready()
        if run is None:
            return
        if self.commit:
            run.log({**data, **{k: int(step) for k in self.step_keys}}, commit=True)
            return
        # one uncommitted row describes one step: values of another step than the one the
        # loop's current row already holds wait for the next row (or ``flush``)
        self._release(run)
        row = (id(run), run.step)
        if row == self._row and step != self._described:
            self._held.setdefault(step, {}).update(data)
            return
        run.log({**data, **{k: int(step) for k in self.step_keys}}, commit=False)
        self._row, self._described = row, step

    def _release(self, run: Any) -> None:
        if self._held and (id(run), run.step) != self._row:
            step = min(self._held)
            run.log({**self._held.pop(step), **{k: int(step) for k in self.step_keys}}, commit=False)
            self._row, self._described = (id(run), run.step), step

    def flush(self) -> None:
        """Write the values still waiting, each step in a row of its own after the last."""
        run = self.wandb_run()
        while run is not None and self._held:
            step = min(self._held)
            run.log({**self._held.pop(step), **{k: int(step) for k in self.step_keys}},
                    step=run.step + 1, commit=False)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if metrics and self.wandb_run() is not None:
            self._log(self.budget.metrics({k: float(v) for k, v in metrics.items()}), step)

    def log_diagram(self, key: str, diagrams: Sequence[np.ndarray], step: int) -> None:
        if self.wandb_run() is not None and self.budget.keeps_diagram(key):
            self._log(_diagram_media(key, diagrams, step), step)

    def log_profile(self, key: str, names: Sequence[str], values: Sequence[float], step: int) -> None:
        if names and self.wandb_run() is not None:
            self._log(self.profiles.media(key, names, values, step), step)

    def log_spectrum(self, key: str, nodes: Sequence[float], weights: Sequence[float], step: int) -> None:
        if len(nodes):
            self._log(_spectrum_media(key, nodes, weights), step)

    def alert(self, title: str, text: str, level: str = "WARN", wait_duration: float = 300.0) -> None:
        _alert(self.wandb_run(), title, text, level, wait_duration)
