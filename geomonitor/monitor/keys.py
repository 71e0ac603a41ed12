"""Metric names: the one place they are built.

Every number the monitors write is named ``geometry/<family>[/<layer>][/<summary>]``. The
names are a contract with dashboards, ``EarlyStopping(monitor=...)``, ``ModelCheckpoint`` and
the alert rules, so nothing else spells them out by hand. No name is both a leaf and the
prefix of another (a logger that stores metrics as files, such as MLflow's, cannot hold
both ``a/b`` and ``a/b/c``), so a family has either leaves or children, never both.

======================  ==========  ==========  ==============================================
family                  layer       summary     example
======================  ==========  ==========  ==============================================
``sharpness``           no          no          ``geometry/sharpness``
``eos_ratio``           no          no          ``geometry/eos_ratio``
``hessian_trace``       no          no          ``geometry/hessian_trace``
``hessian_outliers``    no          no          ``geometry/hessian_outliers``
``hessian_spectrum``    no          no          ``geometry/hessian_spectrum`` (media only)
``n_hvp``               no          no          ``geometry/n_hvp``
``id``                  yes         no          ``geometry/id/encoder.0``
``id_profile``          no          no          ``geometry/id_profile``
``ph``                  yes         yes         ``geometry/ph/fc1/h1_entropy``
``neural_persistence``  one of the two          ``geometry/neural_persistence/fc1``, ``.../mean``
``symmetry``            yes         yes         ``geometry/symmetry/fc1/imbalance``
``neural_collapse``     yes         yes         ``geometry/neural_collapse/fc2/nc1``
``connectivity``        no          yes         ``geometry/connectivity/barrier``
``equivariance``        yes (name)  yes         ``geometry/equivariance/rot90/output``
``attention``           yes         yes         ``geometry/attention/h.0.attn/max_logit``
``output_logits``       no          yes         ``geometry/output_logits/log_z``
``skipped``             yes (fam.)  no          ``geometry/skipped/topology``
``dropped``             yes (fam.)  no          ``geometry/dropped/topology``
``period``              yes (fam.)  no          ``geometry/period/topology``
``errors``              no          no          ``geometry/errors``
======================  ==========  ==========  ==============================================

``skipped`` counts the occurrences of a family that the cost cap skipped, ``dropped`` the
background measurements dropped because too many were pending, ``period`` the period in
steps in force for the family since the cost cap's plan last changed it. For ``neural_persistence``
the network mean is the summary ``mean`` and a layer may not be called ``mean``.

Layer names are module names from ``named_modules()`` (dots kept); no part may be empty or
contain ``/`` (it would change the name's depth).

Statistics over layers (:func:`layers_key`): where a per-layer key is replaced by the mean,
minimum or maximum over the layers (a W&B project holds under 10,000 keys), the layer part is
``mean_over_layers``, ``min_over_layers`` or ``max_over_layers`` (reserved: no layer may be
called so), e.g. ``geometry/ph/min_over_layers/h1_entropy``. Per-layer families
(:data:`LAYERED`) are those whose layer part is a module name; :func:`split_key` reads a
key back into its parts.

Example:
    >>> metric_key("ph", "fc1", "h1_entropy")
    'geometry/ph/fc1/h1_entropy'
    >>> metric_key("neural_persistence", summary="mean")
    'geometry/neural_persistence/mean'
"""
from __future__ import annotations

__all__ = ["FAMILIES", "LAYERED", "LAYER_STATS", "PREFIX", "layers_key", "metric_key", "split_key"]

#: The namespace of every metric (``define_metric("geometry/*", ...)`` in the sink).
PREFIX = "geometry"

#: Every family, in the order of the table above.
FAMILIES: tuple[str, ...] = ("sharpness", "eos_ratio", "hessian_trace", "hessian_outliers",
                             "hessian_spectrum", "n_hvp", "id",
                             "id_profile", "ph", "neural_persistence", "symmetry",
                             "neural_collapse", "connectivity", "equivariance", "attention",
                             "output_logits", "skipped", "dropped", "period", "errors")

#: The families whose layer part is a module name (``equivariance`` names a transform,
#: ``skipped``/``dropped``/``period`` a family).
LAYERED: tuple[str, ...] = ("id", "ph", "neural_persistence", "symmetry", "neural_collapse")

#: The statistics over layers of :func:`layers_key`.
LAYER_STATS: tuple[str, ...] = ("mean", "min", "max")
_OVER_LAYERS = {f"{stat}_over_layers" for stat in LAYER_STATS}

_REQ, _NO = "required", "forbidden"
# family -> (layer rule, summary rule); absent: neither. "one": exactly one of the two.
_RULES = {"id": (_REQ, _NO), "ph": (_REQ, _REQ), "neural_persistence": ("one", "one"),
          "symmetry": (_REQ, _REQ), "neural_collapse": (_REQ, _REQ),
          "connectivity": (_NO, _REQ), "equivariance": (_REQ, _REQ),
          "attention": (_REQ, _REQ), "output_logits": (_NO, _REQ),
          "skipped": (_REQ, _NO), "dropped": (_REQ, _NO),
          "period": (_REQ, _NO)}
_NP_MEAN = "mean"


def _check_part(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{name} must be a non-empty str without '/', got {value!r}")
    return value


def metric_key(family: str, layer: str | None = None, summary: str | None = None) -> str:
    """The metric name for a family, optionally per layer and per summary statistic.

    Args:
        family: one of :data:`FAMILIES`.
        layer: module name (a transform name for ``equivariance``, a family name for
            ``skipped``/``dropped``); required or forbidden as the table above says.
        summary: summary statistic (e.g. ``h1_entropy``); as the table above says.

    Raises:
        ValueError: unknown family (the message lists :data:`FAMILIES`), a missing or
            superfluous layer/summary, or an empty part / a part containing ``/``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    layer_rule, summary_rule = _RULES.get(family, (_NO, _NO))
    if layer_rule == "one":
        if (layer is None) == (summary is None):
            raise ValueError(f"family {family!r} takes a layer or a summary (exactly one), got "
                             f"layer={layer!r}, summary={summary!r}")
        if layer == _NP_MEAN:
            raise ValueError(f"family {family!r}: a layer may not be called {_NP_MEAN!r} (the "
                             "network mean's name)")
        if summary is not None and summary != _NP_MEAN:
            raise ValueError(f"family {family!r} has the one summary {_NP_MEAN!r}, got {summary!r}")
    else:
        for part, value, rule in (("layer", layer, layer_rule), ("summary", summary, summary_rule)):
            if value is None and rule == _REQ:
                raise ValueError(f"family {family!r} needs a {part}, got {part}=None")
            if value is not None and rule == _NO:
                raise ValueError(f"family {family!r} takes no {part}, got {part}={value!r}")
    if layer is not None and layer in _OVER_LAYERS and family in LAYERED:
        raise ValueError(f"layer {layer!r} is reserved for statistics over layers (layers_key)")
    return _join(family, layer, summary)


def _join(family: str, layer: str | None, summary: str | None) -> str:
    parts = [PREFIX, family]
    if layer is not None:
        parts.append(_check_part("layer", layer))
    if summary is not None:
        parts.append(_check_part("summary", summary))
    return "/".join(parts)


def layers_key(family: str, stat: str, summary: str | None = None) -> str:
    """The key of a statistic over the layers of a per-layer family.

    ``geometry/<family>/<stat>_over_layers[/<summary>]``: the per-layer key
    ``metric_key(family, layer, summary)`` with the layer part replaced.

    Raises:
        ValueError: ``family`` not in :data:`LAYERED`, ``stat`` not in :data:`LAYER_STATS`,
            or a summary where the family's per-layer keys have none (or none where they do).

    Example:
        >>> layers_key("ph", "max", "h1_entropy")
        'geometry/ph/max_over_layers/h1_entropy'
        >>> layers_key("id", "mean")
        'geometry/id/mean_over_layers'
    """
    if family not in LAYERED:
        raise ValueError(f"family must be one of {LAYERED} (per-layer families), got {family!r}")
    if stat not in LAYER_STATS:
        raise ValueError(f"stat must be one of {LAYER_STATS}, got {stat!r}")
    wants_summary = _RULES[family][1] == _REQ
    if (summary is not None) != wants_summary:
        raise ValueError(f"family {family!r}: per-layer keys {'have' if wants_summary else 'have no'} "
                         f"summary, got summary={summary!r}")
    return _join(family, f"{stat}_over_layers", summary)


def split_key(key: str) -> tuple[str, str | None, str | None]:
    """``(family, layer, summary)`` of a key built by :func:`metric_key` or :func:`layers_key`
    (the inverse: ``metric_key(*split_key(k)) == k`` for a per-layer key).

    Raises:
        ValueError: ``key`` is not ``geometry/<family>[/...]`` with a known family and the
            number of parts that family's keys have.

    Example:
        >>> split_key("geometry/ph/blocks.3.mlp/h0_total_persistence")
        ('ph', 'blocks.3.mlp', 'h0_total_persistence')
        >>> split_key("geometry/neural_persistence/mean")
        ('neural_persistence', None, 'mean')
    """
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) < 2 or parts[0] != PREFIX or parts[1] not in FAMILIES or "" in parts:
        raise ValueError(f"not a geometry metric key: {key!r}")
    family, rest = parts[1], parts[2:]
    layer_rule, summary_rule = _RULES.get(family, (_NO, _NO))
    if layer_rule == "one" and len(rest) == 1:
        return (family, None, rest[0]) if rest[0] == _NP_MEAN else (family, rest[0], None)
    want = (layer_rule == _REQ) + (summary_rule == _REQ)
    if len(rest) != want:
        raise ValueError(f"not a geometry metric key: {key!r} (family {family!r} keys have "
                         f"{want + 2} parts)")
    layer = rest[0] if layer_rule == _REQ else None
    summary = rest[-1] if summary_rule == _REQ else None
    return family, layer, summary
