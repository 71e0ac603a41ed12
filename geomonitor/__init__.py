"""geomonitor: the geometry of a model while it trains.

The core (this package) is framework-agnostic: torch and numpy only (plus giotto-ph for
Vietoris–Rips H1). The Lightning layer lives in :mod:`geomonitor.callbacks`.

* intrinsic dimension — :func:`intrinsic_dimension`, :class:`IntrinsicDimension`
* sharpness — :func:`hessian_eigenvalues`, :func:`hessian_trace`, :class:`SharpnessEstimator`
* topology — :func:`persistence_diagrams`, :func:`summarize`, :func:`neural_persistence`,
  :func:`neural_persistence_network`
* distances — :func:`knn`, :func:`pairwise_distances`
* runs on disk — :func:`read_run` (the reader behind ``geomonitor report``), and the file sink
  :class:`geomonitor.sinks.JsonlSink`
"""
from geomonitor.distances import knn, pairwise_distances
from geomonitor.runs import read_run
from geomonitor.intrinsic import IntrinsicDimension, intrinsic_dimension
from geomonitor.sharpness import SharpnessEstimator, hessian_eigenvalues, hessian_trace
from geomonitor.topology import (
    neural_persistence,
    neural_persistence_network,
    persistence_diagrams,
    summarize,
)

__version__ = "0.1.0"

__all__ = [
    "IntrinsicDimension",
    "SharpnessEstimator",
    "__version__",
    "hessian_eigenvalues",
    "hessian_trace",
    "intrinsic_dimension",
    "knn",
    "neural_persistence",
    "neural_persistence_network",
    "pairwise_distances",
    "persistence_diagrams",
    "read_run",
    "summarize",
]
