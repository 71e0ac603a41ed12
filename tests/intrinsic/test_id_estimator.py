"""The dispatching function and the IntrinsicDimension class: references, state, errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from geomonitor.intrinsic import METHODS, IntrinsicDimension, intrinsic_dimension

skdim = pytest.importorskip("skdim")


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    g = np.random.default_rng(7)
    return np.tanh(g.standard_normal((800, 5)) @ g.standard_normal((5, 64)))


def test_methods():
    assert METHODS == ("twonn", "mle", "pca")


def test_dispatch_matches_references(cloud):
    assert intrinsic_dimension(cloud) == pytest.approx(skdim.id.TwoNN().fit(cloud).dimension_, rel=1e-6)
    assert intrinsic_dimension(cloud, "twonn", discard_fraction=0.2) == pytest.approx(
        skdim.id.TwoNN(discard_fraction=0.2).fit(cloud).dimension_, rel=1e-6)
    assert intrinsic_dimension(cloud, "mle", k=12) == pytest.approx(
        skdim.id.MLE().fit(cloud, n_neighbors=12).dimension_, rel=1e-6)
    lam = np.linalg.eigvalsh(np.cov(cloud, rowvar=False))[::-1]
    assert intrinsic_dimension(cloud, "pca") == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-9)
    n90 = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.9) + 1)
    assert intrinsic_dimension(cloud, "pca", variance_threshold=0.9) == n90


def test_class_calls_and_records_last(cloud):
    est = IntrinsicDimension("mle", k=12)
    assert est.last is None
    assert est(cloud) == pytest.approx(skdim.id.MLE().fit(cloud, n_neighbors=12).dimension_, rel=1e-6)
    assert (est.last.n_points, est.last.n_nonfinite, est.last.n_duplicates) == (800, 0, 0)


def test_state_dict_round_trip_through_weights_only_load(cloud):
    est = IntrinsicDimension("twonn", discard_fraction=0.25, chunk_size=100, duplicates="raise")
    buf = io.BytesIO()
    torch.save(est.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state == {"method": "twonn", "options": {"discard_fraction": 0.25, "chunk_size": 100,
                                                    "duplicates": "raise"}}
    other = IntrinsicDimension("pca")
    other.load_state_dict(state)
    assert (other.method, other.options) == (est.method, est.options)
    assert other(cloud) == pytest.approx(skdim.id.TwoNN(discard_fraction=0.25).fit(cloud).dimension_, rel=1e-6)


def test_defaults_are_filled_in_the_state():
    assert IntrinsicDimension().state_dict() == {
        "method": "twonn", "options": {"discard_fraction": 0.1, "chunk_size": None, "duplicates": "drop"}}
    assert IntrinsicDimension("mle").state_dict()["options"] == {
        "k": 20, "unbiased": False, "chunk_size": None, "duplicates": "drop"}
    assert IntrinsicDimension("pca").state_dict()["options"] == {"variance_threshold": None}


@pytest.mark.parametrize("method, kw, msg", [
    ("lid", {}, r"method must be one of 'twonn', 'mle', 'pca', got 'lid'"),
    ("twonn", {"k": 5}, r"'k' is not an option of method 'twonn'; allowed: discard_fraction, chunk_size, duplicates"),
    ("pca", {"chunk_size": 5}, r"'chunk_size' is not an option of method 'pca'; allowed: variance_threshold"),
    ("twonn", {"discard_fraction": 1}, r"discard_fraction must be a number in \[0, 1\), got 1"),
    ("mle", {"k": 0}, r"k must be an integer >= 2, got 0"),
    ("mle", {"unbiased": "yes"}, r"unbiased must be True or False, got 'yes'"),
    ("mle", {"duplicates": "ignore"}, r"duplicates must be one of 'drop', 'raise', got 'ignore'"),
    ("pca", {"variance_threshold": 2.0}, r"variance_threshold must be a number in \(0, 1\], got 2.0"),
])
def test_constructor_errors(method, kw, msg):
    with pytest.raises(ValueError, match=msg):
        IntrinsicDimension(method, **kw)
    with pytest.raises(ValueError, match=msg):  # the function checks the same way
        intrinsic_dimension(torch.randn(30, 3), method, **kw)


@pytest.mark.parametrize("state, msg", [
    ({"method": "twonn"}, r"state must be a mapping with keys 'method' and 'options', got \['method'\]"),
    ([1, 2], r"state must be a mapping with keys 'method' and 'options', got list"),
    ({"method": "twonn", "options": 3}, r"state\['options'\] must be a mapping, got 3"),
    ({"method": "mle", "options": {"k": 1}}, r"k must be an integer >= 2, got 1"),
    ({"method": "nope", "options": {}}, r"method must be one of"),
])
def test_load_state_dict_errors(state, msg):
    est = IntrinsicDimension("mle", k=7)
    with pytest.raises(ValueError, match=msg):
        est.load_state_dict(state)
    assert est.state_dict()["options"]["k"] == 7  # unchanged after a rejected state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_input_computed_on_device(cloud, method):
    cpu = intrinsic_dimension(cloud, method)
    assert intrinsic_dimension(torch.from_numpy(cloud).cuda(), method) == pytest.approx(cpu, rel=1e-6)
