"""Equivariance error of a function under a user-given group action.

Definition. For a function f, an input action x -> g.x (``transform_in``) and an output
action y -> rho(g) y (``transform_out``; ``None`` means the identity, i.e. invariance), the
equivariance error on a batch x_1..x_N is the mean relative error

    E = (1 / N') sum_i || f(g.x_i) - rho(g) f(x_i) || / || f(x_i) ||,

norms over each sample's flattened output, computed in float64; E = 0 exactly for an
equivariant f. For per-layer errors the same is computed on a module's output with that
layer's own output action (e.g. ``torch.roll`` of a convolutional feature map by the
input shift divided by the layer's total stride, or ``None`` for a layer that should be
invariant).

References: the measure of learned equivariance of N. Gruver, M. Finzi, M. Goldblum,
A. G. Wilson, "The Lie Derivative for Measuring Learned Equivariance", ICLR 2023 (discrete
transformations, Sec. 3); for why CNNs are not shift invariant: R. Zhang, "Making
Convolutional Networks Shift-Invariant Again", ICML 2019; A. Azulay, Y. Weiss, "Why do deep
convolutional networks generalize so poorly to small image transformations?", JMLR 2019.

Shapes: ``x`` is a batch (N, ...); ``f(x)`` and each layer output are (N, ...); ``rho(g) f(x)``
must have the shape of ``f(g.x)``.

Cost: two forward passes of f (one on x, one on g.x), under ``torch.no_grad``; per-layer
errors use forward hooks on those same two passes.

Degradation: samples with ||f(x_i)|| = 0 (e.g. a dead ReLU layer on that sample) have no
relative error and are left out of the mean (N' < N); when every sample is left out a
``ValueError`` says so. fp16/bf16 outputs are compared in float64.

Failure modes: a non-tensor output, shapes that differ after the actions, a batch of fewer
than one sample, and non-finite outputs raise ``ValueError``/``TypeError``. The function is
called as is: put a model in eval mode first (dropout, BatchNorm batch statistics would
otherwise count as an equivariance error).

Example:
    >>> shift = lambda x: torch.roll(x, 1, dims=-1)
    >>> equivariance_error(lambda x: x.sum(-1), torch.randn(8, 16), shift)   # ~1e-8: invariant
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["equivariance_error", "layer_equivariance_errors", "relative_error"]

Action = Callable[[torch.Tensor], torch.Tensor]


def _tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(value).__name__}")
    return value


def relative_error(y_gx: torch.Tensor, rho_y: torch.Tensor, y: torch.Tensor, what: str = "f") -> float:
    """Mean over samples of ||y_gx - rho_y|| / ||y|| (float64), zero-norm samples left out."""
    if y_gx.shape != rho_y.shape:
        raise ValueError(f"{what}: f(g.x) has shape {tuple(y_gx.shape)} but rho(g) f(x) has "
                         f"shape {tuple(rho_y.shape)}; the output action must match the input "
                         "action")
    if y_gx.dim() == 0 or y_gx.shape[0] < 1 or y.shape[0] != y_gx.shape[0]:
        raise ValueError(f"{what}: outputs must be batches (N, ...) of one N, got shapes "
                         f"{tuple(y.shape)} and {tuple(y_gx.shape)}")
    a = y_gx.detach().to(torch.float64).reshape(y_gx.shape[0], -1)
    b = rho_y.detach().to(torch.float64).reshape(a.shape[0], -1)
    c = y.detach().to(torch.float64).reshape(y.shape[0], -1)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all() and torch.isfinite(c).all()):
        raise ValueError(f"{what}: the outputs contain NaN or Inf")
    den = c.norm(dim=1)
    keep = den > 0
    if not bool(keep.any()):
        raise ValueError(f"{what}: ||f(x)|| = 0 for every sample; the relative error is undefined")
    return float(((a - b).norm(dim=1)[keep] / den[keep]).mean())


def equivariance_error(f: Callable[[torch.Tensor], Any], x: torch.Tensor, transform_in: Action,
                       transform_out: Action | None = None) -> float:
    """Mean relative equivariance error of ``f`` on the batch ``x`` (see the module docstring).

    Args:
        f: a callable (a model in eval mode) mapping a batch (N, ...) to a tensor (N, ...).
        x: the input batch.
        transform_in: the input action g.x (a batch to a batch of the same length).
        transform_out: the output action rho(g) on f's output, or ``None`` (invariance).

    Returns:
        The error as a Python float (0 for an exactly equivariant ``f``).
    """
    _check_callables(f, transform_in, transform_out)
    x = _tensor(x, "x")
    with torch.no_grad():
        y = _tensor(f(x), "f(x)")
        y_gx = _tensor(f(_tensor(transform_in(x), "transform_in(x)")), "f(transform_in(x))")
        rho_y = y if transform_out is None else _tensor(transform_out(y), "transform_out(f(x))")
    return relative_error(y_gx, rho_y, y)


def _check_callables(f: Any, t_in: Any, t_out: Any) -> None:
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not callable(t_in):
        raise TypeError(f"transform_in must be callable, got {type(t_in).__name__}")
    if t_out is not None and not callable(t_out):
        raise TypeError(f"transform_out must be callable or None, got {type(t_out).__name__}")


def layer_equivariance_errors(model: nn.Module, x: torch.Tensor, transform_in: Action,
                              layer_transforms: Mapping[str, Action | None], *,
                              forward: Callable[[nn.Module, torch.Tensor], Any] | None = None
                              ) -> dict[str, float]:
    """Per-layer equivariance errors ``{layer name: error}`` of ``model``'s modules.

    Args:
        model: the network (in eval mode); it is not modified (hooks are removed afterwards).
        x: the input batch.
        transform_in: the input action.
        layer_transforms: ``{module name (from named_modules): output action or None}``.
        forward: ``forward(model, x)``; default ``model(x)``.

    Raises:
        ValueError: an unknown module name (the message lists some known ones), a module
            whose output is not a tensor or not computed by the forward, and the failures of
            :func:`equivariance_error`.
    """
    _check_callables(model, transform_in, None)
    if not isinstance(layer_transforms, Mapping) or not layer_transforms:
        raise ValueError(f"layer_transforms must be a non-empty mapping of module name -> action, "
                         f"got {layer_transforms!r}")
    modules = dict(model.named_modules())
    for name, act in layer_transforms.items():
        if name not in modules:
            raise ValueError(f"layer {name!r} is not a module of the model (known: "
                             f"{[n for n in modules if n][:8]}...)")
        if act is not None and not callable(act):
            raise TypeError(f"layer_transforms[{name!r}] must be callable or None, got "
                            f"{type(act).__name__}")
    fwd = forward or (lambda m, inp: m(inp))
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in layer_transforms}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"layer {name!r} returns {type(out).__name__}, not a tensor")
            outs[name].append(out.detach())
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in layer_transforms]
    try:
        with torch.no_grad():
            fwd(model, _tensor(x, "x"))
            fwd(model, _tensor(transform_in(x), "transform_in(x)"))
    finally:
        for h in handles:
            h.remove()
    result = {}
    for name, act in layer_transforms.items():
        got = outs[name]
        if len(got) != 2:
            raise ValueError(f"layer {name!r} ran {len(got) // 2 if got else 0} times per forward "
                             "(it must run exactly once)")
        y, y_gx = got
        with torch.no_grad():
            rho_y = y if act is None else _tensor(act(y), f"layer_transforms[{name!r}](output)")
        result[name] = relative_error(y_gx, rho_y, y, what=f"layer {name!r}")
    return result
