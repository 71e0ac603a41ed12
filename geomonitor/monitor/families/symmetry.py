"""``SymmetryFamily``: parameter-symmetry signatures of the model, live.

Ziyin, Xu, Poggio & Chuang ("Parameter Symmetry Potentially Unifies Deep Learning Theory",
arXiv 2502.05300, 2025) and Zhao, Walters & Yu ("Symmetry in Neural Network Parameter
Spaces", arXiv 2506.13018, 2025): symmetry breaking and restoration drive the transitions of
training. At each measurement this family logs (functions in :mod:`geomonitor.symmetry`):

==========================================  ===============================================
key                                         what
==========================================  ===============================================
``geometry/symmetry/<a>/imbalance``         ``||D||_2`` of the per-unit rescaling imbalance
                                            of the hidden units between layer ``a`` and the
                                            next layer ``b`` (Du, Hu & Lee 2018)
``geometry/symmetry/<a>/imbalance_rel``     ``||D||_2 / (||W_a||^2 + ||b_a||^2 + ||W_b||^2)``
                                            in [0, 1]
``geometry/symmetry/<a>/dead_fraction``     fraction of those units <= 0 (0 after a ReLU) on
                                            every probe sample, measured at ``b``'s input
``geometry/symmetry/<a>/duplicates``        number of those units with a near-copy (incoming
                                            and outgoing cosine > ``duplicate_threshold``)
``geometry/symmetry/<l>/effective_rank``    Roy-Vetterli effective rank of ``l``'s weight
``geometry/symmetry/<l>/stable_rank``       ``||W||_F^2 / ||W||_2^2`` of ``l``'s weight
``geometry/symmetry/<l>/weight_norm``       ``||W||_F`` of ``l``'s weight (the matrix the
                                            ranks are computed on, bias excluded)
``geometry/symmetry/<l>/collapsed``         1.0 when ``l``'s weight has collapsed (the rule
                                            below), else 0.0
``geometry/symmetry/<s>/rankme``            RankMe (uncentred, eps 1e-7) of the activations
                                            of each layer ``s`` the engine selected
``geometry/neural_collapse/<c>/nc1``        NC1 of the classifier ``c``'s input features
``.../<c>/nc2_equinorm``, ``nc2_equiangular``  NC2 deviations; ``nc3``, ``nc4`` (Papyan et al.
                                            2020), when the probe set has class labels
==========================================  ===============================================

Ranks are scale-blind: ``W`` and ``c W`` have the same effective and stable rank for every
``c > 0``, so a weight decayed to almost nothing (a total collapse, chance accuracy) can still
read a high rank. ``weight_norm`` is logged beside them so that such a collapse shows (it is
logged whenever ``weight_ranks`` is on, also for weights too large for an SVD).

The collapse flag ``collapsed`` reads the norm: with ``W`` of ``n`` entries and ``W_0`` the weight
at the first measurement of this family (kept in its state, so a resumed run compares with the
run's first value),

    collapsed = 1  iff  ||W||_F < weight_collapse_fraction * ||W_0||_F     (default 0.05)
                    or  ||W||_F / sqrt(n) < weight_collapse_rms            (default 1e-4)

i.e. the weight has lost 95% of its first norm, or its root-mean-square entry is below 1e-4.
The floor is for a collapse that happened before the monitor's first measurement: PyTorch's
default initialisation has RMS 1/sqrt(3 fan_in), above 1e-4 for any fan-in below 3e7, and
the same weights scaled by 1e-3 fall below it from a fan-in of about 33 (a smaller layer needs
a tighter ``weight_collapse_rms``). Either test is off with ``None``. Healthy weight decay
shrinks norms by far less than 20-fold; a total collapse (the weights decayed to ~0 and chance
accuracy) passes the first test.

``a`` runs over the pairs (a, b) found by :func:`geomonitor.symmetry.find_pairs` (computed
at the first measurement and kept: it depends on the architecture only); ``l`` over every
linear-like layer called in the forward (``nn.Linear``, ``nn.ConvNd``, HF ``Conv1D``); the
classifier ``c`` is the last linear-like layer called, when it is a Linear/``Conv1D``, is
called once, and its input is (N, D) with one row per labelled probe sample (so a language
model's head on (N, T, D) token features gets no neural collapse). The skipped pairs and their
reasons are in :attr:`SymmetryFamily.structure`.

Effective rank needs a full SVD: a weight whose smaller side exceeds ``max_svd_size`` (default
1024) gets its stable rank from ``sigma_max`` by Lanczos on ``W^T W``
(:func:`geomonitor.symmetry._linalg.top_singular_value`, relative tolerance 1e-10, start
vector from a seeded generator owned by the family) and no effective rank. Measured on one
CPU thread (``benchmarks/bench_symmetry.py``): ``svdvals`` of an n x n matrix 0.45 s at
n = 1024 and 4.2 s at n = 2048; Lanczos on a Gaussian n x n matrix (the hard case, sigma_1
close to sigma_2) 0.12 s at n = 1024, 0.6 s at n = 2048, 2.9 s at n = 4096 (137 steps).

Cost per measurement: the engine's shared activation forward on the probe batch, during which
pre-hooks read the inputs of the ``b`` layers and of the classifier (reduced in the hooks to
one value per unit) -- a forward of its own only when another family already ran the shared
one at this step -- one SVD per weight and per selected layer's (N, D) activations, and two
hidden x hidden Gram matrices per pair; the first measurement adds the forwards of
:func:`find_pairs` (two, one more per candidate pair that fails the joint check) on the first
``discovery_size`` (32) probe samples only: whether rescaling a pair's units leaves the output
unchanged shows on any sample, so structure discovery need not pay for the whole probe set. On the training thread (weights change while training
continues); the model, its modes and every RNG stream are left as they were.

Example:
    >>> fam = SymmetryFamily(Every(n_steps=100))
    >>> ctx = Context(model, step, probe_batch, capture, forward=lambda m, b: m(b[0]))
    >>> fam.run(ctx).metrics["geometry/symmetry/fc1/imbalance"]
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.families.sharpness import head
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every
from geomonitor.symmetry._linalg import as_real, singular_values, top_singular_value
from geomonitor.symmetry.balance import relative_imbalance, rescaling_imbalance
from geomonitor.symmetry.collapse import neural_collapse
from geomonitor.symmetry.pairs import (
    Structure, find_pairs, inference, input_weight, is_linear_like, output_weight,
)
from geomonitor.symmetry.rank import effective_rank_from_singular_values, rankme
from geomonitor.symmetry.units import dead_unit_mask, duplicate_count

__all__ = ["SymmetryFamily"]


class SymmetryFamily(Family):
    """Rescaling balance, dead/duplicate units, ranks and neural collapse (see module doc).

    Args:
        schedule: when to measure.
        duplicate_threshold: cosine above which two units count as copies, in (0, 1).
        max_svd_size: largest smaller side of a weight matrix that gets a full SVD
            (effective rank); larger ones get a Lanczos stable rank only. ``None``:
            always a full SVD.
        rankme_eps: RankMe's epsilon (Garrido et al. 2023 use 1e-7).
        weight_ranks, activation_ranks, collapse: switch the ranks and norm of the weights,
            RankMe of the selected layers and neural collapse on or off.
        weight_collapse_fraction: ``collapsed`` when the norm is below this fraction of its
            first measured value, in (0, 1), or ``None`` (default 0.05).
        weight_collapse_rms: ``collapsed`` when ``||W||_F / sqrt(n)`` is below this, > 0, or
            ``None`` (default 1e-4).
        seed: seed of the generator drawing Lanczos' start vectors.

    Raises:
        ValueError: a bad argument (named, with its value).
    """

    name = "symmetry"
    needs_probe = True
    needs_activations = True
    hooks_shared_forward = True
    #: probe samples the structure discovery (:func:`find_pairs`) runs on
    discovery_size = 32

    def __init__(self, schedule: Every, *, duplicate_threshold: float = 0.99,
                 max_svd_size: int | None = 1024, rankme_eps: float = 1e-7,
                 weight_ranks: bool = True, activation_ranks: bool = True,
                 collapse: bool = True, seed: int = 0,
                 weight_collapse_fraction: float | None = 0.05,
                 weight_collapse_rms: float | None = 1e-4) -> None:
        super().__init__(schedule)
        if (isinstance(duplicate_threshold, bool) or not isinstance(duplicate_threshold, (int, float))
                or not 0 < duplicate_threshold < 1):
            raise ValueError(f"duplicate_threshold must be a cosine in (0, 1), got "
                             f"{duplicate_threshold!r}")
        if max_svd_size is not None and (isinstance(max_svd_size, bool)
                                         or not isinstance(max_svd_size, int) or max_svd_size < 1):
            raise ValueError(f"max_svd_size must be a positive int or None, got {max_svd_size!r}")
        if (isinstance(rankme_eps, bool) or not isinstance(rankme_eps, (int, float))
                or not 0 <= rankme_eps < math.inf):
            raise ValueError(f"rankme_eps must be a finite number >= 0, got {rankme_eps!r}")
        for flag, value in (("weight_ranks", weight_ranks), ("activation_ranks", activation_ranks),
                            ("collapse", collapse)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be a bool, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        for flag, value, high in (("weight_collapse_fraction", weight_collapse_fraction, 1.0),
                                  ("weight_collapse_rms", weight_collapse_rms, math.inf)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < high):
                span = "in (0, 1)" if high == 1.0 else "> 0 and finite"
                raise ValueError(f"{flag} must be a number {span} or None, got {value!r}")
        self.weight_collapse_fraction = weight_collapse_fraction
        self.weight_collapse_rms = weight_collapse_rms
        self.first_norm: dict[str, float] = {}  # ||W||_F at the first measurement, per layer
        self.duplicate_threshold = float(duplicate_threshold)
        self.max_svd_size = max_svd_size
        self.rankme_eps = float(rankme_eps)
        self.weight_ranks, self.activation_ranks, self.collapse = weight_ranks, activation_ranks, collapse
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.structure: Structure | None = None
        self._model_id: int | None = None

    def setup(self, model: nn.Module) -> str | None:
        if not any(is_linear_like(m) for m in model.modules()):
            return "the model has no Linear, Conv or Conv1D layer"
        return None

    # -- measurement ---------------------------------------------------------------------------
    def run(self, ctx: Context) -> Measurement:
        if ctx.forward is None:
            raise ValueError("the symmetry family needs ctx.forward to run the probe batch")
        model = ctx.model
        forward: Callable[[], Any] = lambda: ctx.forward(model, ctx.probe_batch)  # noqa: E731
        if self.structure is None or self._model_id != id(model):
            few = head(ctx.probe_batch, self.discovery_size)
            self.structure = find_pairs(model, lambda: ctx.forward(model, few))
            self._model_id = id(model)
        st = self.structure
        modules = dict(model.named_modules())
        out = Measurement()
        dead, features = self._capture(model, modules, st, forward, ctx.labels() is not None,
                                       ctx.activations)
        for p in st.pairs:
            self._item(out, p.a, lambda p=p: self._pair(out, modules, p, dead.get(p.b)))
        if self.weight_ranks:
            for name in st.layers:
                self._item(out, name, lambda name=name: self._ranks(out, name, modules[name]))
        if self.activation_ranks:
            for name, Z in ctx.activations().items():
                self._item(out, name, lambda name=name, Z=Z: out.metrics.__setitem__(
                    metric_key("symmetry", name, "rankme"), rankme(Z, self.rankme_eps)))
        labels = ctx.labels()
        if self.collapse and labels is not None and features is not None:
            self._item(out, st.last, lambda: self._collapse(out, st.last, modules[st.last], features,
                                                            labels))
        return out

    @staticmethod
    def _item(out: Measurement, layer: str | None, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as err:  # one layer's failure; the others are still reported
            out.errors.append(ValueError(f"symmetry, layer {layer!r}: {err}"))

    def _capture(self, model: nn.Module, modules: Mapping[str, nn.Module], st: Structure,
                 forward: Callable[[], Any], want_features: bool,
                 shared: Callable[[], Any] | None = None,
                 ) -> tuple[dict[str, torch.Tensor | Exception], torch.Tensor | None]:
        """The dead-unit mask at each pair's ``b`` input and the classifier input, read by
        pre-hooks during the engine's shared activation forward (``shared()``, i.e.
        ``ctx.activations()``: eval mode, no grad, RNG forked, as :func:`inference`). When that
        forward already ran at this step (another family asked first) or no ``shared`` is
        given, the hooks get a forward of their own under :func:`inference`."""
        dead: dict[str, torch.Tensor | Exception] = {}
        feats: dict[str, torch.Tensor] = {}
        handles = []
        fired: list[bool] = []

        def at_input(p: Any) -> Callable[..., None]:
            b = modules[p.b]

            def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
                fired.append(True)
                x = args[0]
                try:
                    if isinstance(b, nn.modules.conv._ConvNd):
                        dead[p.b] = dead_unit_mask(x, unit_dim=1)
                    elif p.spread > 1:
                        dead[p.b] = dead_unit_mask(x.reshape(x.shape[0], -1, p.spread), unit_dim=1)
                    else:
                        dead[p.b] = dead_unit_mask(x.reshape(-1, x.shape[-1]), unit_dim=1)
                except ValueError as err:  # reported with the pair, not raised in the forward
                    dead[p.b] = err
            return hook

        def at_classifier(_m: nn.Module, args: tuple[Any, ...]) -> None:
            fired.append(True)
            x = args[0]
            if isinstance(x, torch.Tensor) and x.dim() == 2:
                feats["x"] = x.detach()

        clf = modules.get(st.last) if st.last is not None else None
        use_clf = (self.collapse and want_features and clf is not None
                   and not isinstance(clf, nn.modules.conv._ConvNd))
        try:
            for p in st.pairs:
                handles.append(modules[p.b].register_forward_pre_hook(at_input(p)))
            if use_clf:
                handles.append(clf.register_forward_pre_hook(at_classifier))
            if handles and shared is not None:
                try:
                    shared()  # runs the shared forward with the hooks on, unless it already ran
                except Exception:  # noqa: BLE001 - the own forward below; RankMe reports it
                    fired.clear()
            if handles and not fired:
                with inference(model):
                    forward()
        finally:
            for h in handles:
                h.remove()
        return dead, feats.get("x")

    def _pair(self, out: Measurement, modules: Mapping[str, nn.Module], p: Any,
              dead: torch.Tensor | Exception | None) -> None:
        a, b = modules[p.a], modules[p.b]
        w_in, b_in = output_weight(a)
        w_out = input_weight(b, w_in.shape[0])
        d = rescaling_imbalance(w_in, w_out, b_in)
        out.metrics[metric_key("symmetry", p.a, "imbalance")] = float(d.to(torch.float64).norm())
        out.metrics[metric_key("symmetry", p.a, "imbalance_rel")] = relative_imbalance(w_in, w_out, b_in)
        out.metrics[metric_key("symmetry", p.a, "duplicates")] = float(duplicate_count(
            w_in, w_out, b_in, threshold=self.duplicate_threshold))
        if isinstance(dead, Exception):
            raise ValueError(f"dead units at the input of {p.b!r}: {dead}")
        if dead is not None:
            out.metrics[metric_key("symmetry", p.a, "dead_fraction")] = float(dead.float().mean())

    def _ranks(self, out: Measurement, name: str, module: nn.Module) -> None:
        w, _ = output_weight(module)
        M = as_real(w, f"{name}.weight", min_dim=2)
        M = M.reshape(M.shape[0], -1)
        fro2 = float(M.to(torch.float64).pow(2).sum())
        norm = math.sqrt(fro2)
        out.metrics[metric_key("symmetry", name, "weight_norm")] = norm
        first = self.first_norm.setdefault(name, norm)
        collapsed = ((self.weight_collapse_fraction is not None
                      and norm < self.weight_collapse_fraction * first)
                     or (self.weight_collapse_rms is not None
                         and norm < self.weight_collapse_rms * math.sqrt(M.numel())))
        out.metrics[metric_key("symmetry", name, "collapsed")] = float(collapsed)
        if self.max_svd_size is None or min(M.shape) <= self.max_svd_size:
            s = singular_values(M, f"{name}.weight").to(torch.float64)  # one SVD for both ranks
            top = float(s[0])
            out.metrics[metric_key("symmetry", name, "effective_rank")] = \
                effective_rank_from_singular_values(s)
            out.metrics[metric_key("symmetry", name, "stable_rank")] = \
                0.0 if top == 0.0 else float((s * s).sum()) / top ** 2
            return
        top = top_singular_value(M, self.generator)
        out.metrics[metric_key("symmetry", name, "stable_rank")] = 0.0 if top == 0 else fro2 / top ** 2

    @staticmethod
    def _collapse(out: Measurement, layer: str, clf: nn.Module, features: torch.Tensor,
                  labels: torch.Tensor) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"classifier input has {features.shape[0]} rows for {labels.shape[0]} "
                             "labels")
        w, b = output_weight(clf)
        nc = neural_collapse(features, labels.to(features.device), w, b)
        for summary in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4"):
            out.metrics[metric_key("neural_collapse", layer, summary)] = float(getattr(nc, summary))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The Lanczos generator's state and the first weight norms (the pairs are recomputed
        from the model)."""
        return {"generator": self.generator.get_state(), "first_norm": dict(self.first_norm)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" not in state:
            raise ValueError(f"state for family 'symmetry' lacks key 'generator', got {sorted(state)}")
        self.generator.set_state(state["generator"])
        self.first_norm = {str(k): float(v) for k, v in state.get("first_norm", {}).items()}
