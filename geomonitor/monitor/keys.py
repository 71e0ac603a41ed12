"""Metric names: the one place they are built.

Every number the monitors write is named ``geometry/<family>[/<layer>[/<summary>]]``. The
names are a contract with dashboards, ``EarlyStopping(monitor=...)``, ``ModelCheckpoint`` and
the alert rules, so nothing else spells them out by hand.

=====================  ======  ========  =============================================
family                 layer   summary   example
=====================  ======  ========  =============================================
``sharpness``          no      no        ``geometry/sharpness``
``eos_ratio``          no      no        ``geometry/eos_ratio``
``hessian_trace``      no      no        ``geometry/hessian_trace``
``n_hvp``              no      no        ``geometry/n_hvp``
``id``                 yes     no        ``geometry/id/encoder.0``
``id_profile``         no      no        ``geometry/id_profile``
``ph``                 yes     yes       ``geometry/ph/fc1/h1_entropy``
``neural_persistence`` opt.    no        ``geometry/neural_persistence[/fc1]``
``errors``             no      no        ``geometry/errors``
=====================  ======  ========  =============================================

Layer names are module names from ``named_modules()`` (dots kept); neither part may be empty
or contain ``/`` (it would change the name's depth).

Example:
    >>> metric_key("ph", "fc1", "h1_entropy")
    'geometry/ph/fc1/h1_entropy'
"""
from __future__ import annotations

__all__ = ["FAMILIES", "PREFIX", "metric_key"]

#: The namespace of every metric (``define_metric("geometry/*", ...)`` in the sink).
PREFIX = "geometry"

#: Every family, in the order of the table above.
FAMILIES: tuple[str, ...] = ("sharpness", "eos_ratio", "hessian_trace", "n_hvp", "id",
                             "id_profile", "ph", "neural_persistence", "errors")

# family -> (layer: "required" | "optional" | "forbidden", summary required?)
_RULES = {"id": ("required", False), "ph": ("required", True),
          "neural_persistence": ("optional", False)}


def _check_part(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{name} must be a non-empty str without '/', got {value!r}")
    return value


def metric_key(family: str, layer: str | None = None, summary: str | None = None) -> str:
    """The metric name for a family, optionally per layer and per summary statistic.

    Args:
        family: one of :data:`FAMILIES`.
        layer: module name; required for ``id`` and ``ph``, optional for
            ``neural_persistence``, not allowed otherwise.
        summary: summary statistic (e.g. ``h1_entropy``); required for ``ph`` only.

    Raises:
        ValueError: unknown family (the message lists :data:`FAMILIES`), a missing or
            superfluous layer/summary, or an empty part / a part containing ``/``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    layer_rule, needs_summary = _RULES.get(family, ("forbidden", False))
    if layer is None and layer_rule == "required":
        raise ValueError(f"family {family!r} needs a layer, got layer=None")
    if layer is not None and layer_rule == "forbidden":
        raise ValueError(f"family {family!r} takes no layer, got layer={layer!r}")
    if summary is None and needs_summary:
        raise ValueError(f"family {family!r} needs a summary, got summary=None")
    if summary is not None and not needs_summary:
        raise ValueError(f"family {family!r} takes no summary, got summary={summary!r}")
    parts = [PREFIX, family]
    if layer is not None:
        parts.append(_check_part("layer", layer))
    if summary is not None:
        parts.append(_check_part("summary", summary))
    return "/".join(parts)
