"""geomonitor: the geometry of a model while it trains.

The core (this package) is framework-agnostic: torch and numpy only. The Lightning layer
lives in :mod:`geomonitor.callbacks`.
"""
from geomonitor.distances import knn, pairwise_distances

__version__ = "0.1.0"

__all__ = ["knn", "pairwise_distances", "__version__"]
