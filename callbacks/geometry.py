"""``GeometryMonitor``: one Lightning callback for the geometry of a model while it trains.

Measured on a fixed probe set (drawn once at fit start, by index, seeded):

* intrinsic dimension (TwoNN; Facco et al., 2017) of the chosen layers' activations,
  ``geometry/id/<layer>`` — every 100 optimizer steps by default;
* sharpness, the top Hessian eigenvalue of the training loss, and ``eos_ratio`` = sharpness /
  (2/η) (Cohen et al., 2021; preconditioned for Adam, Cohen et al., 2022) —
  ``geometry/sharpness``, ``geometry/eos_ratio`` — every 50 steps;
* persistence summaries of the activations (Vietoris–Rips H0/H1 via giotto-ph, off the
  training thread), ``geometry/ph/<layer>/<summary>`` — every epoch;
* neural persistence of the weights (Rieck et al., 2019), ``geometry/neural_persistence``
  (+ ``/<layer>``) — every epoch.

Everything goes through :class:`~geomonitor.callbacks.sinks.TrainerSink`: every logger against
``trainer.global_step``, ``trainer.callback_metrics`` (so ``EarlyStopping`` /
``ModelCheckpoint`` can monitor ``geometry/...``), and under W&B also persistence diagrams and
the ID profile across layers. ``geometry/errors`` counts failed measurements.

Costs per measurement (probe size N=256, selected layers L): one no-grad forward for
activations, O(L N^2 D) for TwoNN, ≤ ``sharpness_max_hvp`` Hessian-vector products for
sharpness, giotto-ph on ≤ ``topology_landmarks`` points per layer in a child process.
See ``benchmarks/bench_monitor_overhead.py`` for the measured overhead.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from geomonitor.callbacks import _checks as check
from geomonitor.callbacks._base import GeometryCallbackBase
from geomonitor.callbacks._families import (IntrinsicDimensionFamily, NeuralPersistenceFamily,
                                            SharpnessFamily, TopologyFamily)

__all__ = ["GeometryMonitor"]


class GeometryMonitor(GeometryCallbackBase):
    """Intrinsic dimension, sharpness, persistence and neural persistence, on a schedule.

    A family is switched off by setting both its ``*_every_n_steps`` and
    ``*_every_n_epochs`` to ``None``. Steps are optimizer steps (``trainer.global_step``);
    epoch schedules fire at the end of every n-th training epoch.

    Args:
        layers: ``"auto"`` (every leaf Linear/Conv module), a module-name glob
            (``"encoder.*"``) or a list of globs; a pattern matching nothing is a
            ``ValueError`` at setup listing the available names.
        reduce: how a layer output of shape [B, T, D] / [B, C, H, W] becomes (B, features):
            ``"flatten"``, ``"mean"`` (over tokens/positions) or ``"last"`` (last token).
        probe_size: number of probe samples N (drawn once; all families measure on them).
        probe_seed: seed of the probe draw and of the estimators' own generators.
        probe_data: ``None`` (draw from ``trainer.train_dataloader``'s dataset by index), a
            DataLoader, a tensor or a tuple of tensors.
        id_method: ``"twonn"``, ``"mle"`` or ``"pca"``.
        id_every_n_steps, id_every_n_epochs: schedule of the intrinsic dimension.
        sharpness_every_n_steps, sharpness_every_n_epochs: schedule of the sharpness.
        sharpness_max_hvp: Hessian-vector-product budget per sharpness measurement.
        sharpness_tol: relative tolerance of the power/Lanczos iteration.
        topology_every_n_steps, topology_every_n_epochs: schedule of the persistence.
        topology_landmarks: points kept (maxmin landmarks) per persistence computation,
            ``None`` for all ``probe_size``.
        np_every_n_steps, np_every_n_epochs: schedule of the neural persistence.
        log_diagrams: under W&B, log each persistence diagram (table + scatter plot).
        prog_bar: metric names (without ``geometry/``) shown in the progress bar.
        loss_fn: ``loss_fn(pl_module, batch) -> scalar tensor`` for sharpness; by default
            ``pl_module.training_step(batch, 0)`` (its ``log``/``log_dict`` are no-ops on
            the instance during that call, so nothing it logs is duplicated or changed).
        forward_fn: ``forward_fn(pl_module, batch)`` for the activation forward; by default
            ``pl_module(x)`` with ``x`` the batch, its first element, or ``**batch``.
        strict: re-raise measurement errors instead of counting them (for tests).
        max_pending: background jobs allowed in flight before new ones are dropped.
        max_overhead: overhead budget, a fraction of training wall time in (0, 1]: a due
            measurement is deferred (to the first later step the budget allows) while the
            monitor's cost would exceed this fraction of training time, and pending
            background work is waited for at the end of fit only within what is left (see
            :class:`geomonitor.monitor.OverheadBudget`). The cost counts the measurements,
            the per-batch bookkeeping, the background thread's and child process's CPU
            time, Lightning's calls of the callback's hooks (timed in the loop,
            :mod:`geomonitor.callbacks._dispatch`) and the slowdown a measurement leaves in
            the batches after it (:class:`geomonitor.monitor.AfterEffectMeter`). The default
            0.04 is one point under a 5% target, for what is estimated rather than timed.
            A family's first measurement needs 20 ms of credit at least
            (``monitor.budget.first_cost``); families a training was too short for are
            named in a warning at the end of fit.
            ``None`` measures exactly on schedule and finishes all pending work
            (reproducible series, e.g. for tests and for DDP, where timing differs per rank).
            Deferrals per family are counted in ``monitor.budget.deferred``.

    Example:
        >>> trainer = pl.Trainer(callbacks=[GeometryMonitor(layers=["fc1", "fc2"])])  # doctest: +SKIP

        or in a LightningCLI config::

            trainer:
              callbacks:
                - class_path: geomonitor.callbacks.GeometryMonitor
                  init_args: {layers: ["encoder.*"], sharpness_every_n_steps: 25}
    """

    def __init__(
        self,
        layers: str | list[str] = "auto",
        reduce: str = "flatten",
        probe_size: int = 256,
        probe_seed: int = 0,
        probe_data: Any = None,
        id_method: str = "twonn",
        id_every_n_steps: int | None = 100,
        id_every_n_epochs: int | None = None,
        sharpness_every_n_steps: int | None = 50,
        sharpness_every_n_epochs: int | None = None,
        sharpness_max_hvp: int = 20,
        sharpness_tol: float = 1e-3,
        topology_every_n_steps: int | None = None,
        topology_every_n_epochs: int | None = 1,
        topology_landmarks: int | None = 128,
        np_every_n_steps: int | None = None,
        np_every_n_epochs: int | None = 1,
        log_diagrams: bool = True,
        prog_bar: str | list[str] | None = "eos_ratio",
        loss_fn: Callable[[Any, Any], Any] | None = None,
        forward_fn: Callable[[Any, Any], Any] | None = None,
        strict: bool = False,
        max_pending: int = 4,
        max_overhead: float | None = 0.04,
    ) -> None:
        layers = check.layers(layers)
        check.choice("reduce", reduce, check.REDUCTIONS)
        probe_data = check.common(probe_size, probe_seed, probe_data, strict, max_pending)
        check.choice("id_method", id_method, check.ID_METHODS)
        check.positive_int("sharpness_max_hvp", sharpness_max_hvp)
        check.positive_float("sharpness_tol", sharpness_tol)
        check.landmarks("topology_landmarks", topology_landmarks)
        check.flag("log_diagrams", log_diagrams)
        bar = check.prog_bar(prog_bar)

        families = []
        every = check.schedule("id_", id_every_n_steps, id_every_n_epochs)
        if every is not None:
            families.append(IntrinsicDimensionFamily(every, method=id_method))
        every = check.schedule("sharpness_", sharpness_every_n_steps, sharpness_every_n_epochs)
        if every is not None:
            families.append(SharpnessFamily(every, max_hvp=sharpness_max_hvp, tol=sharpness_tol,
                                            seed=probe_seed, loss_fn=loss_fn))
        every = check.schedule("topology_", topology_every_n_steps, topology_every_n_epochs)
        if every is not None:
            families.append(TopologyFamily(every, n_landmarks=topology_landmarks, seed=probe_seed,
                                           log_diagrams=log_diagrams))
        every = check.schedule("np_", np_every_n_steps, np_every_n_epochs)
        if every is not None:
            families.append(NeuralPersistenceFamily(every))
        if not families:
            raise ValueError("GeometryMonitor needs at least one family on: every *_every_n_steps "
                             "and *_every_n_epochs is None")

        identity = dict(layers=layers, reduce=reduce, probe_size=probe_size,
                        probe_seed=probe_seed, families=[f.name for f in families])
        super().__init__(families, identity=identity, layers=layers, reduce=reduce,
                         probe_size=probe_size, probe_seed=probe_seed, probe_data=probe_data,
                         forward_fn=forward_fn, prog_bar=bar, strict=strict,
                         max_pending=max_pending, max_overhead=max_overhead)
