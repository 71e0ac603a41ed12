"""Permutation alignment of two networks by weight matching (Git Re-Basin).

Definition. Permuting the hidden units of a layer (rows of its weight and bias, the entries
of a following BatchNorm, the input columns of the next layer) leaves the network's function
unchanged. Weight matching looks for the permutations pi = (P_1, ..., P_{K-1}) of the K-1
hidden layers of model b that maximise the inner product with model a,

    sum_l < W_l^a, P_l W_l^b P_{l-1}^T >   (+ biases and BatchNorm entries),

by coordinate descent: for one layer at a time (in an order drawn from ``generator``) the
other permutations are fixed and the best P_l is a linear assignment problem
(``scipy.optimize.linear_sum_assignment`` on the n_l x n_l matrix of the summed inner products
of all weights touching that layer); sweeps repeat until no layer's permutation improves the
objective, or ``max_iter`` sweeps.

Reference: S. K. Ainsworth, J. Hayase, S. Srinivasa, "Git Re-Basin: Merging Models modulo
Permutation Symmetries", ICLR 2023 (Algorithm 1).

Supported architectures, read from the ``torch.fx`` graph of ``model_a``: a single chain
from one input to the output made of ``Linear`` and ``Conv1d/2d/3d`` layers (``groups=1``),
``BatchNorm1d/2d/3d``, element-wise activations (modules, ``torch``/``F`` functions or
tensor methods), dropout, max/average/adaptive pooling, softmax, and one channel-major
flatten from the last convolution to the first ``Linear`` (``nn.Flatten()``,
``torch.flatten(x, 1)``, ``x.view(x.size(0), -1)``, ``x.reshape(...)``); a convolution's
channel c then owns the ``in_features / channels`` consecutive input columns of the
``Linear``. The input and output units are never permuted.

Refused, with a ``ValueError`` naming the node: residual connections and any branch (a
tensor used twice, or an operation with two tensor inputs, e.g. ``x + f(x)``, ``torch.cat``),
several inputs, parameters used outside a module, ``LayerNorm``/``GroupNorm``/
``InstanceNorm`` (only BatchNorm's per-channel statistics are permuted), grouped or
depthwise convolutions, transposed convolutions, embeddings, recurrent and attention
layers, and any other module or function (whose action on channels is unknown); models
``torch.fx`` cannot trace (data-dependent control flow) are refused with the trace error.

Cost: per sweep, sum over hidden layers of O(n_l^2 * m_l) for the inner products (m_l =
size of the weights touching layer l) in float64 on the CPU, plus an O(n_l^3) assignment.

Example:
    >>> aligned = weight_matching(model_a, model_b)     # model_b's state dict, permuted
    >>> model_b.load_state_dict(aligned)                 # same function, aligned to model_a
"""
from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import fx, nn

from geomonitor._checks import positive_int

__all__ = ["apply_permutations", "match_permutations", "weight_matching"]

_WEIGHT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Softmax, nn.LogSoftmax,
)
_PASS_FUNCTIONS = {
    torch.relu, torch.tanh, torch.sigmoid, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu,
    F.celu, F.gelu, F.silu, F.mish, F.tanh, F.sigmoid, F.hardtanh, F.hardswish, F.softplus,
    F.softsign, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.max_pool1d, F.max_pool2d,
    F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
    operator.mul, operator.truediv, operator.add, operator.sub, operator.neg,
}
_PASS_METHODS = {"relu", "tanh", "sigmoid", "softmax", "log_softmax", "contiguous", "clamp"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_META_METHODS = {"size", "dim"}


@dataclass
class _Spec:
    """Hidden layers and, per state-dict key, how its axes are permuted."""

    hidden: list[str]                 # names of the layers whose outputs are permuted
    sizes: list[int]
    # key -> (view shape, [(axis in the view, hidden index)])
    axes: dict[str, tuple[tuple[int, ...], list[tuple[int, int]]]] = field(default_factory=dict)


def _refuse(what: str) -> ValueError:
    return ValueError(f"weight_matching does not support this model: {what}. Supported: a chain "
                      "of Linear / Conv (groups=1) layers with BatchNorm, element-wise "
                      "activations, dropout, pooling and one flatten, without residual "
                      "connections or branches")


def _node_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def _is_meta(node: fx.Node, meta: set[fx.Node]) -> bool:
    if node.op == "call_method" and node.target in _META_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return True
    if node.op == "call_function" and node.target is len:
        return True
    ins = _node_inputs(node)
    return node.op in ("call_function", "call_method") and bool(ins) and all(n in meta for n in ins)


def _spec(model: nn.Module) -> _Spec:
    if isinstance(model, _WEIGHT + _BN) and next(model.children(), None) is None:
        raise _refuse(f"it is a single {type(model).__name__} layer, which has no hidden units "
                      "to permute (a chain of at least two Linear/Conv layers is needed)")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - the trace error is the explanation
        raise _refuse(f"torch.fx cannot trace it ({type(exc).__name__}: {exc})") from exc
    modules = dict(gm.named_modules())
    meta: set[fx.Node] = set()
    chain: list[tuple[str, fx.Node]] = []  # (kind, node) for data nodes in order
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise _refuse(f"{len(placeholders)} inputs (one tensor input is supported)")
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if _is_meta(node, meta):
            meta.add(node)
            continue
        if node.op == "get_attr":
            raise _refuse(f"node {node.name!r} uses the parameter or buffer {node.target!r} "
                          "directly in forward (e.g. x * self.scale or F.linear(x, self.weight)) "
                          "instead of through a submodule, so its action on the units is unknown")
        data_in = [n for n in _node_inputs(node) if n not in meta]
        if len(data_in) != 1:
            raise _refuse(f"node {node.name!r} ({node.target}) combines {len(data_in)} tensors "
                          "(a residual connection or a branch)")
        kind = _classify(node, modules)
        chain.append((kind, node))
    data_nodes = {n for _, n in chain} | set(placeholders)
    for n in data_nodes:
        users = [u for u in n.users if u not in meta]
        if len(users) > 1:
            raise _refuse(f"the output of node {n.name!r} is used {len(users)} times (a residual "
                          "connection or a branch)")
    return _build(chain, modules)


def _classify(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _WEIGHT):
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups != 1:
                raise _refuse(f"module {node.target!r} is a grouped convolution (groups={m.groups})")
            return "weight"
        if isinstance(m, _BN):
            return "bn"
        if isinstance(m, _PASS_MODULES):
            return "pass"
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _refuse(f"module {node.target!r} flattens dims {m.start_dim}..{m.end_dim} "
                              "(only nn.Flatten(1, -1) is supported)")
            return "flatten"
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                          nn.LocalResponseNorm)):
            raise _refuse(f"module {node.target!r} is a {type(m).__name__} (only BatchNorm "
                          "normalisation layers are supported)")
        raise _refuse(f"module {node.target!r} ({type(m).__name__}) is not supported")
    if node.op == "call_function":
        if node.target in _PASS_FUNCTIONS:
            return "pass"
        if node.target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise _refuse(f"node {node.name!r} flattens dims {start}..{end} (only "
                              "torch.flatten(x, 1) is supported)")
            return "flatten"
        raise _refuse(f"function {getattr(node.target, '__name__', node.target)!r} "
                      f"(node {node.name!r}) is not supported")
    if node.op == "call_method":
        if node.target in _PASS_METHODS:
            return "pass"
        if node.target in _FLATTEN_METHODS:
            return "flatten"
        raise _refuse(f"tensor method {node.target!r} (node {node.name!r}) is not supported")
    raise _refuse(f"node {node.name!r} ({node.op}) is not supported")


def _build(chain: list[tuple[str, fx.Node]], modules: Mapping[str, nn.Module]) -> _Spec:
    layers = [n.target for k, n in chain if k == "weight"]
    if len(layers) < 2:
        raise _refuse(f"it has {len(layers)} Linear/Conv layer(s): nothing to permute")
    spec = _Spec(hidden=list(layers[:-1]), sizes=[])
    li = -1                      # index of the last weight layer seen
    flattened = False            # a flatten since the last weight layer
    seen_flatten = False         # a flatten after some weight layer
    prev_out = None
    for kind, node in chain:
        if kind == "flatten" and li >= 0:
            flattened = seen_flatten = True
        elif kind == "bn":
            bn = modules[node.target]
            if 0 <= li < len(layers) - 1:
                if bn.num_features != prev_out:
                    raise _refuse(f"BatchNorm {node.target!r} has {bn.num_features} features after "
                                  f"a layer with {prev_out} outputs")
                for name, t in list(bn.named_parameters(recurse=False)) + list(bn.named_buffers(recurse=False)):
                    if t.is_floating_point():
                        spec.axes[f"{node.target}.{name}"] = ((t.shape[0],), [(0, li)])
        elif kind == "weight":
            m = modules[node.target]
            is_conv = not isinstance(m, nn.Linear)
            n_out = m.out_channels if is_conv else m.out_features
            n_in = m.in_channels if is_conv else m.in_features
            w = m.weight
            view: tuple[int, ...] = tuple(w.shape)
            axes: list[tuple[int, int]] = []
            if li >= 0:
                if is_conv and seen_flatten:
                    raise _refuse(f"convolution {node.target!r} comes after a flatten")
                block = 1
                if flattened and n_in != prev_out:
                    if n_in % prev_out:
                        raise _refuse(f"Linear {node.target!r} has {n_in} inputs, not a multiple "
                                      f"of the {prev_out} channels before the flatten")
                    block = n_in // prev_out
                elif n_in != prev_out:
                    raise _refuse(f"layer {node.target!r} has {n_in} inputs after a layer with "
                                  f"{prev_out} outputs")
                if block > 1:
                    view = (w.shape[0], prev_out, block)
                axes.append((1, li))
            li += 1
            if li < len(layers) - 1:
                axes.append((0, li))
                spec.sizes.append(n_out)
                if m.bias is not None:
                    spec.axes[f"{node.target}.bias"] = ((n_out,), [(0, li)])
            spec.axes[f"{node.target}.weight"] = (view, axes)
            prev_out, flattened = n_out, False
    return spec


def _permute(t: torch.Tensor, view: tuple[int, ...], axes: list[tuple[int, int]],
             perms: list[torch.Tensor], skip: int | None = None) -> torch.Tensor:
    out = t.reshape(view)
    for axis, h in axes:
        if h != skip:
            out = out.index_select(axis, perms[h].to(out.device))
    return out.reshape(t.shape)


def _check_pair(sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor]) -> None:
    if set(sa) != set(sb):
        diff = sorted(set(sa) ^ set(sb))
        raise ValueError(f"model_a and model_b have different state-dict keys: {diff[:5]}")
    for k in sa:
        if sa[k].shape != sb[k].shape:
            raise ValueError(f"model_a and model_b differ at {k!r}: shapes {tuple(sa[k].shape)} and "
                             f"{tuple(sb[k].shape)}")


def match_permutations(model_a: nn.Module, model_b: nn.Module, *, max_iter: int = 100,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The weight-matching permutations, ``{hidden layer name: perm}``; unit ``i`` of model a
    is matched with unit ``perm[i]`` of model b (see the module docstring).

    Raises:
        ValueError: an unsupported architecture (see the module docstring), different
            state-dict keys or shapes, ``max_iter`` not a positive int.
        TypeError: a model that is not an ``nn.Module``.
    """
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
    max_iter = positive_int("max_iter", max_iter)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    _check_pair(sa, sb)
    spec = _spec(model_a)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    a64 = {k: sa[k].detach().to("cpu", torch.float64) for k in spec.axes}
    b64 = {k: sb[k].detach().to("cpu", torch.float64) for k in spec.axes}
    touching: list[list[tuple[str, int]]] = [[] for _ in spec.hidden]
    for k, (_, axes) in spec.axes.items():
        for axis, h in axes:
            touching[h].append((k, axis))
    perms = [torch.arange(n) for n in spec.sizes]
    for _ in range(max_iter):
        progress = False
        for h in torch.randperm(len(perms), generator=gen).tolist():
            n = spec.sizes[h]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for k, axis in touching[h]:
                view, axes = spec.axes[k]
                A = a64[k].reshape(view).movedim(axis, 0).reshape(n, -1)
                B = _permute(b64[k], view, axes, perms, skip=h).reshape(view).movedim(axis, 0).reshape(n, -1)
                cost += A @ B.T
            rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            old = float(cost[torch.arange(n), perms[h]].sum())
            new = float(cost.numpy()[rows, cols].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[h] = torch.as_tensor(np.asarray(cols), dtype=torch.long)
                progress = True
        if not progress:
            break
    return dict(zip(spec.hidden, perms))


def apply_permutations(model: nn.Module, perms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model``'s state dict with the hidden units permuted by ``perms`` (from
    :func:`match_permutations`); the returned tensors are new (the model is not changed)."""
    spec = _spec(model)
    if sorted(perms) != sorted(spec.hidden):
        raise ValueError(f"perms must have one permutation per hidden layer {spec.hidden}, got "
                         f"{sorted(perms)}")
    plist = []
    for name, n in zip(spec.hidden, spec.sizes):
        p = torch.as_tensor(perms[name], dtype=torch.long).cpu()
        if p.shape != (n,) or not torch.equal(p.sort().values, torch.arange(n)):
            raise ValueError(f"perms[{name!r}] must be a permutation of range({n}), got {p.tolist()[:8]}")
        plist.append(p)
    out = {}
    for k, v in model.state_dict().items():
        if k in spec.axes:
            view, axes = spec.axes[k]
            out[k] = _permute(v.detach(), view, axes, plist).clone()
        else:
            out[k] = v.detach().clone()
    return out


def weight_matching(model_a: nn.Module, model_b: nn.Module, *, max_iter: int = 100,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``model_b``'s state dict with its hidden units permuted to match ``model_a``.

    Args:
        model_a: the reference network.
        model_b: a network of the same architecture (same state-dict keys and shapes).
        max_iter: at most this many coordinate-descent sweeps (each visits every layer).
        generator: the order of the layers within a sweep (default: seed 0).

    Returns:
        A state dict for ``model_b``'s architecture: the same function as ``model_b``,
        aligned with ``model_a``; tensors on ``model_b``'s devices and dtypes.

    Raises:
        ValueError / TypeError: see :func:`match_permutations`.
    """
    return apply_permutations(model_b, match_permutations(model_a, model_b, max_iter=max_iter,
                                                          generator=generator))
