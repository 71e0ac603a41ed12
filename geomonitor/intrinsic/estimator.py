"""One entry point for the intrinsic-dimension estimators: a function and a small class.

``intrinsic_dimension(X, method="twonn", **options)`` dispatches to

==========  ====================================  ===========================================
method      estimator                             options (defaults)
==========  ====================================  ===========================================
``twonn``   Facco et al. 2017 (:mod:`.twonn`)     discard_fraction=0.1, chunk_size=None,
                                                  duplicates="drop"
``mle``     Levina & Bickel 2004 with MacKay &    k=20, unbiased=False, chunk_size=None,
            Ghahramani 2005 (:mod:`.mle`)         duplicates="drop"
``pca``     participation ratio, or components    variance_threshold=None
            for a variance fraction (:mod:`.pca`)
==========  ====================================  ===========================================

:class:`IntrinsicDimension` holds a method and its options, validated at construction, and
is called on point clouds; its ``state_dict`` is the configuration only (plain Python types,
loadable with ``torch.load(weights_only=True)``). After a call, ``last`` holds the
:class:`~geomonitor.intrinsic.Estimate` (points used, NaN/Inf rows and duplicates dropped).

Bad input, for every method: fewer than 3 finite points and constant data raise
``ValueError``; rows with NaN/Inf are dropped with an
:class:`~geomonitor.intrinsic.IntrinsicDimensionWarning` giving the count; integer input is
cast to float; fp16/bf16 are computed in float32. Exact duplicates (twonn, mle) are dropped
with a warning giving the count, or raise with ``duplicates="raise"``; near-duplicate points
(twonn, mle: an estimate below 0.5) give the estimate with an ``IntrinsicDimensionWarning``
saying the input is degenerate. Float32 clouds of any finite scale (values of 1e30 or 1e-30,
whose squared distances overflow or underflow float32) give the float64 estimate: the cloud is
rescaled by a power of two first, exactly. The result is always a finite float or an
exception, never NaN.

Example:
    >>> X = torch.randn(2000, 8) @ torch.randn(8, 256)
    >>> intrinsic_dimension(X)                        # TwoNN, close to 8
    >>> est = IntrinsicDimension("mle", k=10)
    >>> est(X), est.last.n_points
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

from geomonitor.intrinsic._common import Estimate, check_choice
from geomonitor.intrinsic.mle import check_mle_options, mle_estimate
from geomonitor.intrinsic.pca import check_pca_options, pca_estimate
from geomonitor.intrinsic.twonn import check_twonn_options, twonn_estimate

__all__ = ["METHODS", "IntrinsicDimension", "intrinsic_dimension", "intrinsic_dimension_estimate"]

_ESTIMATORS: dict[str, Callable[..., Estimate]] = {
    "twonn": twonn_estimate, "mle": mle_estimate, "pca": pca_estimate,
}
_CHECKS: dict[str, Callable[..., dict[str, Any]]] = {
    "twonn": check_twonn_options, "mle": check_mle_options, "pca": check_pca_options,
}
METHODS: tuple[str, ...] = tuple(_ESTIMATORS)


def _check_options(method: Any, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validate ``method`` and ``options``; return them with every default filled in."""
    method = check_choice("method", method, METHODS)
    check = _CHECKS[method]
    allowed = [n for n, p in inspect.signature(check).parameters.items()
               if p.kind is p.KEYWORD_ONLY]
    for name in options:
        if name not in allowed:
            raise ValueError(f"{name!r} is not an option of method {method!r}; allowed: "
                             f"{', '.join(allowed)}")
    return method, check(**options)


def intrinsic_dimension_estimate(X: Any, method: str = "twonn", **options: Any) -> Estimate:
    """Like :func:`intrinsic_dimension`, returning the :class:`Estimate` record."""
    method, full = _check_options(method, options)
    est = _ESTIMATORS[method](X, **full)
    if not math.isfinite(est.dimension):  # guard: never hand back NaN/Inf
        raise ValueError(f"{method} produced a non-finite estimate {est.dimension} "
                         f"on {est.n_points} points")
    return est


def intrinsic_dimension(X: Any, method: str = "twonn", **options: Any) -> float:
    """Intrinsic dimension of the point cloud ``X`` (N, D).

    Args:
        X: (N, D) torch tensor on any device (computed there), or numpy array.
        method: ``"twonn"``, ``"mle"`` or ``"pca"`` (see the module table).
        **options: the chosen method's options; an unknown or invalid one raises ValueError.

    Returns:
        A finite Python float.

    Cost: O(N^2 D) for twonn/mle (chunked exact neighbour search), O(N D min(N, D)) for pca.
    """
    return intrinsic_dimension_estimate(X, method, **options).dimension


class IntrinsicDimension:
    """A configured intrinsic-dimension estimator: ``IntrinsicDimension(method, **options)(X)``.

    Arguments are validated at construction (``ValueError`` naming the argument, the value
    and what is allowed). ``state_dict()`` returns ``{"method": str, "options": dict}`` of
    plain Python values; ``load_state_dict`` validates and restores it. ``last`` is the
    :class:`Estimate` of the latest call (None before the first).
    """

    def __init__(self, method: str = "twonn", **options: Any) -> None:
        self.method, self.options = _check_options(method, options)
        self.last: Estimate | None = None

    def __call__(self, X: Any) -> float:
        self.last = intrinsic_dimension_estimate(X, self.method, **self.options)
        return self.last.dimension

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "options": dict(self.options)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or set(state) != {"method", "options"}:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"state must be a mapping with keys 'method' and 'options', got {got}")
        if not isinstance(state["options"], Mapping):
            raise ValueError(f"state['options'] must be a mapping, got {state['options']!r}")
        self.method, self.options = _check_options(state["method"], dict(state["options"]))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"IntrinsicDimension({self.method!r}, {opts})"
