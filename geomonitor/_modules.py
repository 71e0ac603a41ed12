"""Which modules are weight layers, and their weights as (out, in) matrices.

One definition shared by layer selection (``layers="auto"``), neural persistence and any
measurement that walks a model's linear maps:

* **linear-like**: ``nn.Linear`` (and subclasses, e.g. ``nn.MultiheadAttention.out_proj``)
  and Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2 and relatives), a linear
  layer whose weight is stored transposed, shape (in, out). ``Conv1D`` is recognised only when
  ``transformers.pytorch_utils`` is already imported (it is whenever a model using it exists),
  so nothing here imports ``transformers``.
* **convolution**: ``nn.Conv{1,2,3}d`` and the transposed convolutions (``_ConvNd``).
* **weight layer**: either of the two.

:func:`weight_matrix` returns a layer's weight oriented (out, in) — a view, no copy: ``W`` for
``nn.Linear`` (y = x W^T + b), ``W^T`` for ``Conv1D`` (y = x W + b), the kernel
(out, in / groups, *k) for a convolution, and for a transposed convolution, whose kernel is
stored (in, out / groups, *k), the kernel with its first two dims swapped.

:func:`weight_layers` lists a model's weight layers (registration order, each module once) as
name -> (out, in[, *k]) weight; grouped convolutions (groups > 1) are returned separately,
since their channel graph is not complete bipartite.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    >>> weights, grouped = weight_layers(net)
    >>> {k: tuple(v.shape) for k, v in weights.items()}
    {'0': (8, 3, 3, 3), '2': (2, 8)}
"""
from __future__ import annotations

import sys

import torch
from torch import nn

__all__ = ["full_tensor", "hf_conv1d_type", "is_linear_like", "is_conv", "is_weight_layer", "weight_matrix",
           "weight_layers", "feature_layout"]

_CONV = nn.modules.conv._ConvNd


def hf_conv1d_type() -> type | None:
    """``transformers.pytorch_utils.Conv1D`` if that module is already imported, else None."""
    mod = sys.modules.get("transformers.pytorch_utils")
    t = getattr(mod, "Conv1D", None) if mod is not None else None
    return t if isinstance(t, type) else None


def is_linear_like(module: nn.Module) -> bool:
    """``nn.Linear`` (or a subclass) or Hugging Face ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return True
    conv1d = hf_conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def is_conv(module: nn.Module) -> bool:
    """A (possibly transposed) 1-, 2- or 3-d convolution."""
    return isinstance(module, _CONV)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` whole: a ``DTensor`` (an FSDP2 shard) is all-gathered (``t.full_tensor()``, a
    collective: every rank must call it, in the same order), a plain tensor returned as is.
    Gathering one layer at a time bounds the extra memory by the largest layer."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return t
    return t.full_tensor() if isinstance(t, DTensor) else t


def is_weight_layer(module: nn.Module) -> bool:
    """Linear-like or convolution."""
    return is_conv(module) or is_linear_like(module)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight of a weight layer oriented (out, in) (convolutions: (out, in, *k)); a view.

    Raises:
        TypeError: ``module`` is not a weight layer (see :func:`is_weight_layer`).
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv(module):
        w = module.weight
        return w.transpose(0, 1) if module.transposed else w
    if is_linear_like(module):  # HF Conv1D: weight (in, out)
        return module.weight.t()
    raise TypeError(f"module must be a Linear, Hugging Face Conv1D or Conv layer, got "
                    f"{type(module).__name__}")


def weight_layers(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(name -> (out, in[, *k]) weight, names of grouped convolutions)`` over
    ``model.named_modules()`` (the root included, named ``""``), in registration order."""
    weights: dict[str, torch.Tensor] = {}
    grouped: list[str] = []
    for name, m in model.named_modules():
        if not is_weight_layer(m):
            continue
        if getattr(m, "groups", 1) != 1:
            grouped.append(name)
        else:
            weights[name] = weight_matrix(m)
    return weights, grouped


def feature_layout(module: nn.Module) -> bool | None:
    """Where the features of ``module``'s output sit: True = dim 1 (channels first, [B, C, ...]),
    False = the last dim ([B, T, D], [B, H, W, C]), None = unknown.

    A convolution is channels first, a linear-like layer channels last (it maps the last dim).
    A composite module (a block) is channels first if it contains a convolution and no
    linear-like layer, channels last if it contains a linear-like layer and no convolution,
    and unknown otherwise (e.g. a ConvNeXt block: depthwise conv plus Linear layers).
    """
    if is_conv(module):
        return True
    if is_linear_like(module):
        return False
    conv = lin = False
    for m in module.modules():
        conv = conv or is_conv(m)
        lin = lin or is_linear_like(m)
    if conv != lin:
        return conv
    return None
