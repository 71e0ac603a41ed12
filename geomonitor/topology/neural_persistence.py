"""Neural persistence of a network's weights (Rieck et al., ICLR 2019).

Rieck, Togninalli, Bock, Moor, Horn, Gumbsch & Borgwardt, "Neural Persistence: A Complexity
Measure for Deep Neural Networks Using Algebraic Topology", ICLR 2019:

* A layer with weight matrix W (out x in) is the complete bipartite graph on
  |V| = in + out vertices with edge weights ``w' = |w| / w_max``.
* Filtration from strong to weak edges: every vertex is present at the top value 1 and edges
  enter in order of decreasing ``w'``. Its 0-dimensional persistence diagram has one point
  ``(1, w'_e)`` per edge e of a *maximum* spanning tree (Kruskal = union-find on edges
  sorted by decreasing weight), i.e. |V| - 1 points with persistence ``1 - w'_e``. The one
  component that never dies is not a point of the diagram (Theorem 1 counts |V| - 1 pairs).
* Neural persistence (Definition 2): ``NP = ||D||_p = (sum_e (1 - w'_e)^p)^(1/p)``.
* Normalised (Definition 3): NP divided by its upper bound from Theorem 1,
  ``(|V| - 1)^(1/p)`` for weights in [0, 1] — the normalisation of the authors' reference
  implementation — so the value lies in [0, 1]. Mean over layers (Definition 4) is the
  network's value used for early stopping (Algorithm 2).

``w_max`` (Algorithm 1): the paper and its reference implementation divide by the largest
absolute weight of the **whole network**; :func:`neural_persistence_network` does so by
default (``normalization="network"``). The single-layer :func:`neural_persistence` divides by
the layer's own largest weight unless ``w_max`` is given; ``normalization="layer"`` applies
that per layer. With network normalisation a layer whose weights are all zero is defined
(every persistence is 1, value 1); with layer normalisation it raises ``ValueError``, as does a
network whose weights are all zero.

Layers of a model (:func:`geomonitor._modules.weight_layers`): ``nn.Linear``, Hugging Face
``transformers.pytorch_utils.Conv1D`` (GPT-2; its weight, stored (in, out), is read as the
(out, in) matrix) and convolutions. Transposing a layer's matrix does not change its value (the
bipartite graph is the same), so the orientation only fixes the reported shapes.

Convolutions: a kernel of shape (out, in, k1, ..., kd) is treated as the (out, in) matrix of
its largest absolute weight over the spatial positions, i.e. channel i connects to channel o
as strongly as its strongest tap. This is a choice of this package (the paper's Algorithm 3
approximates the unrolled convolution instead and reports it unsuited to early stopping).
Grouped convolutions (groups > 1) are not complete bipartite graphs and are skipped.

Cost: Prim's algorithm on the dense bipartite graph, O((in + out)^2) time and O(in + out)
extra memory per layer, on CPU in float64.

Example:
    >>> neural_persistence(torch.randn(64, 32))          # per-layer normalisation
    >>> neural_persistence_network(model).mean            # Algorithm 1, whole-network w_max
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn

from geomonitor._modules import full_tensor, weight_layers

__all__ = ["NeuralPersistence", "layer_matrix", "neural_persistence", "neural_persistence_network"]


class NeuralPersistence(NamedTuple):
    """Normalised neural persistence of a network: ``mean`` over layers and ``per_layer``
    values (insertion order of the layers), plus names of ``skipped`` modules."""

    mean: float
    per_layer: dict[str, float]
    skipped: tuple[str, ...] = ()


def layer_matrix(weight: Any, *, name: str = "weight") -> np.ndarray:
    """|weights| of a layer as an (out, in) float64 matrix; conv kernels (out, in, *k) are
    reduced by the max over the spatial positions (see module)."""
    t = weight.detach() if isinstance(weight, torch.Tensor) else torch.as_tensor(np.asarray(weight))
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real floating tensor, got dtype={t.dtype}")
    if t.dim() < 2 or t.numel() == 0:
        raise ValueError(f"{name} must have shape (out, in) or (out, in, *kernel) with no zero "
                         f"sizes, got shape {tuple(t.shape)}")
    a = t.to("cpu", torch.float64).abs()
    if a.dim() > 2:
        a = a.flatten(2).amax(dim=2)
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} has NaN or Inf values; neural persistence is undefined")
    return a.numpy()


def _max_spanning_tree_weights(A: np.ndarray) -> np.ndarray:
    """Edge weights of a maximum spanning tree of the complete bipartite graph with weights
    ``A`` (a x b, rows = one side, columns = the other): Prim, O((a + b)^2)."""
    a, b = A.shape
    n = a + b
    key = np.full(n, -np.inf)
    key[a:] = A[0]
    free = np.ones(n, dtype=bool)
    free[0] = False
    out = np.empty(n - 1)
    upd = np.empty(max(a, b), dtype=bool)
    for t in range(n - 1):
        j = int(np.argmax(np.where(free, key, -np.inf)))
        out[t] = key[j]
        free[j] = False
        if j < a:  # a row vertex reaches every column vertex
            side, row, f = key[a:], A[j], free[a:]
        else:
            side, row, f = key[:a], A[:, j - a], free[:a]
        u = upd[: row.shape[0]]
        np.greater(row, side, out=u)
        u &= f
        np.copyto(side, row, where=u)
    return out


def _check_p(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
        raise ValueError(f"p must be a number >= 1 (or inf), got {p!r}")
    return float(p)


def neural_persistence(
    weight: Any, *, p: float = 2.0, w_max: float | None = None, normalized: bool = True
) -> float:
    """(Normalised) neural persistence of one layer (Rieck et al. 2019, Definitions 2-3).

    Args:
        weight: (out, in) weight matrix, or a conv kernel (out, in, *k) (see module).
        p: order of the norm of the persistence diagram, >= 1 (``math.inf``: the largest
            persistence). The paper uses p = 2.
        w_max: normalising weight (Algorithm 1 uses the largest |w| of the whole network);
            None: the layer's own largest |w|. Must be >= the layer's largest |w|.
        normalized: divide by the upper bound ``(in + out - 1)^(1/p)``, giving [0, 1].

    Returns:
        The value as a float.

    Raises:
        ValueError: bad shape or dtype, NaN/Inf weights, ``p < 1``, a ``w_max`` that is not
            finite, not > 0 or smaller than a weight, and a layer whose weights are all zero
            when ``w_max`` is None (the normalisation |w| / max|w| is undefined).
    """
    pv = _check_p(p)
    A = layer_matrix(weight)
    top = float(A.max())
    if w_max is None:
        if top == 0.0:
            raise ValueError("neural persistence is undefined for a layer whose weights are all "
                             "zero (|w| / max|w| divides by 0); pass w_max to normalise otherwise")
        w_max = top
    elif isinstance(w_max, bool) or not isinstance(w_max, (int, float)) \
            or not math.isfinite(w_max) or w_max <= 0 or w_max < top:
        raise ValueError(f"w_max must be a finite number > 0 and >= the layer's largest |w| "
                         f"({top:g}), got {w_max!r}")
    pers = 1.0 - _max_spanning_tree_weights(A / float(w_max))
    np.clip(pers, 0.0, 1.0, out=pers)
    n_vertices = A.shape[0] + A.shape[1]
    if math.isinf(pv):
        norm, bound = float(pers.max()), 1.0
    else:
        norm, bound = float((pers ** pv).sum() ** (1.0 / pv)), (n_vertices - 1) ** (1.0 / pv)
    return norm / bound if normalized else norm


def _named_weights(obj: Any) -> tuple[dict[str, Any], list[str]]:
    if isinstance(obj, nn.Module):
        return weight_layers(obj)
    if isinstance(obj, Mapping):
        return dict(obj), []
    raise ValueError(f"model_or_named_weights must be an nn.Module or a mapping name -> weight, "
                     f"got {type(obj).__name__}")


def neural_persistence_network(
    model_or_named_weights: Any, *, p: float = 2.0, normalization: str = "network"
) -> NeuralPersistence:
    """Mean normalised neural persistence over a network's layers (Definition 4, Algorithm 1).

    Args:
        model_or_named_weights: an ``nn.Module`` or a mapping ``name -> weight`` ((out, in)
            matrices or conv kernels (out, in, *k)). A module is measured on its weight
            layers (:func:`geomonitor._modules.weight_layers`, registration order, each
            module once): ``nn.Linear``, Hugging Face ``Conv1D`` (weight stored (in, out),
            read transposed), convolutions and transposed convolutions with groups == 1;
            grouped convolutions are listed in ``skipped``. Parameters used outside such a
            module (``nn.MultiheadAttention.in_proj_weight``, embeddings) are not layers here.
        p: order of the diagram norm (paper: 2).
        normalization: ``"network"`` (divide by the largest |w| over all layers, as the paper)
            or ``"layer"`` (each layer by its own largest |w|).

    Returns:
        :class:`NeuralPersistence` with ``mean``, ``per_layer`` and ``skipped``.

    Raises:
        ValueError: no layer to measure, an unknown ``normalization``, all weights zero
            (network normalisation) or a zero layer (layer normalisation), bad weights.

    Cost: sum over layers of O((in + out)^2).
    """
    if normalization not in ("network", "layer"):
        raise ValueError(f"normalization must be 'network' or 'layer', got {normalization!r}")
    _check_p(p)
    weights, skipped = _named_weights(model_or_named_weights)
    if not weights:
        raise ValueError("model_or_named_weights has no Linear or Conv layer (groups=1) to measure")
    if any(_is_dtensor(w) for w in weights.values()):
        return _sharded_network(weights, skipped, p, normalization)
    mats = {k: layer_matrix(w, name=f"weight of {k!r}") for k, w in weights.items()}
    w_max = None
    if normalization == "network":
        w_max = max(float(a.max()) for a in mats.values())
        if w_max == 0.0:
            raise ValueError("neural persistence is undefined when every weight of the network "
                             "is zero (|w| / max|w| divides by 0)")
    per_layer = {k: neural_persistence(a, p=p, w_max=w_max) for k, a in mats.items()}
    return NeuralPersistence(float(np.mean(list(per_layer.values()))), per_layer, tuple(skipped))


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def _sharded_network(weights: dict[str, Any], skipped: list[str], p: float,
                     normalization: str) -> NeuralPersistence:
    """The same definition on FSDP2 (DTensor) weights, one layer whole at a time: the
    network's largest |w| from the local shards (one all-reduce of one number per layer),
    then each layer gathered, measured and dropped, so the extra memory per rank is the
    largest layer (as (out, in) float64), not the model. Every rank must call it."""
    dist = torch.distributed
    w_max = None
    if normalization == "network":
        local = []
        for w in weights.values():
            shard = w.to_local() if _is_dtensor(w) else w
            local.append(float(shard.detach().abs().max()) if shard.numel() else 0.0)
        peak = torch.tensor(local, dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        if not bool(torch.isfinite(peak).all()):
            raise ValueError("the weights hold NaN or Inf; neural persistence is undefined")
        w_max = float(peak.max())
        if w_max == 0.0:
            raise ValueError("neural persistence is undefined when every weight of the network "
                             "is zero (|w| / max|w| divides by 0)")
    per_layer = {k: neural_persistence(layer_matrix(full_tensor(w), name=f"weight of {k!r}"),
                                       p=p, w_max=w_max) for k, w in weights.items()}
    return NeuralPersistence(float(np.mean(list(per_layer.values()))), per_layer, tuple(skipped))
