"""Fixtures for the intrinsic-dimension tests: scikit-dimension's benchmark manifolds."""
from __future__ import annotations

import numpy as np
import pytest

# Small instances of scikit-dimension's benchmark manifolds (Hein & Audibert 2005; Campadelli
# et al. 2015) with different intrinsic and ambient dimensions, low (< 25) and high (> 25) D.
MANIFOLDS = ["M1_Sphere", "M5a_Helix1d", "M6_Nonlinear", "M9_Affine", "M10d_Cubic",
             "M13a_Scurve", "Mbeta", "Mn1_Nonlinear", "Mp2_Paraboloid"]


@pytest.fixture(scope="session")
def manifolds() -> dict[str, np.ndarray]:
    """{name: (1000, D) float64} from ``skdim.datasets.BenchmarkManifolds(random_state=0)``."""
    skdim = pytest.importorskip("skdim")
    bm = skdim.datasets.BenchmarkManifolds(random_state=0)
    out = {}
    for name in MANIFOLDS:
        d, dim, _ = bm._dict_truth[name]
        out[name] = np.asarray(bm.generate(name, n=1000, dim=dim, d=d), dtype=np.float64)
    return out


@pytest.fixture(params=MANIFOLDS)
def manifold(request, manifolds) -> np.ndarray:
    """Each benchmark manifold in turn, (1000, D) float64."""
    return manifolds[request.param]
