"""``SharpnessFamily``: the top Hessian eigenvalue of the training loss, and ``eos_ratio``.

Sharpness is λ_max(∇²L) on a slice of the probe set (for Adam-family optimizers the
preconditioned λ_max(P⁻¹∇²L), Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
Stability"); ``eos_ratio`` = λ_max / threshold, the threshold being 2/η for gradient descent
with learning rate η (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability", ICLR), (2+2β)/η with heavy-ball momentum β. Keys:
``geometry/sharpness``, ``geometry/eos_ratio``, ``geometry/n_hvp``.

The loss is ``ctx.loss_fn(model, batch)`` on the first ``probe_size`` samples of the probe
set (default 32: each Hessian-vector product costs about two gradient evaluations on that
slice, so the slice sets the family's cost; at 32 samples and a training batch of 64 one
product is about one training step). η is the live ``lr`` of the optimizer's first
parameter group. Products come from ``hvp`` (:func:`geomonitor.sharpness.spectrum.choose_hvp`:
central differences of the gradient, or the double backward for models with ReLU-family or
max-pooling modules, whose kinks the differences would see).

Distributed (an initialised ``torch.distributed`` group of W > 1 ranks): with ``split=True``
(default) rank r measures its contiguous share of the slice (:func:`~geomonitor.sharpness.
sharded.probe_share`) and the products are summed over ranks, so every rank gets the value of
the whole slice at 1/W of the forward/backward work; on FSDP2 (DTensor) parameters always, by
finite differences on the local shards (:mod:`geomonitor.sharpness.sharded`). Every rank
must then measure at the same steps (the engine's schedule and broadcast decisions ensure it).
``split=False`` under DDP: each rank measures the whole slice on its own replica.

Cost: a cold measurement (random start) stops once ``min_cold`` (6) products are reached and
the tolerance ``tol`` (1e-2, relative) is met; each later one starts from the previous
eigenvector and typically takes 3 products; never more than ``max_hvp``. Measured on the
0.82M-parameter char LM (``benchmarks/bench_defaults.py``): see the README. Failure modes:
no ``loss_fn`` (the family disables itself at setup), a loss that is not a scalar tensor
(``TypeError``), and the estimator's own errors.

Example:
    >>> fam = SharpnessFamily(Every(n_steps=50), max_hvp=20, probe_size=32, hvp="auto")
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from geomonitor._checks import positive_int
from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every
from geomonitor.sharpness.sharded import layout

__all__ = ["SharpnessFamily", "as_loss", "batch_size", "head"]


def as_loss(out: Any) -> torch.Tensor:
    """A scalar loss from a tensor, a mapping with ``"loss"`` or an object with ``.loss``
    (a Hugging Face ``ModelOutput``); else ``TypeError``."""
    if isinstance(out, Mapping):
        out = out.get("loss")
    elif not isinstance(out, torch.Tensor) and hasattr(out, "loss"):
        out = out.loss
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise TypeError("the loss function must return a scalar loss tensor, a dict with 'loss' "
                        f"or an output with .loss to measure sharpness, got {type(out).__name__}")
    return out.reshape(())


def head(batch: Any, n: int | slice) -> Any:
    """The first ``n`` samples of a batch (or the samples of the slice ``n``): tensors cut
    along dim 0, containers rebuilt."""
    rows = n if isinstance(n, slice) else slice(0, n)
    if isinstance(batch, torch.Tensor):
        return batch[rows] if batch.dim() > 0 else batch
    if isinstance(batch, Mapping):
        items = {k: head(v, rows) for k, v in batch.items()}
        try:
            return type(batch)(items)
        except TypeError:
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(head(v, rows) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(head(v, rows) for v in batch)
    return batch


def batch_size(batch: Any) -> int | None:
    """The number of samples of a batch: dim 0 of its first tensor (``None``: no tensor)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        n = batch_size(v)
        if n is not None:
            return n
    return None


class SharpnessFamily(Family):
    """λ_max of the loss Hessian on the first ``probe_size`` probe samples (see module doc)."""

    name = "sharpness"
    needs_loss = True

    def __init__(self, schedule: Every, *, max_hvp: int = 20, tol: float = 1e-2, seed: int = 0,
                 probe_size: int | None = 32, hvp: str = "auto", min_cold: int | None = 6,
                 split: bool = True) -> None:
        super().__init__(schedule)
        if not isinstance(split, bool):
            raise ValueError(f"split must be True or False, got {split!r}")
        self.split = split
        from geomonitor.sharpness import SharpnessEstimator

        positive_int("max_hvp", max_hvp)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
            raise ValueError(f"tol must be a positive float, got {tol!r}")
        self.probe_size = positive_int("probe_size", probe_size, allow_none=True)
        self.estimator = SharpnessEstimator(k=1, tol=float(tol), max_hvp=max_hvp, seed=seed,
                                            hvp=hvp, min_cold=min_cold)

    def run(self, ctx: Context) -> Measurement:
        if ctx.loss_fn is None:
            raise ValueError("sharpness needs the training loss: pass loss_fn=callable(model, batch)")
        module, loss_fn = ctx.model, ctx.loss_fn
        batch = ctx.probe_batch if self.probe_size is None else head(ctx.probe_batch, self.probe_size)
        opt = ctx.optimizer
        lr = float(opt.param_groups[0]["lr"]) if opt is not None else None
        split = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            n = batch_size(batch)
            if n is None:
                raise TypeError("the probe batch holds no tensor to split across ranks")
            split = layout([p for p in module.parameters() if p.requires_grad], n, split=self.split)
            batch = head(batch, split.share)
        res = self.estimator.measure(module, lambda: as_loss(loss_fn(module, batch)),
                                     optimizer=opt, lr=lr, layout=split)
        out = Measurement(metrics={metric_key("sharpness"): float(res.sharpness),
                                   metric_key("n_hvp"): float(res.n_hvp)})
        if res.eos_ratio is not None:
            out.metrics[metric_key("eos_ratio")] = float(res.eos_ratio)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the warm start and the generator; this family's own ``max_hvp`` and
        ``tol`` win over the checkpoint's (a ``RuntimeWarning`` names what differed)."""
        if "estimator" not in state:
            return
        est = self.estimator
        mine = {"max_hvp": est.max_hvp, "tol": est.tol}
        est.load_state_dict(state["estimator"])
        theirs = {"max_hvp": est.max_hvp, "tol": est.tol}
        est.max_hvp, est.tol = mine["max_hvp"], mine["tol"]
        differ = [f"{k}={mine[k]!r} (checkpoint: {theirs[k]!r})" for k in mine if mine[k] != theirs[k]]
        if differ:
            warnings.warn(f"sharpness resumed with {', '.join(differ)}: the arguments apply, the "
                          "warm start is restored", RuntimeWarning, stacklevel=2)
