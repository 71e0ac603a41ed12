"""Lie derivative of a function along a one-parameter group of input transformations.

Definition. For a flow t -> phi_t (``flow(x, t)``, phi_0 = identity; a rotation by angle t, a
translation by t pixels) and optionally an output flow psi_t (``flow_out(y, t)``), the Lie
derivative of f at x is

    L f(x) = d/dt [ psi_{-t}( f(phi_t(x)) ) ] at t = 0,

(``flow_out=None``: psi = identity, the invariance case, L f(x) = d/dt f(phi_t(x))). It is 0
for every x exactly when f is equivariant to the flow (to first order), and its size measures
learned equivariance without a finite step size. The value reported is the mean over the
batch of the per-sample norm ||L f(x_i)|| (each sample's output flattened), in float64.

Reference: N. Gruver, M. Finzi, M. Goldblum, A. G. Wilson, "The Lie Derivative for Measuring
Learned Equivariance", ICLR 2023.

Computation: one forward-mode product ``torch.func.jvp`` of t -> g(t) at t = 0 with tangent 1
(exact up to float rounding; no finite differences). The flow must be differentiable in t:
``torch.roll`` is not (integer shifts); :func:`fourier_shift` is a differentiable circular
translation by a real number of samples.

Shapes: ``x`` (N, ...); ``f(x)`` (N, ...); ``flow(x, t)`` takes a 0-dim tensor ``t``.

Precision: ``x`` is computed in float32 (float64 stays float64; fp16/bf16 input is cast to
float32). A model ``f`` (an ``nn.Module``) with fp16/bf16 parameters or buffers is evaluated
with float32 copies of them (``torch.func.functional_call``; the model itself is not
modified): the derivative is that of the same weights in float32 arithmetic, as the
monitor's equivariance family measures half-precision models. A plain callable wrapping a
half-precision model cannot be seen into: pass the module itself (the dtype mismatch is
then a ``ValueError`` saying so).

Cost: about two to three forward passes of f (forward-mode AD), no stored graph.

Failure modes: a non-tensor output, non-finite derivatives, a flow / model that forward-mode
AD cannot differentiate (the error of ``torch.func`` is re-raised as a ``ValueError``), and a
flow whose derivative in t is 0 on the whole batch (it does not move the inputs, or it goes
through an integer such as ``torch.roll(x, int(t))`` and would silently give 0): ``ValueError``. The
function is called as is: put a model in eval mode first.

Example:
    >>> f = lambda x: x.square().sum(-1)                         # rotation invariant in 2-D
    >>> rot = lambda x, t: x @ torch.stack([torch.stack([t.cos(), -t.sin()]),
    ...                                     torch.stack([t.sin(), t.cos()])])
    >>> lie_derivative(f, torch.randn(16, 2), rot)              # ~1e-7
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["fourier_shift", "lie_derivative", "lie_derivative_tensor"]

Flow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fourier_shift(x: torch.Tensor, t: torch.Tensor | float, dim: int = -1) -> torch.Tensor:
    """Circular translation of ``x`` by ``t`` samples along ``dim`` (a real ``t``), by the phase
    of its discrete Fourier transform; equals ``torch.roll(x, t, dim)`` for integer ``t`` up to
    float rounding, and is differentiable in ``t``. Real input, real output of ``x``'s dtype."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be an int in [{-x.dim()}, {x.dim() - 1}] for x of shape "
                         f"{tuple(x.shape)}, got {dim!r}")
    n = x.shape[dim]
    k = torch.fft.fftfreq(n, device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    t = torch.as_tensor(t, dtype=k.dtype, device=x.device)
    phase = torch.exp(-2j * torch.pi * k * t)
    shape = [1] * x.dim()
    shape[dim] = n
    X = torch.fft.fft(x, dim=dim)
    return torch.fft.ifft(X * phase.reshape(shape), dim=dim).real.to(x.dtype)


def lie_derivative_tensor(f: Callable[[torch.Tensor], Any], x: torch.Tensor, flow: Flow,
                          flow_out: Flow | None = None) -> torch.Tensor:
    """The Lie derivative L f(x), a tensor of ``f(x)``'s shape (see the module docstring)."""
    for name, fn in (("f", f), ("flow", flow)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if flow_out is not None and not callable(flow_out):
        raise TypeError(f"flow_out must be callable or None, got {type(flow_out).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    work = torch.promote_types(x.dtype, torch.float32)
    x = x.detach().to(work)
    if isinstance(f, nn.Module):
        f = _half_in_float32(f)

    def g(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xt = flow(x, t)
        if not isinstance(xt, torch.Tensor):
            raise TypeError(f"flow must return a tensor, got {type(xt).__name__}")
        y = f(xt)
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"f must return a tensor, got {type(y).__name__}")
        return xt, (y if flow_out is None else flow_out(y, -t))

    t0 = torch.zeros((), dtype=work, device=x.device)
    try:
        _, (dx, d) = torch.func.jvp(g, (t0,), (torch.ones_like(t0),))
    except RuntimeError as exc:
        hint = ""
        if any(w in str(exc) for w in ("Half", "BFloat16")):
            hint = (f"; x is computed in {work}: for a half-precision model pass the nn.Module "
                    "itself as f (its fp16/bf16 weights are then read in float32)")
        raise ValueError(f"forward-mode differentiation of t -> f(flow(x, t)) failed: {exc}{hint}") from exc
    if not bool((dx != 0).any()):
        raise ValueError("d/dt flow(x, t) = 0 at t = 0 for the whole batch: the flow does not move "
                         "x or is not differentiable in t (e.g. torch.roll(x, int(t)); use "
                         "fourier_shift)")
    if not torch.isfinite(d).all():
        raise ValueError("the Lie derivative is not finite (NaN or Inf)")
    return d.detach()


def _half_in_float32(model: nn.Module) -> Callable[[torch.Tensor], Any]:
    """``model`` itself, or, when it has fp16/bf16 parameters or buffers, ``model`` evaluated
    with float32 copies of those (``functional_call``; tied weights stay tied)."""
    half = {name: t for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
            if t.dtype in (torch.float16, torch.bfloat16)}
    if not half:
        return model
    values = {name: t.detach().float() for name, t in half.items()}
    return lambda inp: torch.func.functional_call(model, values, (inp,))


def lie_derivative(f: Callable[[torch.Tensor], Any], x: torch.Tensor, flow: Flow,
                   flow_out: Flow | None = None) -> float:
    """Mean over the batch of ||L f(x_i)|| (float64); see the module docstring.

    Args:
        f: a callable (a model in eval mode) from a batch (N, ...) to a tensor (N, ...).
        x: the batch.
        flow: ``flow(x, t)``, the input transformation by the group element ``t`` (0-dim
            tensor), differentiable in ``t``, ``flow(x, 0) == x``.
        flow_out: ``flow_out(y, t)`` on f's output, or ``None`` (invariance).

    Returns:
        The mean norm as a Python float (0 for an exactly equivariant ``f``).
    """
    d = lie_derivative_tensor(f, x, flow, flow_out)
    if d.dim() == 0:
        return float(d.abs())
    return float(d.to(torch.float64).reshape(d.shape[0], -1).norm(dim=1).mean())


