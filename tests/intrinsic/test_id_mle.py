"""Levina-Bickel / MacKay-Ghahramani MLE against scikit-dimension's MLE and known shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geomonitor.intrinsic import mle

skdim = pytest.importorskip("skdim")


def _skdim_mle(X: np.ndarray, k: int = 20, unbiased: bool = False) -> float:
    return float(skdim.id.MLE(unbiased=unbiased).fit(X, n_neighbors=k).dimension_)


def test_mle_matches_skdim_on_benchmark_manifolds(manifold):
    X = manifold
    ref = _skdim_mle(X)
    assert mle(X) == pytest.approx(ref, rel=2e-2)
    assert mle(torch.from_numpy(X)) == pytest.approx(ref, rel=1e-6)
    assert mle(torch.from_numpy(X).float()) == pytest.approx(ref, rel=2e-2)


def test_mle_default_k_is_skdim_default(manifolds):
    X = manifolds["M1_Sphere"]
    assert mle(X) == pytest.approx(float(skdim.id.MLE().fit(X).dimension_), rel=1e-6)


@pytest.mark.parametrize("k, unbiased", [(5, False), (10, True), (40, False)])
def test_mle_other_k_and_unbiased_match_skdim(manifolds, k, unbiased):
    X = manifolds["Mp2_Paraboloid"]
    assert mle(X, k=k, unbiased=unbiased) == pytest.approx(_skdim_mle(X, k, unbiased), rel=2e-2)


@pytest.mark.parametrize("d", [2, 6])
def test_mle_linear_subspace(d):
    g = torch.Generator().manual_seed(10 + d)
    Z = torch.rand(2000, d, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(64, d, generator=g, dtype=torch.float64))
    assert mle(Z @ Q.T, k=10) == pytest.approx(d, rel=0.15)


def test_mle_chunked_equals_unchunked(manifolds):
    X = torch.from_numpy(manifolds["Mbeta"])
    assert mle(X, chunk_size=61) == pytest.approx(mle(X), rel=1e-12)


def test_mle_needs_more_points_than_k():
    with pytest.raises(ValueError, match=r"X needs more than k=20 points for 20 neighbours, got 15"):
        mle(torch.randn(15, 4), k=20)


@pytest.mark.parametrize("kw, msg", [
    ({"k": 1}, r"k must be an integer >= 2, got 1"),
    ({"k": 2, "unbiased": True}, r"k must be an integer >= 3, got 2"),
    ({"k": 5.0}, r"k must be an integer >= 2, got 5.0"),
    ({"unbiased": 1}, r"unbiased must be True or False, got 1"),
    ({"chunk_size": -3}, r"chunk_size must be an integer >= 1 or None, got -3"),
    ({"duplicates": None}, r"duplicates must be one of 'drop', 'raise', got None"),
])
def test_mle_argument_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        mle(torch.randn(30, 3), **kw)


def test_mle_equidistant_neighbours_is_degenerate():
    X = torch.eye(6, dtype=torch.float64)  # a regular simplex: all distances equal
    with pytest.raises(ValueError, match=r"MLE is degenerate: every point has 4 equidistant"):
        mle(X, k=4)
