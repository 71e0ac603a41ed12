"""Parameter symmetry, measured: rescaling balance, dead and duplicate units, low rank, and
neural collapse.

* :mod:`.balance` -- per-unit rescaling imbalance (Du, Hu & Lee 2018) and its layer forms;
* :mod:`.units` -- dead units and duplicate units (rescaling and permutation symmetry);
* :mod:`.rank` -- effective rank (Roy & Vetterli 2007), stable rank, RankMe (Garrido et al. 2023);
* :mod:`.collapse` -- neural collapse NC1-NC4 (Papyan, Han & Donoho 2020);
* :mod:`.pairs` -- which consecutive layers of a model share a rescaling symmetry.

Background: Ziyin, Xu, Poggio & Chuang, "Parameter Symmetry Potentially Unifies Deep Learning
Theory", arXiv 2502.05300 (2025); Zhao, Walters & Yu, "Symmetry in Neural Network Parameter
Spaces", arXiv 2506.13018 (2025).
"""
from geomonitor.symmetry.balance import layer_imbalance, relative_imbalance, rescaling_imbalance
from geomonitor.symmetry.collapse import NeuralCollapse, neural_collapse
from geomonitor.symmetry.pairs import (
    Pair, Structure, find_pairs, input_weight, is_linear_like, output_weight,
)
from geomonitor.symmetry.rank import (
    effective_rank, effective_rank_from_singular_values, rankme, stable_rank,
)
from geomonitor.symmetry.units import (
    dead_fraction, dead_unit_mask, duplicate_count, duplicate_unit_mask,
)

__all__ = ["rescaling_imbalance", "layer_imbalance", "relative_imbalance", "dead_unit_mask",
           "dead_fraction", "duplicate_unit_mask", "duplicate_count", "effective_rank",
           "effective_rank_from_singular_values", "stable_rank", "rankme", "neural_collapse",
           "NeuralCollapse", "find_pairs", "Pair", "Structure", "is_linear_like",
           "output_weight", "input_weight"]
