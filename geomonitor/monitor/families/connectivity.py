"""Connectivity family: the loss barrier along the training trajectory, and instability
analysis.

Trajectory barrier. At every measurement after the first, the loss barrier (Entezari et al.
2022) on the probe set between the weights at the previous measurement theta_prev (a CPU
snapshot of the state dict) and the current weights theta_now, along (1 - alpha) theta_prev +
alpha theta_now (:func:`geomonitor.connectivity.loss_barrier`). A large value means the run
crossed a ridge of the loss between the two measurements (a catapult or a spike), zero means
the segment stayed below the chord. The first measurement only stores the snapshot and logs
nothing (a barrier needs two points).

Instability analysis (opt-in, ``instability_at``). At the first measurement at or after
step ``instability_at``, two copies of the model and of the optimizer (a new optimizer of the
same class over each copy's parameters, with the training optimizer's state dict loaded) are
trained for ``instability_steps`` steps on batches drawn from the probe set with the family's
own ``torch.Generator`` (a different data order per copy), then the barrier between the two
children is logged. Frankle et al. (2020) call a network stable at step k when this barrier is
about 0: from then on SGD noise no longer changes which linearly connected basin it ends in.
Learning-rate schedulers are not copied (the children use the optimizer's current lr).

References: J. Frankle, G. K. Dziugaite, D. M. Roy, M. Carbin, "Linear Mode Connectivity and
the Lottery Ticket Hypothesis", ICML 2020; R. Entezari, H. Sedghi, O. Saukh, B. Neyshabur,
"The Role of Permutation Invariance in Linear Mode Connectivity of Neural Networks", ICLR 2022.

Metrics (``metric_key("connectivity", summary=...)``):

==============================================  ===============================================
key                                             value
==============================================  ===============================================
``geometry/connectivity/barrier``               loss barrier, previous measurement -> now
``geometry/connectivity/barrier_alpha``         the alpha of its maximum
``geometry/connectivity/barrier_error``         error barrier (``loss_fn`` returning
                                                ``(loss, error)`` only)
``geometry/connectivity/distance``              ||theta_now - theta_prev|| over the parameters
``geometry/connectivity/instability_barrier``   barrier between the two children (once)
``geometry/connectivity/instability_barrier_error``  its error barrier (pairs only)
==============================================  ===============================================

Observer effect: nothing touches the real run. The barrier is evaluated on a deep copy of the
model (eval mode, ``torch.no_grad``), the children are deep copies with their own optimizers
(the real optimizer's state is deep-copied, never shared), and every global RNG stream (torch
CPU/CUDA, numpy, Python) is restored afterwards.

Cost per measurement: the snapshot (one copy of the state dict in CPU memory, kept between
measurements: ``snapshot_bytes``), one deep copy of the model on its device and ``n_alpha``
(``2 n_alpha`` with BatchNorm and ``reset_bn``) loss evaluations on the probe set. The
instability analysis adds two model and optimizer copies and ``2 instability_steps`` training
steps, once.

Failure modes: without a loss function (the family's ``loss_fn`` or the engine's
``ctx.loss_fn``) the family disables itself with a reason; the instability analysis without
``ctx.optimizer`` or with an optimizer holding parameters outside the model is reported in
``Measurement.errors``; a non-finite loss along the path too.

Example:
    >>> fam = ConnectivityFamily(Every(n_steps=100), instability_at=200, instability_steps=20)
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from geomonitor._checks import positive_int
from geomonitor._copy import working_copy
from geomonitor.connectivity.interpolate import loss_barrier
from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every
from geomonitor.sharpness.isolation import preserved_rng, unwrap

__all__ = ["ConnectivityFamily", "copy_optimizer", "take"]

_UNSET: Any = object()


def _key(summary: str) -> str:
    return metric_key("connectivity", summary=summary)


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for v in items:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    raise TypeError(f"the probe batch must be a tensor, or a tuple/list/mapping holding tensors, "
                    f"got {type(batch).__name__}")


def take(batch: Any, idx: torch.Tensor) -> Any:
    """The rows ``idx`` of every tensor of ``batch`` whose first dimension is the batch size
    (a tensor, a tuple/list or a mapping of them); other entries are passed through."""
    n = _batch_len(batch)

    def sel(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
            return v[idx.to(v.device)]
        return v

    if isinstance(batch, torch.Tensor):
        return sel(batch)
    if isinstance(batch, Mapping):
        picked = {k: sel(v) for k, v in batch.items()}
        try:
            return type(batch)(picked)
        except TypeError:
            return picked
    return type(batch)(sel(v) for v in batch)


def copy_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, copy_of_model: nn.Module
                   ) -> torch.optim.Optimizer:
    """A new optimizer of ``optimizer``'s class over ``copy_of_model``'s parameters with
    ``optimizer``'s param groups and a deep copy of its state (nothing shared with it).

    Raises:
        ValueError: the optimizer holds a parameter that is not one of ``model``'s.
    """
    optimizer = getattr(optimizer, "_optimizer", optimizer)  # Lightning's wrapper
    index = {id(p): i for i, p in enumerate(model.parameters())}
    params = list(copy_of_model.parameters())
    groups = []
    for g in optimizer.param_groups:
        if any(id(p) not in index for p in g["params"]):
            raise ValueError("the optimizer holds parameters that are not the model's; its copy "
                             "cannot be bound to the copied model")
        groups.append({**{k: copy.deepcopy(v) for k, v in g.items() if k != "params"},
                       "params": [params[index[id(p)]] for p in g["params"]]})
    try:
        new = type(optimizer)(groups, **optimizer.defaults)
    except TypeError:
        new = type(optimizer)(groups)
    new.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return new


class ConnectivityFamily(Family):
    """Trajectory loss barrier and opt-in instability analysis (see the module docstring).

    Args:
        schedule: when to measure.
        n_alpha: grid points along each segment (>= 2).
        reset_bn: recompute BatchNorm statistics on the probe set at each alpha.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``-> (loss, error)``; default the
            engine's ``ctx.loss_fn`` (the training loss).
        instability_at: the step at (or after) which the instability analysis runs once, or
            ``None`` (off).
        instability_steps: training steps of each child (>= 1).
        instability_batch_size: samples per child step, drawn without replacement from the
            probe set; ``None``: half the probe set (at least 1).
        seed: seeds the family's generator (the children's batches).

    Raises:
        ValueError / TypeError: an argument out of range (named in the message).
    """

    name = "connectivity"
    needs_probe = True
    needs_activations = False

    def __init__(self, schedule: Every, *, n_alpha: int = 11, reset_bn: bool = True,
                 loss_fn: Callable[[nn.Module, Any], Any] | None = None,
                 instability_at: int | None = None, instability_steps: int = 20,
                 instability_batch_size: int | None = None, seed: int = 0) -> None:
        super().__init__(schedule)
        self.n_alpha = positive_int("n_alpha", n_alpha)
        if self.n_alpha < 2:
            raise ValueError(f"n_alpha must be an int >= 2, got {n_alpha!r}")
        if not isinstance(reset_bn, bool):
            raise ValueError(f"reset_bn must be a bool, got {reset_bn!r}")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable(model, batch) or None, got {loss_fn!r}")
        if instability_at is not None and (isinstance(instability_at, bool)
                                           or not isinstance(instability_at, int) or instability_at < 0):
            raise ValueError(f"instability_at must be a non-negative int or None, got {instability_at!r}")
        self.reset_bn, self.loss_fn, self.instability_at = reset_bn, loss_fn, instability_at
        self.instability_steps = positive_int("instability_steps", instability_steps)
        self.instability_batch_size = positive_int("instability_batch_size", instability_batch_size,
                                                   allow_none=True)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.disabled_reason: str | None = None
        self._gen = torch.Generator().manual_seed(seed)
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._snapshot_step: int | None = None
        self._instability_done = False

    @property
    def snapshot_bytes(self) -> int:
        """CPU memory held by the snapshot (0 before the first measurement)."""
        return sum(t.numel() * t.element_size() for t in (self._snapshot or {}).values())

    def setup(self, model: nn.Module, loss_fn: Any = _UNSET) -> str | None:
        """A reason to disable the family, or None. ``loss_fn``: the engine's loss function
        when known at set-up (``None``: there is none); the family's own takes precedence."""
        if not any(p.is_floating_point() for p in model.parameters()):
            return "connectivity needs floating-point parameters; the model has none"
        if self.loss_fn is None and loss_fn is None:
            self.disabled_reason = ("connectivity needs the training loss: pass loss_fn="
                                    "callable(model, batch) to ConnectivityFamily (no loss function "
                                    "is available)")
            return self.disabled_reason
        return None

    def run(self, ctx: Context) -> Measurement:
        loss_of = self.loss_fn or ctx.loss_fn
        if loss_of is None:
            self.enabled = False
            self.disabled_reason = ("connectivity needs the training loss: pass loss_fn="
                                    "callable(model, batch) to ConnectivityFamily (ctx.loss_fn is None)")
            return Measurement(errors=[ValueError(self.disabled_reason)])
        model, batch = unwrap(ctx.model), ctx.probe_batch
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        out = Measurement()
        with preserved_rng(devices):
            current = {k: v.detach() for k, v in model.state_dict().items()}
            if self._snapshot is not None:
                try:
                    self._trajectory(model, current, loss_of, batch, out)
                except Exception as exc:  # noqa: BLE001 - reported per item
                    out.errors.append(exc)
            if (self.instability_at is not None and not self._instability_done
                    and ctx.step >= self.instability_at):
                self._instability_done = True
                try:
                    self._instability(model, ctx.optimizer, loss_of, batch, out)
                except Exception as exc:  # noqa: BLE001
                    out.errors.append(exc)
            self._snapshot = {k: v.to("cpu", copy=True) for k, v in current.items()}
            self._snapshot_step = ctx.step
        return out

    def _trajectory(self, model: nn.Module, current: dict[str, torch.Tensor],
                    loss_of: Callable[[nn.Module, Any], Any], batch: Any, out: Measurement) -> None:
        assert self._snapshot is not None
        b = loss_barrier(model, self._snapshot, current, lambda m: loss_of(m, batch),
                         n_alpha=self.n_alpha, reset_bn=self.reset_bn)
        out.metrics[_key("barrier")] = b.barrier
        out.metrics[_key("barrier_alpha")] = b.alpha
        if b.error_barrier is not None:
            out.metrics[_key("barrier_error")] = b.error_barrier
        sq = 0.0
        for name, p in model.named_parameters():
            if p.is_floating_point() and name in self._snapshot:
                d = p.detach().to("cpu", torch.float64) - self._snapshot[name].to(torch.float64)
                sq += float(d.square().sum())
        out.metrics[_key("distance")] = math.sqrt(sq)

    def _instability(self, model: nn.Module, optimizer: Any, loss_of: Callable[[nn.Module, Any], Any],
                     batch: Any, out: Measurement) -> None:
        if optimizer is None:
            raise ValueError("the instability analysis needs the training optimizer (ctx.optimizer "
                             "is None)")
        n = _batch_len(batch)
        size = min(n, self.instability_batch_size or max(1, n // 2))
        children = []
        for _ in range(2):
            with torch.no_grad():
                child = working_copy(model)
            opt = copy_optimizer(optimizer, model, child)
            with torch.enable_grad():
                for _ in range(self.instability_steps):
                    idx = torch.randperm(n, generator=self._gen)[:size]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_of(child, take(batch, idx))
                    if isinstance(loss, (tuple, list)):
                        loss = loss[0]
                    loss.backward()
                    opt.step()
            children.append(child)
        b = loss_barrier(children[0], children[0], children[1], lambda m: loss_of(m, batch),
                         n_alpha=self.n_alpha, reset_bn=self.reset_bn)
        out.metrics[_key("instability_barrier")] = b.barrier
        if b.error_barrier is not None:
            out.metrics[_key("instability_barrier_error")] = b.error_barrier

    def state_dict(self) -> dict[str, Any]:
        return {"snapshot": None if self._snapshot is None else dict(self._snapshot),
                "snapshot_step": self._snapshot_step, "instability_done": self._instability_done,
                "generator": self._gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"snapshot", "snapshot_step", "instability_done", "generator"} - set(state)
        if missing:
            raise ValueError(f"connectivity state is missing {sorted(missing)}")
        snap = state["snapshot"]
        if snap is not None and not (isinstance(snap, Mapping)
                                     and all(isinstance(v, torch.Tensor) for v in snap.values())):
            raise ValueError("connectivity state: snapshot must be None or a mapping of tensors")
        self._snapshot = None if snap is None else {k: v.detach().to("cpu", copy=True) for k, v in snap.items()}
        self._snapshot_step = state["snapshot_step"]
        self._instability_done = bool(state["instability_done"])
        self._gen.set_state(state["generator"])
