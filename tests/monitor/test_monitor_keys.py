"""metric_key: every family spelled out exactly, and every error."""
from __future__ import annotations

import pytest

from geomonitor.monitor.keys import FAMILIES, metric_key


@pytest.mark.parametrize("args, expected", [
    (("sharpness",), "geometry/sharpness"),
    (("eos_ratio",), "geometry/eos_ratio"),
    (("hessian_trace",), "geometry/hessian_trace"),
    (("n_hvp",), "geometry/n_hvp"),
    (("id", "encoder.0"), "geometry/id/encoder.0"),
    (("id_profile",), "geometry/id_profile"),
    (("ph", "fc1", "h1_entropy"), "geometry/ph/fc1/h1_entropy"),
    (("ph", "blocks.3.mlp", "h0_total_persistence"), "geometry/ph/blocks.3.mlp/h0_total_persistence"),
    (("neural_persistence",), "geometry/neural_persistence"),
    (("neural_persistence", "fc1"), "geometry/neural_persistence/fc1"),
    (("errors",), "geometry/errors"),
])
def test_every_family(args, expected):
    assert metric_key(*args) == expected


def test_families_tuple():
    assert FAMILIES == ("sharpness", "eos_ratio", "hessian_trace", "n_hvp", "id", "id_profile",
                        "ph", "neural_persistence", "errors")


def test_unknown_family_lists_families():
    with pytest.raises(ValueError, match=r"family must be one of \('sharpness', .*'errors'\), got 'hessian'"):
        metric_key("hessian")


@pytest.mark.parametrize("args, match", [
    (("id",), r"family 'id' needs a layer, got layer=None"),
    (("ph", None, "h1_entropy"), r"family 'ph' needs a layer, got layer=None"),
    (("ph", "fc1"), r"family 'ph' needs a summary, got summary=None"),
    (("sharpness", "fc1"), r"family 'sharpness' takes no layer, got layer='fc1'"),
    (("errors", "fc1"), r"family 'errors' takes no layer, got layer='fc1'"),
    (("id", "fc1", "mean"), r"family 'id' takes no summary, got summary='mean'"),
    (("neural_persistence", "fc1", "x"), r"family 'neural_persistence' takes no summary"),
    (("id", ""), r"layer must be a non-empty str without '/', got ''"),
    (("id", "a/b"), r"layer must be a non-empty str without '/', got 'a/b'"),
    (("id", 3), r"layer must be a non-empty str without '/', got 3"),
    (("ph", "fc1", "h1/x"), r"summary must be a non-empty str without '/', got 'h1/x'"),
])
def test_bad_parts(args, match):
    with pytest.raises(ValueError, match=match):
        metric_key(*args)
