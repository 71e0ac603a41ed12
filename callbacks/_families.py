"""Measurement families: what one kind of geometry measurement does at one step.

A *family* is a small object with a schedule (:class:`~geomonitor.monitor.schedule.Every`) and a
``run(ctx)`` method. ``run`` executes on the training thread and returns either a finished
:class:`Measurement` or a zero-argument function that computes one; the caller sends such a
function to the :class:`~geomonitor.monitor.worker.BackgroundWorker` (work that waits on a
child process) and logs its result later, against the step it measured.

Families know nothing about loggers or the ``Trainer``'s life cycle: that is the callback's
job (:mod:`geomonitor.callbacks._base`). The four families:

* ``id`` (training thread): ``geometry/id/<layer>``, W&B profile across layers;
* ``sharpness`` (training thread): ``geometry/sharpness``, ``geometry/eos_ratio``,
  ``geometry/n_hvp``;
* ``topology`` (tensor work on the training thread, giotto-ph in a child process waited on
  by the worker): ``geometry/ph/<layer>/<summary>``, W&B diagrams;
* ``neural_persistence`` (training thread): ``geometry/neural_persistence`` (+ ``/<layer>``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every
from geomonitor.topology import neural_persistence_network, prepare_diagrams, summarize
from geomonitor.topology.ripser_process import RipserProcess

__all__ = ["Measurement", "Context", "IntrinsicDimensionFamily", "SharpnessFamily",
           "TopologyFamily", "NeuralPersistenceFamily", "training_loss", "default_forward",
           "silenced_logging"]


@dataclass
class Measurement:
    """What one family measured at one step: numbers, W&B media, and per-item failures."""

    metrics: dict[str, float] = field(default_factory=dict)
    diagrams: dict[str, list[np.ndarray]] = field(default_factory=dict)
    profiles: dict[str, tuple[list[str], list[float]]] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    child_cpu: float = 0.0  # CPU seconds a child process spent on this measurement
    child_startup: float = 0.0  # CPU seconds of a child's start-up reported with it


class Context:
    """Everything a family may read at one measurement step; activations computed once.

    ``activations()`` runs the single extra no-grad, eval-mode forward on the probe batch the
    first time a family asks for it, so ID and topology due at the same step share it.
    ``credit`` is what the overhead budget has left, in seconds (``None``: no budget).
    """

    def __init__(self, trainer: Any, pl_module: nn.Module, step: int, probe_batch: Any,
                 capture: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.credit: float | None = None  # set by the callback before each family runs
        self.trainer = trainer
        self.pl_module = pl_module
        self.step = step
        self.probe_batch = probe_batch
        self._capture = capture
        self._acts: dict[str, torch.Tensor] | None = None

    def activations(self) -> dict[str, torch.Tensor]:
        if self._acts is None:
            self._acts = self._capture()
        return self._acts


# -- training-step plumbing ----------------------------------------------------------------
def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def silenced_logging(pl_module: nn.Module) -> Iterator[None]:
    """Make ``pl_module.log`` / ``log_dict`` no-ops on this instance, then restore them.

    The probe-set call of ``training_step`` must not log (a logged value would be duplicated
    or overwritten). Instance attributes shadow the class methods and are removed afterwards,
    so an instance that already had its own ``log`` gets it back unchanged.
    """
    saved = {name: pl_module.__dict__[name] for name in ("log", "log_dict") if name in pl_module.__dict__}
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


def training_loss(pl_module: nn.Module, batch: Any) -> torch.Tensor:
    """The module's own training loss on ``batch``: ``training_step(batch, 0)`` with logging off.

    Accepts a returned tensor or a mapping with ``"loss"``; anything else is a ``TypeError``.
    """
    with silenced_logging(pl_module):
        return as_loss(pl_module.training_step(batch, 0))


def as_loss(out: Any) -> torch.Tensor:
    """A scalar loss from a tensor or a mapping with ``"loss"``; else ``TypeError``."""
    if isinstance(out, Mapping):
        out = out.get("loss")
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise TypeError("training_step (or loss_fn) must return a scalar loss tensor or a dict "
                        f"with 'loss' to measure sharpness, got {type(out).__name__}")
    return out.reshape(())


def default_forward(pl_module: nn.Module, batch: Any) -> Any:
    """The forward used for activations: a tensor batch is the input, a tuple/list's first
    element is the input, a mapping is passed as keyword arguments."""
    if isinstance(batch, torch.Tensor):
        return pl_module(batch)
    if isinstance(batch, Mapping):
        return pl_module(**batch)
    if isinstance(batch, (tuple, list)) and batch:
        return pl_module(batch[0])
    raise TypeError(f"cannot infer the model input from a batch of type {type(batch).__name__}; "
                    "pass forward_fn=...")


# -- families ---------------------------------------------------------------------------------
class _Family:
    name: str = ""
    needs_probe: bool = True
    needs_activations: bool = False

    def __init__(self, schedule: Every) -> None:
        self.schedule = schedule
        self.enabled = True

    def setup(self, trainer: Any, pl_module: nn.Module) -> str | None:
        """Called once per fit; returns a reason to disable the family (warned once) or None."""
        return None

    def run(self, ctx: Context) -> Measurement | Callable[[], Measurement]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``setup`` acquired (called at the end of a fit; may be called from
        another thread while a background job of this family runs, and must stop it)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class IntrinsicDimensionFamily(_Family):
    """Intrinsic dimension of each selected layer's activations on the probe set.

    TwoNN by default (Facco et al., 2017, "Estimating the intrinsic dimension of datasets by a
    minimal neighborhood information", Sci. Rep. 7:12140); cost O(N^2 D) per layer on the
    module's device (N = probe size). A layer whose estimate fails (e.g. duplicate points)
    counts one error; the other layers are still logged.
    """

    name = "id"
    needs_activations = True

    def __init__(self, schedule: Every, method: str = "twonn", log_profile: bool = True) -> None:
        super().__init__(schedule)
        from geomonitor.intrinsic import intrinsic_dimension

        self._estimate = intrinsic_dimension
        self.method = method
        self.log_profile = log_profile

    def run(self, ctx: Context) -> Measurement:
        out = Measurement()
        names, values = [], []
        for layer, X in ctx.activations().items():
            try:
                d = float(self._estimate(X, method=self.method))
            except Exception as exc:  # noqa: BLE001 - counted and reported by the callback
                out.errors.append(exc)
                continue
            out.metrics[metric_key("id", layer)] = d
            names.append(layer)
            values.append(d)
        if self.log_profile and names:
            out.profiles[metric_key("id_profile")] = (names, values)
        return out


class SharpnessFamily(_Family):
    """Top Hessian eigenvalue of the training loss on the probe set, and ``eos_ratio``.

    Sharpness is λ_max(∇²L) (for Adam-family optimizers the preconditioned λ_max(P⁻¹∇²L),
    Cohen et al., 2022, "Adaptive Gradient Methods at the Edge of Stability"); ``eos_ratio``
    = λ_max / (2/η) against the stability threshold of gradient descent with learning rate η
    (Cohen et al., 2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of
    Stability"). Cost: at most ``max_hvp`` Hessian-vector products (≈ 2 backward passes each)
    on the probe batch, warm-started from the previous eigenvector.
    """

    name = "sharpness"

    def __init__(self, schedule: Every, *, max_hvp: int = 20, tol: float = 1e-3, seed: int = 0,
                 loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None) -> None:
        super().__init__(schedule)
        from geomonitor.sharpness import SharpnessEstimator

        self.estimator = SharpnessEstimator(k=1, tol=tol, max_hvp=max_hvp, seed=seed)
        self.loss_fn = loss_fn

    def setup(self, trainer: Any, pl_module: nn.Module) -> str | None:
        if self.loss_fn is None and not getattr(pl_module, "automatic_optimization", True):
            return ("the module uses manual optimization (its training_step steps the optimizer "
                    "itself), so sharpness needs loss_fn=callable(pl_module, batch) -> loss")
        return None

    def run(self, ctx: Context) -> Measurement:
        module, batch = ctx.pl_module, ctx.probe_batch
        loss_of = self.loss_fn or training_loss

        def closure() -> torch.Tensor:
            return as_loss(loss_of(module, batch))

        optimizers = ctx.trainer.optimizers
        opt = optimizers[0] if optimizers else None
        lr = float(opt.param_groups[0]["lr"]) if opt is not None else None
        # the estimator picks the threshold from the optimizer: 2/η for SGD, (2+2β)/((1-β)η)
        # with momentum, preconditioned sharpness for Adam/AdamW; η is the live group-0 lr
        res = self.estimator.measure(module, closure, optimizer=opt, lr=lr)
        out = Measurement(metrics={metric_key("sharpness"): float(res.sharpness),
                                   metric_key("n_hvp"): float(res.n_hvp)})
        if res.eos_ratio is not None:
            out.metrics[metric_key("eos_ratio")] = float(res.eos_ratio)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "estimator" in state:
            self.estimator.load_state_dict(state["estimator"])


# a probe set this small is faster on the CPU: prepare_diagrams at N = 1024, D = 256 took
# 18 ms on an H100 host's CPU against 26 ms on the H100 (30 / 35 ms at N = 2048)
CPU_MAX_POINTS = 1024


class TopologyFamily(_Family):
    """Vietoris–Rips persistence (H0, H1) of each selected layer's activations, off-thread.

    Diagrams by giotto-ph (Pérez, Hess, et al., 2021, "giotto-ph: A Python Library for
    High-Performance Computation of Persistent Homology of Vietoris–Rips Filtrations") on at
    most ``n_landmarks`` maxmin landmarks (seeded by ``seed + step``); summaries (total
    persistence, entropy, number of bars, ...) from :func:`geomonitor.topology.summarize`.
    The tensor work (exact H0, landmarks and their distance matrix,
    :func:`~geomonitor.topology.prepare_diagrams`) runs on the training thread and is charged
    to the budget exactly: on the module's device above ``CPU_MAX_POINTS`` probe points, on
    the CPU up to it (its loops launch hundreds of tiny kernels, slower on an accelerator
    than the whole computation on the CPU at probe-set sizes); the first landmark is drawn
    from a CPU generator, so the series does not depend on the device. giotto-ph (worst case
    O(n^3) in the number of simplices) runs in a child process
    (:class:`~geomonitor.topology.ripser_process.RipserProcess`, stopped at the end of the
    fit), waited on by the background worker. The child is launched at the first
    measurement whose budget credit covers its start-up (about 1 s of CPU; at once without a
    budget); until then giotto-ph runs on the training thread, charged like the rest.
    giotto-ph holds the GIL, and so does any Python-level loop: run in a thread either would
    take the interpreter from the training loop (measured: a thread computing landmark
    diagrams cost the training thread 0.66 s per second it ran, ``benchmarks/bench_gil.py``;
    :mod:`geomonitor.topology.ripser_process`).
    """

    name = "topology"
    needs_activations = True

    def __init__(self, schedule: Every, *, maxdim: int = 1, n_landmarks: int | None = 128,
                 seed: int = 0, log_diagrams: bool = True) -> None:
        super().__init__(schedule)
        self.maxdim = maxdim
        self.n_landmarks = n_landmarks
        self.seed = seed
        self.log_diagrams = log_diagrams
        self._ripser = RipserProcess()

    def close(self) -> None:
        self._ripser.close()

    def run(self, ctx: Context) -> Measurement | Callable[[], Measurement]:
        prepared, errors = {}, []
        for layer, X in ctx.activations().items():
            try:
                if X.shape[0] <= CPU_MAX_POINTS:
                    X = X.cpu()  # no-op on the CPU
                gen = torch.Generator().manual_seed(self.seed + ctx.step)
                prepared[layer] = prepare_diagrams(X, maxdim=self.maxdim,
                                                   n_landmarks=self.n_landmarks, generator=gen)
            except Exception as exc:  # noqa: BLE001 - counted by the callback
                errors.append(exc)
        ripser = self._ripser
        if not (ripser.running or ctx.credit is None or ctx.credit >= ripser.startup_estimate):
            # the budget cannot pay for the child's start-up yet: giotto-ph here, charged
            return _completed(prepared, errors, None, self.log_diagrams)
        ripser.start()
        log_diagrams = self.log_diagrams
        return lambda: _completed(prepared, errors, ripser, log_diagrams)


def _completed(prepared: dict[str, Any], errors: list[BaseException], ripser: Any,
               log_diagrams: bool) -> Measurement:
    """Finish prepared diagrams with ``ripser`` (a RipserProcess, or None: giotto-ph here)."""
    out = Measurement(errors=errors)
    cpu, startup = (ripser.cpu_time, ripser.startup_cpu) if ripser is not None else (0.0, 0.0)
    for layer, prep in prepared.items():
        if ripser is not None and ripser.closed:  # the fit is over: measurement cancelled
            break
        try:
            dgms = prep.complete(ripser)
            summary = summarize(dgms)
        except Exception as exc:  # noqa: BLE001 - counted by the callback
            out.errors.append(exc)
            continue
        for s, v in summary.items():
            out.metrics[metric_key("ph", layer, s)] = float(v)
        if log_diagrams:
            out.diagrams[metric_key("ph", layer, "diagram")] = _as_arrays(dgms)
    if ripser is not None:
        out.child_cpu, out.child_startup = ripser.cpu_time - cpu, ripser.startup_cpu - startup
    return out


def _as_arrays(dgms: Any) -> list[np.ndarray]:
    seq = getattr(dgms, "diagrams", dgms)
    return [np.asarray(d, dtype=float).reshape(-1, 2) for d in seq]


class NeuralPersistenceFamily(_Family):
    """Neural persistence of the weights (Rieck et al., 2019, "Neural Persistence: A
    Complexity Measure for Deep Neural Networks Using Algebraic Topology", ICLR).

    Runs on the training thread: the per-layer maximum spanning tree (O(E log E) for E
    weights) is a few milliseconds for an MLP, and Python-level work in a thread would hold
    the GIL against the training loop anyway.
    """

    name = "neural_persistence"
    needs_probe = False

    def run(self, ctx: Context) -> Measurement:
        weights = {n: m.weight.detach() for n, m in ctx.pl_module.named_modules()
                   if isinstance(m, nn.Linear) and m.weight.dim() == 2}
        res = neural_persistence_network(weights)
        out = Measurement(metrics={metric_key("neural_persistence"): float(res.mean)})
        for layer, v in res.per_layer.items():
            out.metrics[metric_key("neural_persistence", layer)] = float(v)
        return out
