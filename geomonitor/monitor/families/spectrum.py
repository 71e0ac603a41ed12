"""``SpectrumFamily``: the Hessian eigenvalue density, its trace and its outliers (opt-in).

By stochastic Lanczos quadrature (:func:`geomonitor.sharpness.density.spectral_density`;
Ghorbani, Krishnan & Xiao 2019, "An investigation into neural net optimization via Hessian
eigenvalue density", ICML) on the training loss of the first ``probe_size`` probe samples.
Keys:

* ``geometry/hessian_trace``: Hutchinson's estimate of tr(∇²L) (with the Rademacher start
  vectors of the quadrature, ``P e₁ᵀTe₁ = zᵀHz``: the same estimator on the same probes);
* ``geometry/hessian_outliers``: the number of eigenvalues separated from the bulk by a gap of
  at least ``gap`` times the spectral range (the rule of
  :meth:`~geomonitor.sharpness.density.SpectralDensity.n_outliers`; Sagun et al. 2017 and
  Papyan 2019 relate it to the number of classes);
* the spectrum itself, as media under ``geometry/hessian_spectrum`` (``log_spectrum`` of the
  sink: a W&B histogram of the quadrature mass and a table of nodes and weights), when
  ``log_spectrum`` is True.

Cost: ``n_vectors * n_iter`` Hessian-vector products per measurement (default 2 × 20 = 40;
a sharpness measurement takes at most its ``max_hvp`` = 20; each product is about one
training step at a 32-sample slice and a 64-sample batch), hence off by default: ``spectrum_every_n_steps``
switches it on. Failure modes: no ``loss_fn`` (the family disables itself at setup), a loss
that is not a scalar (``TypeError``), and those of ``spectral_density``.

Example:
    >>> fam = SpectrumFamily(Every(n_steps=500), n_iter=20, n_vectors=2)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from geomonitor._checks import positive_int
from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.families.sharpness import as_loss, head
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every

__all__ = ["SpectrumFamily"]


class SpectrumFamily(Family):
    """Hessian spectral density on the first ``probe_size`` probe samples (see module doc).

    Args:
        schedule: when to measure.
        n_iter: Lanczos steps per start vector (>= 1).
        n_vectors: start vectors (>= 1).
        gap: relative gap of the outlier rule, in (0, 1).
        seed: seed of the family's own generator of start vectors.
        probe_size: probe samples the loss is taken on (None: the whole probe set).
        hvp: ``"auto"``, ``"exact"`` or ``"fd"`` (:func:`~geomonitor.sharpness.spectrum.choose_hvp`).
        log_spectrum: whether to hand the nodes and weights to the sink.
    """

    name = "spectrum"
    needs_loss = True

    def __init__(self, schedule: Every, *, n_iter: int = 20, n_vectors: int = 2, gap: float = 0.05,
                 seed: int = 0, probe_size: int | None = 32, hvp: str = "auto",
                 log_spectrum: bool = True) -> None:
        super().__init__(schedule)
        from geomonitor.sharpness.spectrum import HVP_BACKENDS

        self.n_iter = positive_int("n_iter", n_iter)
        self.n_vectors = positive_int("n_vectors", n_vectors)
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 < gap < 1:
            raise ValueError(f"gap must be a float in (0, 1), got {gap!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if hvp not in HVP_BACKENDS:
            raise ValueError(f"hvp must be one of {HVP_BACKENDS}, got {hvp!r}")
        if not isinstance(log_spectrum, bool):
            raise ValueError(f"log_spectrum must be a bool, got {log_spectrum!r}")
        self.gap, self.hvp, self.log_spectrum = float(gap), hvp, log_spectrum
        self.probe_size = positive_int("probe_size", probe_size, allow_none=True)
        self.generator = torch.Generator().manual_seed(seed)

    def run(self, ctx: Context) -> Measurement:
        from geomonitor.sharpness.density import spectral_density

        if ctx.loss_fn is None:
            raise ValueError("spectrum needs the training loss: pass loss_fn=callable(model, batch)")
        module, loss_fn = ctx.model, ctx.loss_fn
        batch = ctx.probe_batch if self.probe_size is None else head(ctx.probe_batch, self.probe_size)
        sd = spectral_density(module, lambda: as_loss(loss_fn(module, batch)), n_iter=self.n_iter,
                              n_vectors=self.n_vectors, hvp=self.hvp, generator=self.generator)
        out = Measurement(metrics={metric_key("hessian_trace"): sd.trace,
                                   metric_key("hessian_outliers"): float(sd.n_outliers(self.gap))})
        if self.log_spectrum:
            out.spectra[metric_key("hessian_spectrum")] = (np.asarray(sd.nodes.numpy()),
                                                           np.asarray(sd.weights.numpy()))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator of start vectors (the next measurement draws what it would
        have drawn without the interruption)."""
        if "generator" in state:
            self.generator.set_state(state["generator"])
