"""Linear mode connectivity: loss barriers between parameter sets and permutation alignment
by weight matching, and Frankle et al.'s instability analysis (:mod:`.interpolate`,
:mod:`.matching`, :mod:`.instability`)."""
from geomonitor.connectivity.instability import InstabilityPoint, instability, stream_seed
from geomonitor.connectivity.interpolate import Barrier, interpolate_state, loss_barrier
from geomonitor.connectivity.matching import apply_permutations, match_permutations, weight_matching

__all__ = ["Barrier", "InstabilityPoint", "apply_permutations", "instability", "interpolate_state",
           "loss_barrier", "match_permutations", "stream_seed", "weight_matching"]
