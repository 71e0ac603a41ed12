"""Which consecutive layers of a model share a rescaling symmetry, found from one forward.

A *pair* (a, b) is two linear-like layers (``nn.Linear``, ``nn.Conv1d/2d/3d``, and the
``transformers`` ``Conv1D`` whose weight is stored transposed, (in, out)) where every output
unit of ``a`` (a channel for a convolution) reaches ``b`` only through positively homogeneous
operations, so that scaling unit j's incoming weights and bias by s_j > 0 and b's weights
from unit j by 1/s_j leaves the network unchanged. Those are the pairs the per-unit balance
(:mod:`.balance`), the dead units and the duplicate units (:mod:`.units`) apply to.

How (:func:`find_pairs`), from one recorded forward on a probe batch:

1. the leaf modules are recorded in call order; consecutive linear-like calls are candidates;
2. a candidate is **skipped**, with the reason, when a layer is called more than once (shared
   weights), a normalisation module (BatchNorm, LayerNorm, GroupNorm, ...) runs between them,
   a module that is not positively homogeneous (GELU, Tanh, Sigmoid, SiLU, ReLU6, attention,
   ...) runs between them, ``b`` is a grouped convolution, or the unit counts do not match (a
   ``Linear`` after a flattened convolution takes ``C * S`` inputs: channel c is the block
   ``c*S .. c*S + S - 1`` of the channel-major flatten);
3. the remaining candidates are **verified** by the symmetry itself: one forward where every
   candidate's output units are multiplied by s_j in {2, 1/2} (forward hooks on ``a``) and
   ``b``'s input units divided by the same s_j (forward pre-hooks on ``b``; for a linear ``b``
   identical to scaling its weight columns). Powers of two are exact in floating point, so a
   true symmetry reproduces the outputs to rounding; a residual connection, a functional
   non-homogeneous operation (``F.gelu``) or attention between them changes them. If the
   joint check fails each candidate is checked alone and the failing ones are skipped.

Every forward runs with every module in eval mode (dropout off, BatchNorm on its running
statistics), under ``torch.no_grad()`` and inside its own fork of the RNG streams (so a
``run_forward`` that draws random numbers sees the same ones each time); modes are
restored and hooks removed afterwards, also on error. Nothing of the model is changed.

Cost: 2 forwards on the probe batch (plus one per candidate when the joint check fails);
the result depends only on the architecture, so callers compute it once.

Reference: the rescaling symmetry of homogeneous networks, Du, Hu & Lee, NeurIPS 2018; its
role in training dynamics, Ziyin, Xu, Poggio & Chuang, arXiv 2502.05300, 2025; Zhao, Walters
& Yu, "Symmetry in Neural Network Parameter Spaces", arXiv 2506.13018, 2025.

Example:
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> find_pairs(net, lambda: net(torch.randn(5, 4))).pairs[0][:2]
    ('0', '2')
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from geomonitor._modules import full_tensor

__all__ = ["Pair", "Structure", "find_pairs", "inference", "input_weight", "is_linear_like",
           "output_weight"]

_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Flatten, nn.Unflatten,
                nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd,
                nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                nn.modules.pooling._AdaptiveMaxPoolNd)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_SCALES = (2.0, 0.5)


class Pair(NamedTuple):
    """Two layers sharing a rescaling symmetry: ``a``'s output units feed ``b``.

    ``between`` names the types of the modules called between them (e.g. ``("ReLU",)``);
    ``spread`` is how many of ``b``'s inputs each unit of ``a`` feeds (1, or S positions of
    a flattened convolution channel).
    """

    a: str
    b: str
    between: tuple[str, ...]
    spread: int


class Structure(NamedTuple):
    """The symmetric pairs, the skipped candidates (``"a -> b"`` to the reason), the
    linear-like layers in call order, and the last of them (the classifier candidate)."""

    pairs: list[Pair]
    skipped: dict[str, str]
    layers: list[str]
    last: str | None


def _is_hf_conv1d(m: nn.Module) -> bool:
    t = type(m)
    return t.__name__ == "Conv1D" and t.__module__.startswith("transformers") \
        and getattr(m, "weight", None) is not None and m.weight.dim() == 2


def is_linear_like(m: nn.Module) -> bool:
    """``nn.Linear`` (and subclasses), non-transposed ``nn.Conv1d/2d/3d``, HF ``Conv1D``."""
    if isinstance(m, nn.Linear) or _is_hf_conv1d(m):
        return True
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed


def output_weight(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of a linear-like module with its output units on dim 0 (detached).

    ``nn.Linear`` (out, in); conv (out, in/groups, *k); HF ``Conv1D`` stored (in, out) is
    transposed to (out, in).
    """
    w = full_tensor(m.weight).detach()  # FSDP2: this one layer gathered
    if _is_hf_conv1d(m):
        w = w.T
    b = full_tensor(m.bias).detach() if getattr(m, "bias", None) is not None else None
    return w, b


def input_weight(m: nn.Module, units: int) -> torch.Tensor:
    """The weight of a linear-like module with its input grouped by ``units``: (out, units, ...).

    A linear layer taking ``units * S`` inputs (a flattened convolution) gives (out, units, S).

    Raises:
        ValueError: a grouped convolution, or an input size that ``units`` does not divide.
    """
    w, _ = output_weight(m)
    if isinstance(m, nn.modules.conv._ConvNd) and m.groups != 1:
        raise ValueError(f"grouped convolution (groups={m.groups}) has no per-unit input columns")
    if w.shape[1] % units:
        raise ValueError(f"input size {w.shape[1]} is not a multiple of {units} units")
    if isinstance(m, nn.modules.conv._ConvNd) or w.shape[1] == units:
        return w
    return w.reshape(w.shape[0], units, w.shape[1] // units)


def _units(m: nn.Module) -> int:
    return output_weight(m)[0].shape[0]


def _unit_dim(m: nn.Module) -> int:
    return 1 if isinstance(m, nn.modules.conv._ConvNd) else -1


@contextlib.contextmanager
def inference(model: nn.Module, extra: tuple[nn.Module, ...] = ()) -> Iterator[None]:
    """Every module in eval mode, no grad, RNG forked; modes restored on exit (also on error)."""
    modes = [(m, m.training) for m in list(model.modules()) + list(extra)]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for m, _ in modes:
            m.training = False
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.no_grad():
            yield
    finally:
        for m, mode in reversed(modes):
            m.training = mode


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _same(y0: list[torch.Tensor], y1: list[torch.Tensor], rtol: float) -> bool:
    if len(y0) != len(y1) or not y0:
        return False
    for a, b in zip(y0, y1):
        if a.shape != b.shape:
            return False
        scale = float(a.detach().abs().max()) if a.numel() else 0.0
        if float((a - b).abs().max()) > rtol * max(scale, 1e-30):
            return False
    return True


def _scale_vector(units: int, like: torch.Tensor) -> torch.Tensor:
    s = torch.tensor(_SCALES, dtype=like.dtype, device=like.device)
    return s[torch.arange(units, device=like.device) % 2]


def _broadcast(s: torch.Tensor, x: torch.Tensor, dim: int, spread: int) -> torch.Tensor:
    if spread > 1:
        s = s.repeat_interleave(spread)
    shape = [1] * x.dim()
    shape[dim] = s.numel()
    return s.to(x.dtype).reshape(shape)


def _scaled_forward(model: nn.Module, modules: dict[str, nn.Module],
                    run_forward: Callable[[], Any], pairs: list[Pair]) -> list[torch.Tensor]:
    handles = []

    def scale_out(m: nn.Module, units: int) -> Callable[..., Any]:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
            return out * _broadcast(_scale_vector(units, out), out, _unit_dim(m), 1)
        return hook

    def unscale_in(m: nn.Module, units: int, spread: int) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            return (x / _broadcast(_scale_vector(units, x), x, _unit_dim(m), spread),) + args[1:]
        return hook

    try:
        for p in pairs:
            a, b = modules[p.a], modules[p.b]
            handles.append(a.register_forward_hook(scale_out(a, _units(a))))
            handles.append(b.register_forward_pre_hook(unscale_in(b, _units(a), p.spread)))
        with inference(model):
            return _tensors(run_forward())
    finally:
        for h in handles:
            h.remove()


def _candidate(name_a: str, a: nn.Module, name_b: str, b: nn.Module, calls: dict[str, int],
               between: list[nn.Module]) -> tuple[Pair | None, str]:
    for n in (name_a, name_b):
        if calls[n] > 1:
            return None, f"{n} is called {calls[n]} times in one forward (shared weights)"
    kinds = tuple(type(m).__name__ for m in between)
    norm = [type(m).__name__ for m in between if isinstance(m, _NORMS)
            or "norm" in type(m).__name__.lower()]
    if norm:
        return None, f"normalisation ({', '.join(norm)}) in between"
    other = [type(m).__name__ for m in between if not isinstance(m, _HOMOGENEOUS)]
    if other:
        return None, f"non-homogeneous module ({', '.join(other)}) in between"
    if isinstance(b, nn.modules.conv._ConvNd) and b.groups != 1:
        return None, f"{name_b} is a grouped convolution (groups={b.groups})"
    units, fan_in = _units(a), output_weight(b)[0].shape[1]
    conv_to_linear = isinstance(a, nn.modules.conv._ConvNd) and not isinstance(
        b, nn.modules.conv._ConvNd) and fan_in % units == 0
    if fan_in != units and not conv_to_linear:
        return None, f"{name_a} has {units} output units, {name_b} takes {fan_in} inputs"
    return Pair(name_a, name_b, kinds, fan_in // units), ""


def find_pairs(model: nn.Module, run_forward: Callable[[], Any], *,
               rtol: float = 1e-4) -> Structure:
    """The consecutive linear-like layers of ``model`` that share a rescaling symmetry.

    Args:
        model: the network (not modified).
        run_forward: zero-argument closure running ``model`` on a probe batch.
        rtol: largest change of the outputs, relative to their largest magnitude, that the
            verification accepts as "unchanged" (exact symmetries give ~1e-7 in float32).

    Returns:
        :class:`Structure` (see the module docstring for the skip reasons).

    Raises:
        ValueError: ``model`` is not an ``nn.Module``, or its forward returns no floating
            tensor. Whatever ``run_forward`` raises (after cleaning up).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    leaves = {n: m for n, m in modules.items() if n and (is_linear_like(m) or next(
        m.children(), None) is None)}
    order: list[str] = []
    calls: dict[str, int] = {n: 0 for n in leaves}
    handles = []

    def record(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any) -> None:
            calls[name] += 1
            order.append(name)
        return hook

    try:
        for n, m in leaves.items():
            handles.append(m.register_forward_pre_hook(record(n)))
        with inference(model):
            base = _tensors(run_forward())
    finally:
        for h in handles:
            h.remove()
    if not base:
        raise ValueError("the forward of model returned no floating tensor; the pairs cannot "
                         "be verified")
    first: dict[str, int] = {}
    for i, n in enumerate(order):
        first.setdefault(n, i)
    layers = [n for n in first if is_linear_like(leaves[n])]
    skipped: dict[str, str] = {}
    candidates: list[Pair] = []
    for a, b in zip(layers, layers[1:]):
        between = [leaves[n] for n in order[first[a] + 1:first[b]]
                   if not is_linear_like(leaves[n])]
        pair, reason = _candidate(a, leaves[a], b, leaves[b], calls, between)
        if pair is None:
            skipped[f"{a} -> {b}"] = reason
        else:
            candidates.append(pair)
    pairs = candidates
    if candidates and not _same(base, _scaled_forward(model, modules, run_forward, candidates),
                                rtol):
        pairs = []
        for p in candidates:
            if _same(base, _scaled_forward(model, modules, run_forward, [p]), rtol):
                pairs.append(p)
            else:
                skipped[f"{p.a} -> {p.b}"] = (
                    "rescaling the units changes the output (a residual connection, a "
                    "functional non-homogeneous operation or attention in between)")
    return Structure(pairs, skipped, layers, layers[-1] if layers else None)
