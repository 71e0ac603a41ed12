"""``NeuralPersistenceFamily``: the neural persistence of the weights.

Rieck et al. 2019 ("Neural Persistence: A Complexity Measure for Deep Neural Networks Using
Algebraic Topology", ICLR): each Linear-like layer (``nn.Linear``, ``nn.ConvNd`` with
``groups == 1`` as the (out, in) matrix of its largest |w| over kernel positions, Hugging
Face ``Conv1D``) as a bipartite graph filtered from strong to weak edges, 0-dimensional
persistence, normalised. One definition: this family and
:class:`~geomonitor.callbacks.NeuralPersistenceEarlyStopping` both call
:func:`neural_persistence_metrics`. Keys: ``geometry/neural_persistence/mean`` and
``geometry/neural_persistence/<layer>``.

Cost: O(E log E) for E weights (a maximum spanning forest per layer), on the training
thread (Python-level work in a thread would hold the GIL against training anyway). Needs no
probe set.

Example:
    >>> fam = NeuralPersistenceFamily(Every(n_epochs=1))
"""
from __future__ import annotations

from torch import nn

from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import metric_key

__all__ = ["NeuralPersistenceFamily", "neural_persistence_metrics"]


def neural_persistence_metrics(model: nn.Module, *, per_layer: bool = True) -> dict[str, float]:
    """``{geometry/neural_persistence/mean: ..., geometry/neural_persistence/<layer>: ...}``.

    Raises:
        ValueError: the model has no layer neural persistence understands, or all-zero weights.
    """
    from geomonitor.topology import neural_persistence_network

    res = neural_persistence_network(model)
    metrics = {metric_key("neural_persistence", summary="mean"): float(res.mean)}
    if per_layer:
        metrics.update({metric_key("neural_persistence", layer): float(v)
                        for layer, v in res.per_layer.items()})
    return metrics


class NeuralPersistenceFamily(Family):
    """Mean and per-layer normalised neural persistence (see module doc)."""

    name = "neural_persistence"
    needs_probe = False

    def run(self, ctx: Context) -> Measurement:
        return Measurement(metrics=neural_persistence_metrics(ctx.model))
