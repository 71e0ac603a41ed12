"""``GeometryMonitor``: one Lightning callback for the geometry of a model while it trains.

Measured on a fixed probe set (drawn once at fit start, by index, seeded):

* intrinsic dimension (TwoNN; Facco et al., 2017) of the chosen layers' activations,
  ``geometry/id/<layer>``;
* sharpness, the top Hessian eigenvalue of the training loss, and ``eos_ratio`` = sharpness /
  (2/η) (Cohen et al., 2021; preconditioned for Adam, Cohen et al., 2022) —
  ``geometry/sharpness``, ``geometry/eos_ratio``;
* persistence summaries of the activations (Vietoris–Rips H0/H1 via giotto-ph, off the
  training thread), ``geometry/ph/<layer>/<summary>``;
* neural persistence of the weights (Rieck et al., 2019), ``geometry/neural_persistence/...``
  (``/mean`` and ``/<layer>``);
* the parameter-symmetry indicators, ``geometry/symmetry/...``.

Each family asks for a point every 10 optimizer steps by default; the cost cap
(``max_overhead=0.05``) stretches the periods to fit its share of the fit, which it knows
from ``trainer.estimated_stepping_batches`` (:mod:`geomonitor.monitor.cost`), logs the
period in force as ``geometry/period/<family>`` and prints a summary at the end of the fit.

The measuring is done by :class:`geomonitor.monitor.Monitor` (this class is its Lightning
adapter). Everything goes through :class:`~geomonitor.callbacks.sinks.TrainerSink`: every
logger against ``trainer.global_step``, ``trainer.callback_metrics`` (so ``EarlyStopping`` /
``ModelCheckpoint`` can monitor ``geometry/...``), and under W&B also persistence diagrams and
the ID profile across layers. ``geometry/errors`` counts failed measurements,
``geometry/skipped/<family>`` the occurrences the cost cap skipped.

Costs per measurement (probe size N=256, selected layers L): one no-grad forward for
activations, O(L N^2 D) for TwoNN, ≤ ``sharpness_max_hvp`` Hessian-vector products for
sharpness, giotto-ph on ≤ ``topology_landmarks`` points per layer in a child process.
See ``benchmarks/bench_defaults.py`` for the measured overhead and points per curve.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from geomonitor.callbacks import _checks as check
from geomonitor.callbacks._adapter import MonitorCallback

__all__ = ["GeometryMonitor"]


class GeometryMonitor(MonitorCallback):
    """Intrinsic dimension, sharpness, persistence and neural persistence, on a schedule.

    A family is switched off by setting both its ``*_every_n_steps`` and
    ``*_every_n_epochs`` to ``None``. Steps are optimizer steps (``trainer.global_step``);
    epoch schedules fire at the end of every n-th training epoch.

    Args:
        layers: ``"auto"``, a module-name glob (``"encoder.*"``) or a list of globs; a
            pattern matching nothing is a ``ValueError`` at setup listing the names.
        reduce: how a layer output of shape [B, T, D] / [B, C, H, W] becomes (B, features):
            ``"auto"`` (mean over tokens/positions, features where the module keeps them),
            ``"flatten"``, ``"mean"`` or ``"last"`` (last token).
        probe_size: number of probe samples N (drawn once; all families measure on them).
        probe_seed: seed of the probe draw and of the estimators' own generators.
        probe_data: ``None`` (draw from ``trainer.train_dataloader``'s dataset by index), a
            DataLoader, a tensor or a tuple of tensors.
        id_method: intrinsic-dimension estimator: ``"twonn"``, ``"mle"`` or ``"pca"``.
        id_every_n_steps: measure the intrinsic dimension every n optimizer steps (None: off).
        id_every_n_epochs: measure the intrinsic dimension every n epochs (None: off).
        sharpness_every_n_steps: measure the sharpness every n optimizer steps (None: off).
        sharpness_every_n_epochs: measure the sharpness every n epochs (None: off).
        sharpness_max_hvp: Hessian-vector-product budget per sharpness measurement.
        sharpness_tol: relative tolerance of the Lanczos iteration.
        sharpness_probe_size: probe samples the sharpness uses (the first n; None: all).
        sharpness_hvp: Hessian-vector products by ``"fd"`` (central differences, ~2 training
            steps each), ``"exact"`` (double backward, ~2.5) or ``"auto"`` (exact for models
            with ReLU-family or max-pooling modules, where differences see the kinks).
        topology_every_n_steps: compute persistence every n optimizer steps (None: off).
        topology_every_n_epochs: compute persistence every n epochs (None: off).
        topology_landmarks: points kept (maxmin landmarks) per persistence computation,
            ``None`` for all ``probe_size``.
        np_every_n_steps: measure the neural persistence every n optimizer steps (None: off).
        np_every_n_epochs: measure the neural persistence every n epochs (None: off).
        symmetry_every_n_steps: measure the parameter-symmetry indicators (balance, dead and
            duplicate units, ranks, neural collapse) every n optimizer steps (None: off).
        symmetry_every_n_epochs: measure the parameter-symmetry indicators every n epochs
            (None: off).
        connectivity_every_n_steps: measure the loss barrier between the weights at the
            previous measurement and now every n optimizer steps (None: off). Keeps one CPU
            copy of the weights.
        connectivity_every_n_epochs: measure that loss barrier every n epochs (None: off).
        spectrum_every_n_steps: measure the Hessian spectral density (trace, outlier count,
            W&B histogram) every n optimizer steps (None: off). 40 Hessian-vector products
            on the ``sharpness_probe_size`` samples per measurement.
        spectrum_every_n_epochs: measure the Hessian spectral density every n epochs (None: off).
        attention_every_n_steps: read the transformer instability signals (max attention
            logit and entropy per attention module, output-logit norms;
            :class:`~geomonitor.monitor.families.AttentionFamily`) every n optimizer steps
            (None: off).
        attention_every_n_epochs: read them every n epochs (None: off).
        log_diagrams: under W&B, log each persistence diagram (table + scatter plot).
        prog_bar: metric names (without ``geometry/``) shown in the progress bar.
        loss_fn: ``loss_fn(pl_module, batch) -> scalar tensor`` for sharpness; by default
            ``pl_module.training_step(batch, 0)`` (its ``log``/``log_dict`` are no-ops on
            the instance during that call, so nothing it logs is duplicated or changed).
        forward_fn: ``forward_fn(pl_module, batch)`` for the activation forward; by default
            ``pl_module(x)`` with ``x`` the batch, its first element, or ``**batch``.
        strict: re-raise measurement errors instead of counting them (for tests).
        max_pending: background jobs allowed in flight before new ones are dropped.
        max_overhead: cost cap, a fraction of training time in (0, 1]: a due measurement is
            skipped (and counted in ``geometry/skipped/<family>``) when the monitor's measured
            cost would exceed this share of training time; the first measurement of every
            family always runs, and skips never move later measurements
            (:mod:`geomonitor.monitor.cost`). Under DDP rank 0 decides for all ranks.
            ``None`` measures every occurrence.
        wandb_max_layers: W&B gets per-layer keys for at most this many measured layers, the
            mean, min and max over layers past it, with one warning (a W&B project holds
            under 10,000 keys; :mod:`~geomonitor.callbacks.wandb_layers`); ``None``: no limit.
            The other loggers and ``callback_metrics`` get every layer.

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
        prog_bar: str | list[str] | None = "eos_ratio",
        loss_fn: Callable[[Any, Any], Any] | None = None,
        forward_fn: Callable[[Any, Any], Any] | None = None,
        strict: bool = False,
        max_pending: int = 4,
        max_overhead: float | None = 0.05,
        wandb_max_layers: int | None = 64,
    ) -> None:
        layers = check.layers(layers)
        check.choice("reduce", reduce, check.REDUCTIONS)
        probe_data = check.common(probe_size, probe_seed, probe_data, strict, max_pending)
        check.max_overhead(max_overhead)
        check.callables(loss_fn=loss_fn, forward_fn=forward_fn)
        options = check.geometry_options(
            "GeometryMonitor", id_method=id_method, sharpness_max_hvp=sharpness_max_hvp,
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
        super().__init__(options, layers=layers, reduce=reduce, probe_size=probe_size,
                         probe_seed=probe_seed, probe_data=probe_data, forward_fn=forward_fn,
                         loss_fn=loss_fn, prog_bar=check.prog_bar(prog_bar), strict=strict,
                         max_pending=max_pending, max_overhead=max_overhead,
                         wandb_max_layers=wandb_max_layers)
