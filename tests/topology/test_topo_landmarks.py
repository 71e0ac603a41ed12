"""Farthest-point landmarks and covering radius against brute force."""
import pytest
import torch

from geomonitor.topology import farthest_point_sampling
from geomonitor.topology.landmarks import _exact, _fast_numpy, _fast_torch
from geomonitor.topology.mst import gram


def _cloud(n=400, d=6, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute_force_check(X, idx, eps):
    D = torch.cdist(X.double(), X.double())
    for t in range(1, len(idx)):  # each landmark is the point farthest from the previous ones
        mind = D[:, idx[:t]].min(dim=1).values
        assert mind[idx[t]] == pytest.approx(float(mind.max()), rel=1e-5)
    assert eps == pytest.approx(float(D[:, idx].min(dim=1).values.max()), rel=1e-5)


@pytest.mark.parametrize("path", [_fast_numpy, _fast_torch, _exact])  # CPU / accelerators / fallback
@pytest.mark.parametrize("with_gram", [True, False])
def test_every_loop_picks_the_maxmin_landmarks(path, with_gram):
    X = _cloud(300, 5, seed=6).float()
    Xc = X - X.mean(0)
    G, sq = gram(Xc)
    idx, mind = path(Xc, sq, G if with_gram else None, 17, 25, 0.0)
    assert idx[0] == 17 and len(set(idx.tolist())) == 25
    D = torch.cdist(X.double(), X.double())
    _brute_force_check(X, idx, float(D[:, idx].min(dim=1).values.max()))
    torch.testing.assert_close(mind.double().sqrt(), D[:, idx].min(dim=1).values, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("path", [_fast_numpy, _fast_torch])
def test_fast_loops_hand_near_duplicates_to_the_exact_one(path):
    base = _cloud(7, 3, seed=5)
    X = base.repeat(20, 1)
    Xc = X - X.mean(0)
    G, sq = gram(Xc)
    assert path(Xc, sq, G, 0, 30, 64.0 * torch.finfo(X.dtype).eps * float(sq.max())) is None


def test_maxmin_order_and_radius_match_brute_force():
    X = _cloud()
    idx, eps = farthest_point_sampling(X, 40, generator=torch.Generator().manual_seed(1))
    D = torch.cdist(X, X)
    assert idx[0] == torch.randint(400, (1,), generator=torch.Generator().manual_seed(1))
    for t in range(1, 40):  # each landmark is the point farthest from the previous ones
        mind = D[:, idx[:t]].min(dim=1).values
        assert mind[idx[t]] == pytest.approx(float(mind.max()), abs=1e-9)
    true_eps = float(D[:, idx].min(dim=1).values.max())
    assert eps == pytest.approx(true_eps, abs=1e-9)
    assert len(set(idx.tolist())) == 40


def test_gram_rows_give_the_same_landmarks():
    X = _cloud(seed=2).float()
    a = farthest_point_sampling(X, 30, generator=torch.Generator().manual_seed(3))
    b = farthest_point_sampling(X, 30, generator=torch.Generator().manual_seed(3),
                                gram_matrix=gram(X - X.mean(0)))
    assert torch.equal(a[0], b[0]) and a[1] == pytest.approx(b[1], rel=1e-5)


def test_generator_picks_the_first_landmark():
    X = _cloud(seed=4)
    firsts = {int(farthest_point_sampling(X, 5, generator=torch.Generator().manual_seed(s))[0][0])
              for s in range(6)}
    assert len(firsts) > 1
    before = torch.get_rng_state()
    farthest_point_sampling(X, 5)  # default generator, global stream untouched
    assert torch.equal(before, torch.get_rng_state())


def test_more_landmarks_than_points_uses_all_with_zero_radius():
    X = _cloud(10)
    idx, eps = farthest_point_sampling(X, 50)
    assert torch.equal(idx, torch.arange(10)) and eps == 0.0


def test_fewer_distinct_points_than_landmarks_stops_early():
    base = _cloud(7, 3, seed=5)
    X = base.repeat(20, 1)
    idx, eps = farthest_point_sampling(X, 30, generator=torch.Generator().manual_seed(0))
    assert len(idx) == 7 and eps == 0.0
    assert torch.cdist(X[idx], base).min(dim=0).values.max() == 0  # every distinct point taken


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_landmarks_equal_cpu():
    X = _cloud(500, 8, seed=7)
    for gm in (False, True):
        a = farthest_point_sampling(X, 60, generator=torch.Generator().manual_seed(2),
                                    gram_matrix=gram(X - X.mean(0)) if gm else None)
        Xg = X.cuda()
        b = farthest_point_sampling(Xg, 60, generator=torch.Generator().manual_seed(2),
                                    gram_matrix=gram(Xg - Xg.mean(0)) if gm else None)
        assert b[0].is_cuda and torch.equal(a[0], b[0].cpu()) and b[1] == pytest.approx(a[1], rel=1e-9)
    near = X[:9].repeat(10, 1).cuda()  # near duplicates: the exact loop on the device
    idx, eps = farthest_point_sampling(near, 20, generator=torch.Generator().manual_seed(0))
    assert len(idx) == 9 and eps == 0.0


def test_constant_cloud():
    idx, eps = farthest_point_sampling(torch.full((50, 4), 3.25), 10)
    assert len(idx) == 1 and eps == 0.0


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_n_landmarks_raises(bad):
    with pytest.raises(ValueError, match=r"n_landmarks must be an int >= 1"):
        farthest_point_sampling(_cloud(10), bad)


# -- the input boundary (geomonitor._inputs.as_points, as knn) --------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_rows_raise_naming_the_rows(bad):
    X = _cloud(60, 4, seed=8).float()
    X[[3, 41], 1] = bad
    with pytest.raises(ValueError, match=r"X has 2 rows with NaN or Inf values \(rows 3, 41\); drop them first"):
        farthest_point_sampling(X, 5, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_float32_far_from_one_picks_the_float64_landmarks(scale):
    # squares of 1e30 overflow float32 (and of 1e-30 underflow): the cloud is scaled exactly first
    X64 = _cloud(200, 5, seed=9) * scale
    X = X64.float()
    idx, eps = farthest_point_sampling(X, 12, generator=torch.Generator().manual_seed(3))
    assert len(set(idx.tolist())) == 12
    first = int(torch.randint(200, (1,), generator=torch.Generator().manual_seed(3)))
    D = torch.cdist(X.double(), X.double())  # brute-force maxmin in float64 from the same first point
    ref = [first]
    for _ in range(11):
        ref.append(int(D[:, ref].min(dim=1).values.argmax()))
    assert idx.tolist() == ref
    assert eps == pytest.approx(float(D[:, ref].min(dim=1).values.max()), rel=1e-5)


def test_array_likes_and_integer_dtypes_are_computed_in_float():
    X = torch.randint(-50, 50, (80, 3), generator=torch.Generator().manual_seed(4))
    idx, eps = farthest_point_sampling(X.numpy(), 6, generator=torch.Generator().manual_seed(1))
    idx32, eps32 = farthest_point_sampling(X.to(torch.int32), 6, generator=torch.Generator().manual_seed(1))
    assert idx.tolist() == idx32.tolist() and eps == pytest.approx(eps32)
    _brute_force_check(X.double(), idx, eps)
    B = torch.eye(6, dtype=torch.bool)  # 6 corners of a simplex: all at distance sqrt(2)
    idx, eps = farthest_point_sampling(B, 3, generator=torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 3 and eps == pytest.approx(2 ** 0.5)


@pytest.mark.parametrize("X,match", [
    (torch.zeros(10, 2, dtype=torch.complex64), "X must be real-valued, got dtype=torch.complex64"),
    (torch.arange(10.0), r"X must have shape \(N, D\), got shape \(10,\)"),
    (torch.zeros(0, 3), "X needs at least 1 points with finite values, got 0"),
])
def test_bad_inputs_raise(X, match):
    with pytest.raises(ValueError, match=match):
        farthest_point_sampling(X, 3)
