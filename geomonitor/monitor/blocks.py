"""The repeated blocks and the head of a model: what ``layers="auto"`` measures.

Rule (Ansuini et al., "Intrinsic dimension of data representations in deep neural networks",
NeurIPS 2019, and Valeriani et al., "The geometry of hidden representations of large
transformer models", NeurIPS 2023, measure representations block by block):

1. *Repeated blocks*: walking the module tree from the root, an ``nn.ModuleList`` or
   ``nn.Sequential`` with at least two children of one class, those children being blocks
   (modules with submodules, or custom modules that are not ``torch.nn`` layers), contributes
   every child of a repeated class: ``encoder.layers.N`` (``nn.TransformerEncoder``),
   ``transformer.h.N`` (GPT-2), ``layerK.N`` (torchvision ResNet). The outermost such level
   wins: a selected block is not searched further (a ``Sequential`` of stages, each a
   ``Sequential`` of blocks, gives the stages); its other children are. A ``Sequential``
   whose repeated children are plain layers (``Linear``, ``ReLU``) does not count.
2. *Head*: the last weight layer in registration order (leaf ``nn.Linear``, Hugging Face
   ``Conv1D`` or convolution, see :mod:`geomonitor._modules`: ``lm_head``, ``fc``, ``head``)
   unless it lies inside a selected block.
3. *No repeated block*: every leaf weight layer instead (an MLP: ``fc1``, ``fc2``, ``fc3``).

At most ``max_auto`` names are kept, evenly spaced in registration order, always including
the first and the last.

Cost: one walk over ``named_modules()``. Example:

    >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, batch_first=True), 2)
    >>> repeated_blocks(enc)
    ['layers.0', 'layers.1']
"""
from __future__ import annotations

from collections import Counter

from torch import nn

from geomonitor._modules import is_weight_layer

__all__ = ["repeated_blocks", "auto_selection"]


def _is_leaf(m: nn.Module) -> bool:
    return next(m.children(), None) is None


def _is_block(m: nn.Module) -> bool:
    """A module with submodules, or a custom module that is not a ``torch.nn`` layer."""
    if not _is_leaf(m):
        return True
    return not is_weight_layer(m) and not type(m).__module__.startswith("torch.nn")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def repeated_blocks(model: nn.Module) -> list[str]:
    """Names of the repeated blocks of ``model`` (rule 1 of the module docstring)."""
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        kids = list(module.named_children())
        rep: set[type] = set()
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            counts = Counter(type(c) for _, c in kids if _is_block(c))
            rep = {t for t, k in counts.items() if k >= 2}
        for name, child in kids:
            if type(child) in rep and _is_block(child):
                out.append(_join(prefix, name))
            else:
                visit(_join(prefix, name), child)

    visit("", model)
    return out


def _evenly(names: list[str], k: int | None) -> list[str]:
    if k is None or len(names) <= k:
        return names
    if k == 1:
        return [names[-1]]
    step = (len(names) - 1) / (k - 1)
    return [names[round(i * step)] for i in range(k)]


def auto_selection(model: nn.Module, max_auto: int | None) -> tuple[list[str], str, str | None]:
    """``(names, rule, head)``: the ``"auto"`` selection in ``named_modules()`` order, the
    rule used (``"blocks"`` or ``"leaves"``) and the head's name (None if none was added).
    ``names`` is empty when the model has neither repeated blocks nor weight layers."""
    named = [(n, m) for n, m in model.named_modules() if n]
    weights = [n for n, m in named if is_weight_layer(m) and _is_leaf(m)]
    blocks = repeated_blocks(model)
    if not blocks:
        return _evenly(weights, max_auto), "leaves", None
    inside = tuple(b + "." for b in blocks)
    head = weights[-1] if weights and not weights[-1].startswith(inside) else None
    order = {n: i for i, (n, _) in enumerate(named)}
    names = sorted(blocks + ([head] if head else []), key=order.__getitem__)
    return _evenly(names, max_auto), "blocks", head
