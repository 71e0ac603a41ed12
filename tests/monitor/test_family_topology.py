"""TopologyFamily: exact H0 up to ``exact_h0_max_points`` points, landmark H0 above, against
scipy's minimum spanning tree (H0 deaths of a Rips filtration = MST edge lengths); the
argument error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist

from geomonitor.monitor.families.topology import TopologyFamily
from geomonitor.monitor.family import Context
from geomonitor.monitor.schedule import Every
from geomonitor.topology.landmarks import farthest_point_sampling
from geomonitor.topology.ripser_process import ripser_in_process


def _mst_deaths(P: np.ndarray) -> np.ndarray:
    return np.sort(minimum_spanning_tree(cdist(P, P)).data)


def _run(fam, X, step=3):
    ctx = Context(torch.nn.Linear(1, 1), step, None, lambda: {"layer": X})
    m = fam.run(ctx)()
    assert m.errors == []
    return m


def test_small_probe_sets_get_exact_h0_large_ones_landmark_h0():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 5, generator=g, dtype=torch.float64)
    exact = TopologyFamily(Every(n_steps=1), maxdim=0, n_landmarks=20, solver=ripser_in_process,
                           exact_h0_max_points=120)
    h0 = _run(exact, X).diagrams["geometry/ph/layer/diagram"][0]
    assert np.allclose(np.sort(h0[:, 1]), _mst_deaths(X.numpy()), rtol=1e-12)
    assert len(h0) == 119

    landmark = TopologyFamily(Every(n_steps=1), maxdim=0, n_landmarks=20, seed=5,
                              solver=ripser_in_process, exact_h0_max_points=119)
    m = _run(landmark, X, step=3)
    h0 = m.diagrams["geometry/ph/layer/diagram"][0]
    idx, _ = farthest_point_sampling(X, 20, generator=torch.Generator().manual_seed(5 + 3))
    ref = _mst_deaths(X[idx].numpy())
    assert len(h0) == 19 and np.allclose(np.sort(h0[:, 1]), ref, rtol=1e-6)  # giotto-ph: float32
    assert m.metrics["geometry/ph/layer/h0_total_persistence"] == pytest.approx(ref.sum(), rel=1e-6)
    assert set(m.metrics) == set(_run(exact, X).metrics)  # same keys


def test_landmark_h0_and_h1_together_and_no_landmarks_means_exact():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(300, generator=g, dtype=torch.float64) * 6.2832
    X = torch.stack([t.cos(), t.sin()], 1) + 0.02 * torch.randn(300, 2, generator=g, dtype=torch.float64)
    fam = TopologyFamily(Every(n_steps=1), maxdim=1, n_landmarks=60, solver=ripser_in_process,
                         exact_h0_max_points=100)
    dg = _run(fam, X).diagrams["geometry/ph/layer/diagram"]
    assert len(dg[0]) == 59 and (dg[1][:, 1] - dg[1][:, 0]).max() > 1.0  # the circle
    everything = TopologyFamily(Every(n_steps=1), maxdim=0, n_landmarks=None,
                                solver=ripser_in_process, exact_h0_max_points=100)
    h0 = _run(everything, X).diagrams["geometry/ph/layer/diagram"][0]
    assert np.allclose(np.sort(h0[:, 1]), _mst_deaths(X.numpy()), rtol=1e-12)


@pytest.mark.parametrize("bad", [1, 2.0, True, "big"])
def test_exact_h0_max_points_error(bad):
    with pytest.raises(ValueError, match=rf"exact_h0_max_points must be an int >= 2 or None, got {bad!r}"):
        TopologyFamily(Every(n_steps=1), exact_h0_max_points=bad)
