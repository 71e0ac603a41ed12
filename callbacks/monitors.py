"""Focused monitors: one measurement family each, same machinery as ``GeometryMonitor``.

Use them when only one kind of measurement is wanted, or to give one family its own layers
or probe set. Metric names, error handling, background work, checkpoint state and the
distributed behaviour are those of :class:`~geomonitor.callbacks.GeometryMonitor`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from geomonitor.callbacks import _checks as check
from geomonitor.callbacks._adapter import MonitorCallback

__all__ = ["IntrinsicDimensionMonitor", "SharpnessMonitor", "TopologyMonitor",
           "NeuralPersistenceMonitor", "SymmetryMonitor"]


_OFF = {f"{f}_every_n_{u}": None for f in ("id", "sharpness", "topology", "np", "symmetry",
                                             "connectivity") for u in ("steps", "epochs")}


def _only(prefix: str, every_n_steps: Any, every_n_epochs: Any, **extra: Any) -> dict[str, Any]:
    """Family options with only ``prefix``'s family on, on the given schedule."""
    if check.schedule("", every_n_steps, every_n_epochs) is None:
        raise ValueError("every_n_steps and every_n_epochs are both None; set at least one "
                         "to a positive int")
    return {**_OFF, f"{prefix}_every_n_steps": every_n_steps,
            f"{prefix}_every_n_epochs": every_n_epochs, **extra}


class IntrinsicDimensionMonitor(MonitorCallback):
    """Intrinsic dimension of layer activations on the probe set: ``geometry/id/<layer>``.

    TwoNN by default (Facco et al., 2017, Sci. Rep. 7:12140); O(N^2 D) per layer. Under W&B
    also the profile across layers (``geometry/id_profile``).

    Args:
        layers: ``"auto"``, a module-name glob or a list of globs.
        reduce: how a layer output becomes (N, features): ``"auto"``, ``"flatten"``, ``"mean"``, ``"last"``.
        forward_fn: ``forward_fn(pl_module, batch)`` for the activation forward.
        max_pending: background jobs in flight before new ones are dropped.
        method: ``"twonn"``, ``"mle"`` or ``"pca"``.
        every_n_steps: measure every n optimizer steps (None: not by steps).
        every_n_epochs: measure every n epochs (None: not by epochs).
        log_profile: under W&B, log the profile across layers.
        probe_size: number of probe samples (drawn once, seeded, by index).
        probe_seed: seed of the probe draw.
        probe_data: ``None`` (the train dataloader), a DataLoader, a tensor or a tuple of tensors.
        prog_bar: metric names (without ``geometry/``) shown in the progress bar.
        strict: re-raise measurement errors instead of counting them.
        max_overhead: cost cap, a share of training time in (0, 1] (``None``: no cap).

    Example:
        >>> IntrinsicDimensionMonitor(layers="encoder.*", every_n_steps=20)  # doctest: +SKIP
    """

    def __init__(self, layers: str | list[str] = "auto", reduce: str = "auto",
                 method: str = "twonn", every_n_steps: int | None = 100,
                 every_n_epochs: int | None = None, probe_size: int = 256, probe_seed: int = 0,
                 probe_data: Any = None, log_profile: bool = True,
                 prog_bar: str | list[str] | None = None,
                 forward_fn: Callable[[Any, Any], Any] | None = None, strict: bool = False,
                 max_pending: int = 4, max_overhead: float | None = 0.05) -> None:
        layers = check.layers(layers)
        check.choice("reduce", reduce, check.REDUCTIONS)
        check.choice("method", method, check.ID_METHODS)
        check.flag("log_profile", log_profile)
        check.max_overhead(max_overhead)
        probe_data = check.common(probe_size, probe_seed, probe_data, strict, max_pending)
        options = _only("id", every_n_steps, every_n_epochs, id_method=method, id_log_profile=log_profile)
        super().__init__(options, layers=layers, reduce=reduce, probe_size=probe_size,
                         probe_seed=probe_seed, probe_data=probe_data, forward_fn=forward_fn,
                         prog_bar=check.prog_bar(prog_bar), strict=strict,
                         max_pending=max_pending, max_overhead=max_overhead)


class SharpnessMonitor(MonitorCallback):
    """Sharpness of the training loss on the probe set and ``eos_ratio`` = sharpness/(2/η).

    Cohen et al., 2021 (edge of stability); preconditioned for Adam-family optimizers (Cohen
    et al., 2022). Cost ≤ ``max_hvp`` Hessian-vector products per measurement, warm-started.
    η is ``trainer.optimizers[0].param_groups[0]["lr"]`` at the time of the measurement.

    Args:
        every_n_steps: measure every n optimizer steps (None: not by steps).
        every_n_epochs: measure every n epochs (None: not by epochs).
        max_hvp: Hessian-vector-product budget per measurement.
        tol: relative tolerance of the Lanczos iteration.
        loss_fn: ``loss_fn(pl_module, batch) -> scalar``; default ``training_step``'s loss.
        sharpness_probe_size: probe samples the sharpness uses (the first n; None: all).
        probe_size: number of probe samples (drawn once, seeded, by index).
        probe_seed: seed of the probe draw.
        probe_data: ``None`` (the train dataloader), a DataLoader, a tensor or a tuple of tensors.
        prog_bar: metric names (without ``geometry/``) shown in the progress bar.
        strict: re-raise measurement errors instead of counting them.
        max_overhead: cost cap, a share of training time in (0, 1] (``None``: no cap).

    Example:
        >>> SharpnessMonitor(every_n_steps=10, prog_bar=["sharpness", "eos_ratio"])  # doctest: +SKIP
    """

    def __init__(self, every_n_steps: int | None = 50, every_n_epochs: int | None = None,
                 max_hvp: int = 20, tol: float = 1e-3, probe_size: int = 256,
                 probe_seed: int = 0, probe_data: Any = None,
                 loss_fn: Callable[[Any, Any], Any] | None = None,
                 prog_bar: str | list[str] | None = "eos_ratio", strict: bool = False,
                 sharpness_probe_size: int | None = 64,
                 max_overhead: float | None = 0.05) -> None:
        check.positive_int("max_hvp", max_hvp)
        check.positive_float("tol", tol)
        check.positive_int("sharpness_probe_size", sharpness_probe_size, allow_none=True)
        check.max_overhead(max_overhead)
        probe_data = check.common(probe_size, probe_seed, probe_data, strict, 1)
        options = _only("sharpness", every_n_steps, every_n_epochs, sharpness_max_hvp=max_hvp,
                        sharpness_tol=tol, sharpness_probe_size=sharpness_probe_size)
        super().__init__(options, probe_size=probe_size, probe_seed=probe_seed,
                         probe_data=probe_data, loss_fn=loss_fn,
                         prog_bar=check.prog_bar(prog_bar), strict=strict,
                         max_overhead=max_overhead)


class TopologyMonitor(MonitorCallback):
    """Persistence summaries of layer activations: ``geometry/ph/<layer>/<summary>``.

    Vietoris–Rips H0/H1 on ≤ ``n_landmarks`` maxmin landmarks (giotto-ph in a child
    process, waited on by a background thread), logged against the step it measured; under
    W&B also the diagrams.

    Args:
        layers: ``"auto"``, a module-name glob or a list of globs.
        reduce: how a layer output becomes (N, features): ``"auto"``, ``"flatten"``, ``"mean"``, ``"last"``.
        forward_fn: ``forward_fn(pl_module, batch)`` for the activation forward.
        max_pending: background jobs in flight before new ones are dropped.
        every_n_steps: measure every n optimizer steps (None: not by steps).
        every_n_epochs: measure every n epochs (None: not by epochs).
        maxdim: 0 (H0 only) or 1.
        n_landmarks: maxmin landmarks for H1 (>= 3), ``None`` for all probe points.
        log_diagrams: under W&B, log each diagram (table + scatter plot).
        probe_size: number of probe samples (drawn once, seeded, by index).
        probe_seed: seed of the probe draw.
        probe_data: ``None`` (the train dataloader), a DataLoader, a tensor or a tuple of tensors.
        prog_bar: metric names (without ``geometry/``) shown in the progress bar.
        strict: re-raise measurement errors instead of counting them.
        max_overhead: cost cap, a share of training time in (0, 1] (``None``: no cap).

    Example:
        >>> TopologyMonitor(layers=["fc2"], every_n_epochs=1, n_landmarks=100)  # doctest: +SKIP
    """

    def __init__(self, layers: str | list[str] = "auto", reduce: str = "auto",
                 every_n_steps: int | None = None, every_n_epochs: int | None = 1,
                 maxdim: int = 1, n_landmarks: int | None = 128, probe_size: int = 256,
                 probe_seed: int = 0, probe_data: Any = None, log_diagrams: bool = True,
                 prog_bar: str | list[str] | None = None,
                 forward_fn: Callable[[Any, Any], Any] | None = None, strict: bool = False,
                 max_pending: int = 4, max_overhead: float | None = 0.05) -> None:
        layers = check.layers(layers)
        check.choice("reduce", reduce, check.REDUCTIONS)
        if maxdim not in (0, 1):
            raise ValueError(f"maxdim must be 0 or 1, got {maxdim!r}")
        check.landmarks("n_landmarks", n_landmarks)
        check.flag("log_diagrams", log_diagrams)
        check.max_overhead(max_overhead)
        probe_data = check.common(probe_size, probe_seed, probe_data, strict, max_pending)
        options = _only("topology", every_n_steps, every_n_epochs, topology_maxdim=maxdim,
                        topology_landmarks=n_landmarks, log_diagrams=log_diagrams)
        super().__init__(options, layers=layers, reduce=reduce, probe_size=probe_size,
                         probe_seed=probe_seed, probe_data=probe_data, forward_fn=forward_fn,
                         prog_bar=check.prog_bar(prog_bar), strict=strict,
                         max_pending=max_pending, max_overhead=max_overhead)


class NeuralPersistenceMonitor(MonitorCallback):
    """Neural persistence of the Linear-like weights (Rieck et al., 2019, ICLR):
    ``geometry/neural_persistence/mean`` and ``geometry/neural_persistence/<layer>``.

    Needs no probe set; runs on the training thread (a few ms for an MLP).

    Args:
        every_n_steps: measure every n optimizer steps (None: not by steps).
        every_n_epochs: measure every n epochs (None: not by epochs).
        prog_bar: metric names (without ``geometry/``) shown in the progress bar.
        strict: re-raise measurement errors instead of counting them.
        max_pending: background jobs in flight before new ones are dropped.
        max_overhead: cost cap, a share of training time in (0, 1] (``None``: no cap).

    Example:
        >>> NeuralPersistenceMonitor(every_n_epochs=1)  # doctest: +SKIP
    """

    def __init__(self, every_n_steps: int | None = None, every_n_epochs: int | None = 1,
                 prog_bar: str | list[str] | None = None, strict: bool = False,
                 max_pending: int = 4, max_overhead: float | None = 0.05) -> None:
        check.common(1, 0, None, strict, max_pending)
        check.max_overhead(max_overhead)
        super().__init__(_only("np", every_n_steps, every_n_epochs),
                         prog_bar=check.prog_bar(prog_bar), strict=strict,
                         max_pending=max_pending, max_overhead=max_overhead)


class SymmetryMonitor(MonitorCallback):
    """Parameter-symmetry indicators: ``geometry/symmetry/<layer>/<summary>`` (rescaling
    imbalance, dead and duplicate units, effective/stable rank of the weights, RankMe of the
    activations) and ``geometry/neural_collapse/<classifier>/nc1..nc4`` on labelled probe sets.

    Du, Hu & Lee 2018 (balance); Ziyin et al. 2025 and Zhao, Walters & Yu 2025 (symmetry);
    Roy & Vetterli 2007, Garrido et al. 2023 (ranks); Papyan, Han & Donoho 2020 (collapse).
    See :class:`geomonitor.monitor.families.SymmetryFamily` for definitions and costs.

    Args:
        layers: ``"auto"``, a module-name glob or a list of globs (for RankMe).
        reduce: how a layer output becomes (N, features): ``"auto"``, ``"flatten"``, ``"mean"``, ``"last"``.
        forward_fn: ``forward_fn(pl_module, batch)`` for the activation forward.
        max_pending: background jobs in flight before new ones are dropped.
        every_n_steps: measure every n optimizer steps (None: not by steps).
        every_n_epochs: measure every n epochs (None: not by epochs).
        probe_size: number of probe samples (drawn once, seeded, by index).
        probe_seed: seed of the probe draw.
        probe_data: ``None`` (the train dataloader), a DataLoader, a tensor or a tuple of tensors.
        prog_bar: metric names (without ``geometry/``) shown in the progress bar.
        strict: re-raise measurement errors instead of counting them.
        max_overhead: cost cap, a share of training time in (0, 1] (``None``: no cap).

    Example:
        >>> SymmetryMonitor(every_n_steps=200)  # doctest: +SKIP
    """

    def __init__(self, layers: str | list[str] = "auto", reduce: str = "auto",
                 every_n_steps: int | None = 500, every_n_epochs: int | None = None,
                 probe_size: int = 256, probe_seed: int = 0, probe_data: Any = None,
                 prog_bar: str | list[str] | None = None,
                 forward_fn: Callable[[Any, Any], Any] | None = None, strict: bool = False,
                 max_pending: int = 4, max_overhead: float | None = 0.05) -> None:
        layers = check.layers(layers)
        check.choice("reduce", reduce, check.REDUCTIONS)
        check.max_overhead(max_overhead)
        probe_data = check.common(probe_size, probe_seed, probe_data, strict, max_pending)
        super().__init__(_only("symmetry", every_n_steps, every_n_epochs), layers=layers,
                         reduce=reduce, probe_size=probe_size, probe_seed=probe_seed,
                         probe_data=probe_data, forward_fn=forward_fn,
                         prog_bar=check.prog_bar(prog_bar), strict=strict,
                         max_pending=max_pending, max_overhead=max_overhead)
