"""``IntrinsicDimensionFamily``: the intrinsic dimension of each selected layer's activations.

TwoNN by default (Facco, d'Errico, Rodriguez & Laio 2017, "Estimating the intrinsic dimension
of datasets by a minimal neighborhood information", Sci. Rep. 7:12140); the profile across
layers follows Ansuini et al. 2019 ("Intrinsic dimension of data representations in deep
neural networks", NeurIPS). Keys: ``geometry/id/<layer>`` and, for W&B, the profile
``geometry/id_profile``.

Cost: O(N² D) per layer on the activations' device (N = probe size, D = features). A layer
whose estimate fails (duplicate points, constant activations) is one error in the
measurement; the other layers are still reported.

Example:
    >>> fam = IntrinsicDimensionFamily(Every(n_steps=100))
"""
from __future__ import annotations

from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every

__all__ = ["IntrinsicDimensionFamily"]


class IntrinsicDimensionFamily(Family):
    """Intrinsic dimension (``method``: ``"twonn"``, ``"mle"`` or ``"pca"``) per layer."""

    name = "id"
    needs_activations = True

    def __init__(self, schedule: Every, method: str = "twonn", log_profile: bool = True) -> None:
        super().__init__(schedule)
        from geomonitor.intrinsic import METHODS

        if method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
        self.method = method
        self.log_profile = bool(log_profile)

    def run(self, ctx: Context) -> Measurement:
        from geomonitor.intrinsic import intrinsic_dimension

        out = Measurement()
        names, values = [], []
        for layer, X in ctx.activations().items():
            try:
                d = float(intrinsic_dimension(X, method=self.method))
            except Exception as exc:  # noqa: BLE001 - one layer's failure is reported
                out.errors.append(exc)
                continue
            out.metrics[metric_key("id", layer)] = d
            names.append(layer)
            values.append(d)
        if self.log_profile and names:
            out.profiles[metric_key("id_profile")] = (names, values)
        return out
