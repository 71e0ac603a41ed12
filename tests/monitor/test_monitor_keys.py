"""metric_key: every family spelled out exactly, and every error."""
from __future__ import annotations

import pytest

from geomonitor.monitor.keys import FAMILIES, LAYER_STATS, LAYERED, layers_key, metric_key, split_key


@pytest.mark.parametrize("args, expected", [
    (("sharpness",), "geometry/sharpness"),
    (("eos_ratio",), "geometry/eos_ratio"),
    (("hessian_trace",), "geometry/hessian_trace"),
    (("hessian_outliers",), "geometry/hessian_outliers"),
    (("hessian_spectrum",), "geometry/hessian_spectrum"),
    (("n_hvp",), "geometry/n_hvp"),
    (("id", "encoder.0"), "geometry/id/encoder.0"),
    (("id_profile",), "geometry/id_profile"),
    (("ph", "fc1", "h1_entropy"), "geometry/ph/fc1/h1_entropy"),
    (("ph", "blocks.3.mlp", "h0_total_persistence"), "geometry/ph/blocks.3.mlp/h0_total_persistence"),
    (("neural_persistence", None, "mean"), "geometry/neural_persistence/mean"),
    (("neural_persistence", "fc1"), "geometry/neural_persistence/fc1"),
    (("symmetry", "fc1", "imbalance"), "geometry/symmetry/fc1/imbalance"),
    (("symmetry", "fc1", "weight_norm"), "geometry/symmetry/fc1/weight_norm"),
    (("symmetry", "fc1", "collapsed"), "geometry/symmetry/fc1/collapsed"),
    (("neural_collapse", "fc2", "nc1"), "geometry/neural_collapse/fc2/nc1"),
    (("connectivity", None, "barrier"), "geometry/connectivity/barrier"),
    (("equivariance", "rot90", "output"), "geometry/equivariance/rot90/output"),
    (("attention", "transformer.h.0.attn", "max_logit"), "geometry/attention/transformer.h.0.attn/max_logit"),
    (("attention", "layers.1", "entropy"), "geometry/attention/layers.1/entropy"),
    (("attention", "layers.1", "entropy_min"), "geometry/attention/layers.1/entropy_min"),
    (("output_logits", None, "mean_abs"), "geometry/output_logits/mean_abs"),
    (("output_logits", None, "log_z_sq"), "geometry/output_logits/log_z_sq"),
    (("skipped", "topology"), "geometry/skipped/topology"),
    (("dropped", "topology"), "geometry/dropped/topology"),
    (("period", "topology"), "geometry/period/topology"),
    (("errors",), "geometry/errors"),
])
def test_every_family(args, expected):
    assert metric_key(*args) == expected


def test_families_tuple():
    assert FAMILIES == ("sharpness", "eos_ratio", "hessian_trace", "hessian_outliers",
                        "hessian_spectrum", "n_hvp", "id", "id_profile",
                        "ph", "neural_persistence", "symmetry", "neural_collapse", "connectivity",
                        "equivariance", "attention", "output_logits", "skipped", "dropped",
                        "period", "errors")


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
    (("neural_persistence",), r"family 'neural_persistence' takes a layer or a summary \(exactly one\)"),
    (("neural_persistence", "fc1", "mean"), r"takes a layer or a summary \(exactly one\)"),
    (("neural_persistence", "mean"), r"a layer may not be called 'mean'"),
    (("neural_persistence", None, "max"), r"has the one summary 'mean', got 'max'"),
    (("connectivity", "fc1", "barrier"), r"family 'connectivity' takes no layer"),
    (("skipped",), r"family 'skipped' needs a layer"),
    (("attention", "layers.0"), r"family 'attention' needs a summary, got summary=None"),
    (("attention", None, "entropy"), r"family 'attention' needs a layer, got layer=None"),
    (("output_logits", "head", "max"), r"family 'output_logits' takes no layer, got layer='head'"),
    (("output_logits",), r"family 'output_logits' needs a summary, got summary=None"),
    (("id", ""), r"layer must be a non-empty str without '/', got ''"),
    (("id", "a/b"), r"layer must be a non-empty str without '/', got 'a/b'"),
    (("id", 3), r"layer must be a non-empty str without '/', got 3"),
    (("ph", "fc1", "h1/x"), r"summary must be a non-empty str without '/', got 'h1/x'"),
])
def test_bad_parts(args, match):
    with pytest.raises(ValueError, match=match):
        metric_key(*args)


def test_no_key_is_both_a_leaf_and_a_prefix():
    """Every key a monitor can write for a two-layer model: none is the parent of another
    (MLflow stores metrics as files, so ``a/b`` and ``a/b/c`` cannot both exist)."""
    from geomonitor.topology.summaries import SUMMARY_NAMES as SUMMARIES

    layers = ("fc1", "fc2")
    keys = [metric_key(f) for f in ("sharpness", "eos_ratio", "hessian_trace", "hessian_outliers",
                                    "n_hvp", "id_profile", "errors")]
    keys += [f"{metric_key('hessian_spectrum')}/{media}" for media in ("histogram", "table")]
    keys += [metric_key("id", layer) for layer in layers]
    keys += [metric_key("ph", layer, f"h{d}_{s}") for layer in layers for d in (0, 1) for s in SUMMARIES]
    keys += [metric_key("neural_persistence", summary="mean")]
    keys += [metric_key("neural_persistence", layer) for layer in layers]
    keys += [metric_key("attention", layer, s) for layer in layers
             for s in ("max_logit", "entropy", "entropy_min")]
    keys += [metric_key("output_logits", summary=s) for s in ("mean_abs", "max", "log_z", "log_z_sq")]
    keys += [metric_key("skipped", f) for f in ("id", "topology", "attention")]
    keys += [metric_key("dropped", f) for f in ("id", "topology")]
    keys += [metric_key("symmetry", layer, s) for layer in layers
             for s in ("imbalance", "imbalance_rel", "dead_fraction", "duplicates", "effective_rank",
                       "stable_rank", "weight_norm", "collapsed", "rankme")]
    leaves = set(keys)
    parents = {k.rsplit("/", i)[0] for k in keys for i in range(1, k.count("/"))}
    assert len(leaves) == len(keys)
    assert not leaves & parents, sorted(leaves & parents)


# -- statistics over layers and reading keys back --------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (("id", "mean"), "geometry/id/mean_over_layers"),
    (("id", "min"), "geometry/id/min_over_layers"),
    (("ph", "max", "h1_entropy"), "geometry/ph/max_over_layers/h1_entropy"),
    (("neural_persistence", "min"), "geometry/neural_persistence/min_over_layers"),
    (("symmetry", "mean", "imbalance"), "geometry/symmetry/mean_over_layers/imbalance"),
    (("neural_collapse", "max", "nc1"), "geometry/neural_collapse/max_over_layers/nc1"),
])
def test_layers_key(args, expected):
    assert layers_key(*args) == expected


def test_layered_families_and_stats():
    assert LAYERED == ("id", "ph", "neural_persistence", "symmetry", "neural_collapse")
    assert LAYER_STATS == ("mean", "min", "max")


@pytest.mark.parametrize("args, match", [
    (("sharpness", "mean"), r"family must be one of \('id', .*'neural_collapse'\) \(per-layer families\), got 'sharpness'"),
    (("equivariance", "mean", "output"), r"got 'equivariance'"),
    (("id", "median"), r"stat must be one of \('mean', 'min', 'max'\), got 'median'"),
    (("id", "mean", "x"), r"family 'id': per-layer keys have no summary, got summary='x'"),
    (("ph", "mean"), r"family 'ph': per-layer keys have summary, got summary=None"),
    (("neural_persistence", "max", "mean"), r"per-layer keys have no summary"),
])
def test_layers_key_bad_parts(args, match):
    with pytest.raises(ValueError, match=match):
        layers_key(*args)


@pytest.mark.parametrize("layer", ["mean_over_layers", "min_over_layers", "max_over_layers"])
def test_reserved_layer_names(layer):
    with pytest.raises(ValueError, match=rf"layer '{layer}' is reserved for statistics over layers"):
        metric_key("ph", layer, "h1_entropy")
    # not a module name there: equivariance's layer part is a transform name
    assert metric_key("equivariance", layer, "output") == f"geometry/equivariance/{layer}/output"


@pytest.mark.parametrize("key, parts", [
    ("geometry/sharpness", ("sharpness", None, None)),
    ("geometry/id/encoder.0", ("id", "encoder.0", None)),
    ("geometry/id_profile", ("id_profile", None, None)),
    ("geometry/ph/blocks.3.mlp/h0_total_persistence", ("ph", "blocks.3.mlp", "h0_total_persistence")),
    ("geometry/neural_persistence/mean", ("neural_persistence", None, "mean")),
    ("geometry/neural_persistence/fc1", ("neural_persistence", "fc1", None)),
    ("geometry/connectivity/barrier", ("connectivity", None, "barrier")),
    ("geometry/equivariance/rot90/output", ("equivariance", "rot90", "output")),
    ("geometry/skipped/topology", ("skipped", "topology", None)),
    ("geometry/ph/min_over_layers/h1_entropy", ("ph", "min_over_layers", "h1_entropy")),
])
def test_split_key(key, parts):
    assert split_key(key) == parts


@pytest.mark.parametrize("key, match", [
    ("loss", r"not a geometry metric key: 'loss'"),
    ("geometry/hessian", r"not a geometry metric key: 'geometry/hessian'"),
    ("train/geometry/sharpness", r"not a geometry metric key"),
    ("geometry/id", r"family 'id' keys have 3 parts"),
    ("geometry/ph/fc1", r"family 'ph' keys have 4 parts"),
    ("geometry/sharpness/x", r"family 'sharpness' keys have 2 parts"),
    ("geometry/id//", r"not a geometry metric key"),
    (3, r"not a geometry metric key: 3"),
])
def test_split_key_rejects(key, match):
    with pytest.raises(ValueError, match=match):
        split_key(key)
