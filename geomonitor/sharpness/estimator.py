"""Stateful sharpness measurement during training, warm-started from the previous one.

:class:`SharpnessEstimator` measures the top Hessian eigenvalue(s) of a probe loss
(:func:`geomonitor.sharpness.spectrum.hessian_eigenvalues`), with no side effect on the model
(:func:`geomonitor.sharpness.isolation.isolated`), and places it relative to the optimiser's
edge of stability (:mod:`geomonitor.sharpness.preconditioned`): for SGD / GD the raw
sharpness against 2/lr (with momentum (2+2b)/lr), for Adam / AdamW the preconditioned
sharpness ``lambda_1(P^{-1/2} H P^{-1/2})`` against (2+2 beta1)/((1-beta1) lr) (Cohen et al.
2021, ICLR; Cohen et al. 2022, arXiv 2207.14484). The previous eigenvectors are the next
start, so a measurement one optimiser step later typically takes a handful of products.

Distributed training: a DistributedDataParallel (or DataParallel) wrapper is unwrapped to
``model.module`` (double backward through DDP is unsupported). Without ``layout`` each rank
measures the Hessian of its own probe loss without communication; with ``layout``
(:mod:`geomonitor.sharpness.sharded`) the probe is split across ranks, the products summed
over them, and every rank gets the same value: under DDP on replicated parameters, under
FSDP2 on the local shards (finite differences; the eigenvectors kept are the local parts).

Degradations (documented, tested): an optimiser without a known threshold, or Adam before
its first step (no ``exp_avg_sq``), gives the raw sharpness with ``eos_ratio=None`` and a
``note`` saying why. Errors: see :func:`hessian_eigenvalues` (``ValueError``).

Cost per measurement: one forward + backward of ``loss_fn`` and ``n_hvp`` <= ``max_hvp``
double backwards; memory O(max(30, 3k) * P) during, O(k * P) kept between measurements.

Example::

    est = SharpnessEstimator(k=1, seed=0)
    r = est.measure(model, lambda: F.cross_entropy(model(xb), yb), optimizer=opt)
    r.sharpness, r.eos_ratio, r.n_hvp
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch

from geomonitor.sharpness.hvp import trainable
from geomonitor.sharpness.isolation import isolated
from geomonitor.sharpness.preconditioned import adam_preconditioner, stability_threshold
from geomonitor.sharpness.sharded import Layout, local_tensor
from geomonitor.sharpness.spectrum import HVP_BACKENDS, _check, choose_hvp, hessian_eigenvalues

__all__ = ["SharpnessEstimator", "SharpnessResult"]


class SharpnessResult(NamedTuple):
    """One measurement.

    Attributes:
        sharpness: top eigenvalue (of H, or of P^{-1/2} H P^{-1/2} when ``preconditioned``).
        eigenvalues: (k,) descending, same operator.
        eos_ratio: sharpness / threshold (1.0 = edge of stability); None without lr/optimizer.
        threshold: the stability threshold, or None.
        n_hvp: Hessian-vector products used.
        converged: whether the tolerance was met.
        reason: why not converged ("" when converged).
        preconditioned: whether the Adam preconditioner was applied.
        loss: the probe loss value (float).
        note: why ``eos_ratio`` is None, or which threshold rule was used.
        hvp: the product backend used (``"fd"`` or ``"exact"``).
    """

    sharpness: float
    eigenvalues: torch.Tensor
    eos_ratio: float | None
    threshold: float | None
    n_hvp: int
    converged: bool
    reason: str
    preconditioned: bool
    loss: float
    note: str
    hvp: str = "exact"


class SharpnessEstimator:
    """Measure sharpness repeatedly during training (see module doc).

    Args:
        k: number of top eigenvalues (>= 1).
        tol: relative tolerance of the Lanczos solver (> 0).
        max_hvp: hard limit of Hessian-vector products per measurement (>= 1).
        seed: seed of the estimator's own ``torch.Generator`` (random start vectors).
        hvp: ``"auto"`` (:func:`~geomonitor.sharpness.spectrum.choose_hvp`), ``"fd"`` (central
            differences) or ``"exact"`` (double backward).
        min_cold: products before a measurement from a random start may stop (``None``:
            :func:`~geomonitor.sharpness.lanczos.lanczos_top`'s ``2k + 10``).
    """

    def __init__(self, k: int = 1, *, tol: float = 1e-3, max_hvp: int = 100, seed: int = 0,
                 hvp: str = "auto", min_cold: int | None = None):
        _check(k, tol, max_hvp)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int; got {seed!r}")
        if hvp not in HVP_BACKENDS:
            raise ValueError(f"hvp must be one of {HVP_BACKENDS}; got {hvp!r}")
        if min_cold is not None and (isinstance(min_cold, bool) or not isinstance(min_cold, int)
                                     or min_cold < k + 1):
            raise ValueError(f"min_cold must be None or an int >= k + 1 = {k + 1}; got {min_cold!r}")
        self.k, self.tol, self.max_hvp, self.seed = k, float(tol), max_hvp, seed
        self.hvp, self.min_cold = hvp, min_cold
        self.generator = torch.Generator().manual_seed(seed)
        self._vectors: torch.Tensor | None = None
        self._vectors_preconditioned = False
        self.n_measurements = 0

    def measure(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[], torch.Tensor],
        *,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float | None = None,
        layout: Layout | None = None,
    ) -> SharpnessResult:
        """Measure the Hessian of ``loss_fn()`` w.r.t. the trainable parameters of ``model``;
        with ``layout`` (:func:`geomonitor.sharpness.sharded.layout`) ``loss_fn`` is this
        rank's share of the probe loss and every rank calls this together."""
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        backend = choose_hvp(model, self.hvp)
        with isolated(model, double_backward=backend == "exact") as module:
            params = trainable(module, name="model.parameters()")
            thr = stability_threshold(optimizer, lr, params)
            note, scaling, pre = thr.rule, None, thr.preconditioned
            if pre:
                try:
                    diag = adam_preconditioner(optimizer, params)
                    scaling = diag.rsqrt()
                except ValueError as err:
                    note, pre, thr = f"raw sharpness, no eos_ratio: {err}", False, thr._replace(value=None)
            init = self._vectors
            dim = sum(local_tensor(p).numel() for p in params)
            if init is not None and (init.shape[1] != dim or self._vectors_preconditioned != pre):
                init = None
            spec = hessian_eigenvalues(
                loss_fn, params, self.k, tol=self.tol, max_hvp=self.max_hvp, init=init,
                generator=self.generator, scaling=scaling, hvp=backend, min_cold=self.min_cold,
                layout=layout,
            )
        if bool(torch.isfinite(spec.eigenvalues).all()):
            self._vectors = spec.eigenvectors.detach()
            self._vectors_preconditioned = pre
        self.n_measurements += 1
        top = float(spec.eigenvalues[0])
        ratio = None if thr.value is None or not math.isfinite(top) else top / thr.value
        return SharpnessResult(
            top, spec.eigenvalues.detach(), ratio, thr.value, spec.n_hvp, spec.converged, spec.reason,
            pre, float(spec.loss), note, backend,
        )

    def reset(self) -> None:
        """Forget the warm start (e.g. after the model was replaced)."""
        self._vectors = None

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain types only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "k": self.k,
            "tol": self.tol,
            "max_hvp": self.max_hvp,
            "seed": self.seed,
            "generator": self.generator.get_state(),
            "eigenvectors": None if self._vectors is None else self._vectors.detach().cpu(),
            "preconditioned": self._vectors_preconditioned,
            "n_measurements": self.n_measurements,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (configuration, generator, warm start)."""
        keys = {"k", "tol", "max_hvp", "seed", "generator", "eigenvectors", "preconditioned", "n_measurements"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys {sorted(keys)}; got {got}")
        _check(state["k"], state["tol"], state["max_hvp"])
        vec = state["eigenvectors"]
        if vec is not None and (not isinstance(vec, torch.Tensor) or vec.dim() != 2 or vec.shape[0] != state["k"]):
            raise ValueError(f"state['eigenvectors'] must be None or a (k, P) tensor; got {getattr(vec, 'shape', vec)!r}")
        self.k, self.tol, self.max_hvp, self.seed = state["k"], float(state["tol"]), state["max_hvp"], state["seed"]
        self.generator.set_state(state["generator"])
        self._vectors = vec
        self._vectors_preconditioned = bool(state["preconditioned"])
        self.n_measurements = int(state["n_measurements"])
