"""persistence_diagrams: known shapes, giotto-ph / giotto-tda references, the 2·eps bound,
bad input."""
import math

import numpy as np
import pytest
import torch
from gph import ripser_parallel

from geomonitor.topology import Diagrams, persistence_diagrams, prepare_diagrams


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _circle(n, noise=0.05, seed=0, dim=2):
    g = _gen(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    X = torch.zeros(n, dim, dtype=torch.float64)
    X[:, 0], X[:, 1] = t.cos(), t.sin()
    return X + noise * torch.randn(n, dim, generator=g, dtype=torch.float64)


def _lifetimes(d):
    return np.sort(d[:, 1] - d[:, 0])[::-1]


def test_noisy_circle_has_one_dominant_h1_bar():
    dg = persistence_diagrams(_circle(600), maxdim=1, n_landmarks=120, generator=_gen(1))
    life = _lifetimes(dg[1])
    assert life[0] > 1.0 and life[0] > 5 * life[1]


def test_two_clusters_have_one_dominant_finite_h0_bar():
    g = _gen(2)
    X = torch.cat([torch.randn(200, 3, generator=g) * 0.1, torch.randn(200, 3, generator=g) * 0.1 + 10])
    life = _lifetimes(persistence_diagrams(X, maxdim=0)[0])
    assert life[0] > 9 and life[0] > 10 * life[1]


def test_flat_torus_has_two_dominant_h1_bars():
    g = _gen(3)
    a, b = (torch.rand(2, 500, generator=g, dtype=torch.float64) * 2 * math.pi)
    X = torch.stack([a.cos(), a.sin(), b.cos(), b.sin()], dim=1)  # flat torus in R^4
    life = _lifetimes(persistence_diagrams(X, maxdim=1, n_landmarks=150, generator=g)[1])
    assert life[1] > 3 * life[2] and life[1] > 0.5


def test_sphere_has_one_h2_bar():
    n = 100  # Fibonacci lattice on the unit sphere, slightly perturbed
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi, th = torch.acos(1 - 2 * i / n), math.pi * (1 + 5 ** 0.5) * i
    X = torch.stack([phi.sin() * th.cos(), phi.sin() * th.sin(), phi.cos()], 1)
    X = X + 0.01 * torch.randn(n, 3, generator=_gen(4), dtype=torch.float64)
    dg = persistence_diagrams(X, maxdim=2)
    life = _lifetimes(dg[2])
    assert len(dg) == 3 and life[0] > 0.5 and (len(life) == 1 or life[0] > 5 * life[1])
    assert life[0] > 1.0 and _lifetimes(dg[1])[0] < 0.2 * life[0]


def test_all_points_equals_giotto_ph_on_the_cloud():
    X = _circle(150, noise=0.15, seed=5)
    dg = persistence_diagrams(X, maxdim=1)
    ref = ripser_parallel(X.numpy(), maxdim=1)["dgms"]
    assert dg.n_landmarks == 150 and dg.hausdorff_radius == 0.0 and dg.bottleneck_bound == 0.0
    for k in (0, 1):
        r = ref[k][np.isfinite(ref[k][:, 1])]
        np.testing.assert_allclose(np.sort(dg[k], axis=0), np.sort(r, axis=0), atol=1e-5)


def _bottleneck(a, b, dim):
    gtda = pytest.importorskip("gtda.diagrams")
    m = max(len(a), len(b), 1)

    def pad(d):
        out = np.zeros((m, 3))
        out[:, 2] = dim
        out[: len(d), :2] = d
        return out

    X = np.stack([pad(a), pad(b)])
    D = gtda.PairwiseDistance(metric="bottleneck", metric_params={"delta": 0.0}, order=None).fit_transform(X)
    return float(D[0, 1, 0])


@pytest.mark.parametrize("seed", [0, 1])
def test_landmark_diagrams_within_twice_the_covering_radius(seed):
    X = _circle(250, noise=0.1, seed=seed, dim=3)
    full = persistence_diagrams(X, maxdim=1, exact_h0=False)
    lm = persistence_diagrams(X, maxdim=1, n_landmarks=60, exact_h0=False, generator=_gen(seed))
    assert lm.n_landmarks == 60 and lm.hausdorff_radius > 0
    assert lm.bottleneck_bound == pytest.approx(2 * lm.hausdorff_radius)
    for k in (0, 1):
        d = _bottleneck(lm[k], full[k], k)
        assert d <= lm.bottleneck_bound + 1e-6
        assert d > 0  # the bound is exercised, not trivially met


def test_nan_rows_are_dropped_and_counted():
    X = _circle(100, seed=6)
    Xn = torch.cat([X, torch.full((3, 2), float("nan"), dtype=X.dtype), torch.tensor([[math.inf, 0.0]])])
    dg, ref = persistence_diagrams(Xn, maxdim=1), persistence_diagrams(X, maxdim=1)
    assert (dg.n_points, dg.n_dropped) == (100, 4)
    for k in (0, 1):
        np.testing.assert_array_equal(dg[k], ref[k])


def test_float16_is_computed_in_float32():
    X = _circle(120, seed=7).half()
    dg = persistence_diagrams(X, maxdim=1)
    ref = ripser_parallel(X.double().numpy(), maxdim=1)["dgms"]
    np.testing.assert_allclose(dg[0][:, 1], np.sort(ref[0][np.isfinite(ref[0][:, 1]), 1]), atol=1e-5)
    np.testing.assert_allclose(np.sort(dg[1], axis=0), np.sort(ref[1], axis=0), atol=1e-5)


def test_fewer_points_than_landmarks_uses_all():
    X = _circle(40, seed=8)
    dg = persistence_diagrams(X, maxdim=1, n_landmarks=100)
    assert dg.n_landmarks == 40 and dg.hausdorff_radius == 0.0


def test_constant_cloud_has_empty_diagrams():
    dg = persistence_diagrams(torch.ones(30, 5), maxdim=1, n_landmarks=10)
    assert isinstance(dg, Diagrams) and len(dg) == 2
    assert dg[0].shape == (0, 2) and dg[1].shape == (0, 2)
    assert dg.n_landmarks == 1 and dg.hausdorff_radius == 0.0


def test_numpy_input_and_maxdim_zero():
    X = _circle(50, seed=9).numpy()
    dg = persistence_diagrams(X, maxdim=0, n_landmarks=10)
    assert len(dg) == 1 and dg.maxdim == 0 and dg.n_landmarks == 50 and dg[0].shape == (49, 2)


@pytest.mark.parametrize("kw,msg", [
    (dict(maxdim=4), r"maxdim must be an int in \[0, 3\], got 4"),
    (dict(maxdim=-1), r"maxdim must be an int in \[0, 3\], got -1"),
    (dict(maxdim=1.0), r"maxdim must be an int in \[0, 3\], got 1.0"),
    (dict(n_landmarks=2), r"n_landmarks must be an int >= 3 or None, got 2"),
    (dict(n_landmarks=10.0), r"n_landmarks must be an int >= 3 or None, got 10.0"),
    (dict(n_threads=0), r"n_threads must be an int >= 1 \(or -1 for all cores\), got 0"),
])
def test_bad_arguments_raise(kw, msg):
    with pytest.raises(ValueError, match=msg):
        persistence_diagrams(_circle(20), **kw)


def test_too_few_points_raise():
    with pytest.raises(ValueError, match=r"X needs at least 2 points with finite values, got 1 \(1 rows"):
        persistence_diagrams(torch.tensor([[0.0, 1.0], [math.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"X must have shape \(N, D\)"):
        persistence_diagrams(torch.zeros(5))


def test_prepared_halves_compose_to_giotto_ph_on_the_landmarks():
    X = _circle(400, seed=3)
    prep = prepare_diagrams(X, 1, n_landmarks=60, generator=_gen(1))
    assert prep.distances.shape == (60, 60) and prep.h0.shape == (399, 2)
    # the distance matrix is the landmarks' own: giotto-ph on it gives the H1 bars
    ref = ripser_parallel(prep.distances, metric="precomputed", maxdim=1)["dgms"][1]
    done = prep.complete()
    np.testing.assert_allclose(np.sort(done[1], axis=0), np.sort(ref[ref[:, 1] > ref[:, 0]], axis=0))
    one_shot = persistence_diagrams(X, 1, n_landmarks=60, generator=_gen(1))
    for a, b in zip(done, one_shot):
        np.testing.assert_array_equal(a, b)
    assert prepare_diagrams(X, 0).distances is None  # exact H0 needs no landmarks
    with pytest.raises(ValueError, match=r"n_threads must be an int >= 1 \(or -1 for all cores\), got 0"):
        prep.complete(n_threads=0)


def _sorted_bars(d):
    d = np.asarray(d, dtype=np.float64).reshape(-1, 2)
    d = d[np.isfinite(d[:, 1]) & (d[:, 1] > d[:, 0])]
    return d[np.lexsort((d[:, 1], d[:, 0]))]


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e-20, 1e-30])
def test_huge_and_tiny_float32_clouds_give_the_float64_diagrams(scale):
    X32 = (_circle(150, dim=6, seed=5) * scale).float()
    ref = ripser_parallel(X32.double().numpy(), maxdim=1)["dgms"]  # same values, unscaled float64
    dg = persistence_diagrams(X32, maxdim=1)
    assert len(dg[0]) == 149 and len(dg[1]) == len(_sorted_bars(ref[1])) > 0
    for k in (0, 1):
        np.testing.assert_allclose(_sorted_bars(dg[k]) / scale, _sorted_bars(ref[k]) / scale, rtol=1e-5, atol=1e-6)
    # landmarks: covering radius and bars as the float64 computation on the same values gives them
    got = persistence_diagrams(X32, maxdim=1, n_landmarks=40, generator=_gen(0))
    want = persistence_diagrams(X32.double(), maxdim=1, n_landmarks=40, generator=_gen(0))
    assert got.hausdorff_radius == pytest.approx(want.hausdorff_radius, rel=1e-5) and got.hausdorff_radius > 0
    unit = persistence_diagrams(X32.double() / scale, maxdim=1, n_landmarks=40, generator=_gen(0))
    assert want.hausdorff_radius == pytest.approx(unit.hausdorff_radius * scale, rel=1e-6)  # cloud's units
    for a, b in zip(got, want):
        np.testing.assert_allclose(_sorted_bars(a), _sorted_bars(b), rtol=1e-5)


def test_float64_clouds_beyond_giotto_phs_float32_range():
    X = _circle(80, seed=6)
    ref = ripser_parallel(X.numpy(), maxdim=1)["dgms"]
    for scale in (1e200, 1e-200):  # giotto-ph alone rounds these distances to float32 inf / 0
        dg = persistence_diagrams(X * scale, maxdim=1)
        for k in (0, 1):
            np.testing.assert_allclose(_sorted_bars(dg[k]) / scale, _sorted_bars(ref[k]), rtol=1e-6)


def test_distances_beyond_float64_raise():
    X = torch.tensor([[1.5e308, 0.0], [-1.5e308, 0.0]], dtype=torch.float64)  # 3e308 apart
    with pytest.raises(ValueError, match=r"X: distances exceed the largest torch.float64 .*; rescale the input"):
        persistence_diagrams(X, maxdim=0)
