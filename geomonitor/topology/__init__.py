"""Topology of activations and weights.

* :func:`persistence_diagrams` — Vietoris–Rips diagrams of a point cloud: H0 exact (minimum
  spanning tree, torch), H1/H2 by giotto-ph on farthest-point landmarks with the 2·eps
  bottleneck bound; :class:`RipserProcess` runs giotto-ph in a child process.
* :func:`summarize` — diagrams as plain numbers with stable keys ``h{d}_{name}``.
* :func:`neural_persistence`, :func:`neural_persistence_network` — normalised neural
  persistence of weights (Rieck et al., ICLR 2019).
"""
from geomonitor.topology.diagrams import Diagrams, PreparedDiagrams, persistence_diagrams, prepare_diagrams
from geomonitor.topology.landmarks import farthest_point_sampling
from geomonitor.topology.mst import mst_edge_lengths, mst_edges
from geomonitor.topology.neural_persistence import (
    NeuralPersistence,
    layer_matrix,
    neural_persistence,
    neural_persistence_network,
)
from geomonitor.topology.ripser_process import RipserProcess
from geomonitor.topology.summaries import SUMMARY_NAMES, summarize

__all__ = [
    "Diagrams",
    "NeuralPersistence",
    "PreparedDiagrams",
    "RipserProcess",
    "SUMMARY_NAMES",
    "farthest_point_sampling",
    "layer_matrix",
    "mst_edge_lengths",
    "mst_edges",
    "neural_persistence",
    "neural_persistence_network",
    "persistence_diagrams",
    "prepare_diagrams",
    "summarize",
]
