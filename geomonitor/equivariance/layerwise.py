"""Lie derivative of every prefix of a network, in one pass, without writing sub-networks.

Definition. For a model and a layer ``l`` (a submodule, by its ``named_modules()`` name), let
``f_l(x)`` be the output of ``l`` when the model runs on ``x``: the prefix sub-network ending
at ``l``. For a flow ``phi_t`` on the inputs (``flow(x, t)``) and optionally an output flow
``psi_t`` on ``l``'s output (``flow_out``, per layer), the layer's Lie derivative is

    L f_l(x) = d/dt [ psi_{-t}( f_l(phi_t(x)) ) ] at t = 0,

reported, as by :func:`~geomonitor.equivariance.lie.lie_derivative`, as the batch mean of the
per-sample norms ``||L f_l(x_i)||`` in float64. Where it grows along the depth of a network
shows which layers break the symmetry (Gruver, Finzi, Goldblum & Wilson, "The Lie Derivative
for Measuring Learned Equivariance", ICLR 2023, Section 5: the layer-wise decomposition).

Computation: forward hooks on the chosen modules capture their outputs during one
forward-mode product ``torch.func.jvp`` of ``t -> model(flow(x, t))`` at ``t = 0``; each
captured output carries its own tangent, so every layer's derivative comes from the same pass
and equals ``lie_derivative(prefix_l, x, flow)`` for a hand-written prefix ``prefix_l``. The
model's forward, parameters and modes are unchanged (the hooks are removed afterwards).

Shapes: ``x`` (N, ...); each layer's output (N, ...) (a tuple or list output contributes its
first element, as Hugging Face blocks return ``(hidden_states, ...)``).

Cost: about two to three forward passes of the whole model (forward-mode AD), whatever the
number of layers; no stored graph.

Failure modes (``ValueError``): an unknown layer name, a layer not called in the forward or
called more than once (its output is then ambiguous), a non-tensor output, a flow that does
not move ``x`` (derivative 0, e.g. ``torch.roll(x, int(t))``), a non-finite derivative, and a
model or flow that forward-mode AD cannot differentiate. Precision as in
:mod:`geomonitor.equivariance.lie` (half-precision weights are read in float32). The model is
called as is: put it in eval mode first.

Example:
    >>> net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
    ...                     nn.Flatten(), nn.Linear(64, 2)).eval()
    >>> shift = lambda x, t: fourier_shift(x, t)
    >>> layerwise_lie_derivative(net, torch.randn(8, 1, 16), shift, layers=["0", "3"],
    ...                          flow_out={"0": shift})          # {"0": ~1e-7, "3": ...}
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from geomonitor.equivariance.lie import Flow, _half_in_float32

__all__ = ["layerwise_lie_derivative", "layerwise_lie_derivative_tensors"]


def _first_tensor(name: str, out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"layer {name!r} returned {type(out).__name__}, not a tensor")
    return out


def layerwise_lie_derivative_tensors(model: nn.Module, x: torch.Tensor, flow: Flow, *,
                                     layers: Sequence[str],
                                     flow_out: Flow | Mapping[str, Flow | None] | None = None,
                                     ) -> dict[str, torch.Tensor]:
    """``{layer: L f_layer(x)}``, tensors of each layer's output shape (see the module docstring).

    Args:
        model: the network (an ``nn.Module``, in eval mode).
        x: the batch (N, ...), floating point.
        flow: ``flow(x, t)``, the input transformation, differentiable in ``t``, ``flow(x, 0) == x``.
        layers: module names (``named_modules()``), in any order; ``""`` is the whole model.
        flow_out: one output flow for every layer, a mapping ``layer -> flow or None`` (layers
            not named: invariance), or ``None`` (invariance everywhere).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(flow):
        raise TypeError(f"flow must be callable, got {type(flow).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be a non-empty list of module names, got {layers!r}")
    names = list(dict.fromkeys(layers))
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"no module named {unknown} in the model (named_modules())")
    if isinstance(flow_out, Mapping):
        extra = sorted(set(flow_out) - set(names))
        if extra:
            raise ValueError(f"flow_out names layers not in layers: {extra}")
        outs = {n: flow_out.get(n) for n in names}
    else:
        outs = {n: flow_out for n in names}
    for n, fo in outs.items():
        if fo is not None and not callable(fo):
            raise TypeError(f"flow_out for layer {n!r} must be callable or None, got {type(fo).__name__}")

    work = torch.promote_types(x.dtype, torch.float32)
    x = x.detach().to(work)
    f = _half_in_float32(model)

    def g(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}

        def hook_for(n: str) -> Callable[..., None]:
            def hook(_m: nn.Module, _args: Any, out: Any) -> None:
                captured[n].append(_first_tensor(n, out))
            return hook

        handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
        try:
            xt = flow(x, t)
            if not isinstance(xt, torch.Tensor):
                raise TypeError(f"flow must return a tensor, got {type(xt).__name__}")
            f(xt)
        finally:
            for h in handles:
                h.remove()
        results = [xt]
        for n in names:
            if len(captured[n]) != 1:
                what = "not called" if not captured[n] else f"called {len(captured[n])} times"
                raise ValueError(f"layer {n!r} was {what} in the forward: its output as a function "
                                 "of the input is not defined (choose a module called once)")
            y = captured[n][0]
            results.append(y if outs[n] is None else outs[n](y, -t))
        return tuple(results)

    t0 = torch.zeros((), dtype=work, device=x.device)
    try:
        _, tangents = torch.func.jvp(g, (t0,), (torch.ones_like(t0),))
    except RuntimeError as exc:
        raise ValueError(f"forward-mode differentiation of t -> model(flow(x, t)) failed: {exc}") from exc
    dx, *ds = tangents
    if not bool((dx != 0).any()):
        raise ValueError("d/dt flow(x, t) = 0 at t = 0 for the whole batch: the flow does not move "
                         "x or is not differentiable in t (e.g. torch.roll(x, int(t)); use "
                         "fourier_shift)")
    result = {}
    for n, d in zip(names, ds):
        if not torch.isfinite(d).all():
            raise ValueError(f"the Lie derivative of layer {n!r} is not finite (NaN or Inf)")
        result[n] = d.detach()
    return result


def layerwise_lie_derivative(model: nn.Module, x: torch.Tensor, flow: Flow, *,
                             layers: Sequence[str],
                             flow_out: Flow | Mapping[str, Flow | None] | None = None,
                             ) -> dict[str, float]:
    """``{layer: mean over the batch of ||L f_layer(x_i)||}`` (float64), in the order of ``layers``.

    Args: as :func:`layerwise_lie_derivative_tensors`.

    Returns:
        One float per layer; 0 for a prefix exactly equivariant (invariant) to the flow.
    """
    out = {}
    for n, d in layerwise_lie_derivative_tensors(model, x, flow, layers=layers, flow_out=flow_out).items():
        out[n] = float(d.abs()) if d.dim() == 0 else float(
            d.to(torch.float64).reshape(d.shape[0], -1).norm(dim=1).mean())
    return out
