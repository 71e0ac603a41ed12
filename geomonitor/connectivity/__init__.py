"""Linear mode connectivity: loss barriers between parameter sets and permutation alignment
by weight matching (:mod:`.interpolate`, :mod:`.matching`)."""
from geomonitor.connectivity.interpolate import Barrier, interpolate_state, loss_barrier
from geomonitor.connectivity.matching import apply_permutations, match_permutations, weight_matching

__all__ = ["Barrier", "apply_permutations", "interpolate_state", "loss_barrier",
           "match_permutations", "weight_matching"]
