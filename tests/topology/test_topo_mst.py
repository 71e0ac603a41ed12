"""H0 of Rips persistence = Euclidean MST edge lengths, against giotto-ph."""
import numpy as np
import pytest
import torch
from gph import ripser_parallel

from geomonitor.topology import mst_edge_lengths, mst_edges, persistence_diagrams
from geomonitor.distances import sq_dists
from geomonitor.topology.mst import _boruvka, _boruvka_lists, gram


def _gph_h0(X, tiny=0.0):
    d = ripser_parallel(np.asarray(X, dtype=np.float64), maxdim=0)["dgms"][0][:, 1]
    d = d[np.isfinite(d)]
    return np.sort(d[d > tiny])


def _cloud(n=300, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("dense_max", [10_000, 10])  # Prim on the Gram matrix / chunked Borůvka
def test_h0_deaths_equal_giotto_ph(dense_max):
    X = _cloud()
    got = mst_edge_lengths(X, dense_max=dense_max, chunk_size=37).numpy()
    ref = _gph_h0(X)
    assert got.shape == ref.shape == (299,)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_h0_float32_far_from_origin_equals_giotto_ph():
    X = (_cloud(200, 8, seed=1) * 0.1 + 50.0).float()  # cancellation-prone for |a|^2 + |b|^2 - 2ab
    got = persistence_diagrams(X, maxdim=0)[0]
    ref = _gph_h0(X.double())
    np.testing.assert_allclose(got[:, 1], ref, atol=1e-5)
    assert (got[:, 0] == 0).all()


@pytest.mark.parametrize("dense_max", [10_000, 10])
def test_duplicates_give_zero_bars_that_are_dropped(dense_max):
    X = _cloud(150, 4, seed=2)
    Xd = torch.cat([X, X[:30], X[:5]])
    got = persistence_diagrams(Xd, maxdim=0, dense_max=dense_max)[0][:, 1]
    # giotto-ph reports duplicates as bars of length ~1e-8 (float32 distances): drop both sides
    np.testing.assert_allclose(np.sort(got), _gph_h0(Xd, tiny=1e-6), atol=1e-5)
    assert mst_edge_lengths(Xd, dense_max=dense_max).numpy()[:35].max() == 0.0


def test_edges_form_a_spanning_tree_with_direct_lengths():
    X = _cloud(120, 3, seed=3)
    edges, lengths = mst_edges(X)
    parent = list(range(120))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for i, j in edges.tolist():
        assert find(i) != find(j)
        parent[find(i)] = find(j)
    np.testing.assert_allclose(lengths.numpy(), (X[edges[:, 0]] - X[edges[:, 1]]).norm(dim=1).numpy())


@pytest.mark.parametrize("source", ["gram", "points"])
def test_boruvka_paths_equal_giotto_ph(source):  # the Gram path is the one taken on accelerators
    X = _cloud(200, 6, seed=4)
    Xc = X - X.mean(0)
    G, sq = gram(Xc)
    rows = ((lambda s, e: sq[s:e, None] + sq[None, :] - 2 * G[s:e]) if source == "gram"
            else (lambda s, e: sq_dists(Xc[s:e], Xc)))
    edges = _boruvka(rows, 200, Xc.device, Xc.dtype, 64)
    got = np.sort((Xc[edges[:, 0]] - Xc[edges[:, 1]]).norm(dim=1).numpy())
    np.testing.assert_allclose(got, _gph_h0(X), atol=1e-5)


def test_boruvka_on_a_grid_with_many_equal_lengths_is_a_spanning_tree():
    g = torch.stack(torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij"), -1)
    X = g.reshape(-1, 2).double()
    edges, lengths = mst_edges(X, dense_max=10, chunk_size=17)  # every MST edge has length 1
    assert edges.shape == (143, 2)
    assert len({frozenset(e) for e in edges.tolist()}) == 143  # no edge twice
    assert torch.equal(lengths, torch.ones(143, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_h0_on_cuda_equals_giotto_ph():
    X = _cloud(500, 16, seed=5)
    for dense_max in (10_000, 10):  # Borůvka on the Gram matrix / chunked on the points
        got = mst_edge_lengths(X.cuda(), dense_max=dense_max, chunk_size=77)
        assert got.device.type == "cuda"
        np.testing.assert_allclose(got.cpu().numpy(), _gph_h0(X), atol=1e-5)
        got = mst_edge_lengths(X.float().cuda(), dense_max=dense_max)
        np.testing.assert_allclose(got.cpu().numpy(), _gph_h0(X.float().double()), atol=1e-5)


def test_single_point_has_no_edges():
    edges, lengths = mst_edges(torch.zeros(1, 3))
    assert edges.shape == (0, 2) and lengths.shape == (0,)


def _scipy_mst_lengths(X):
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    D = cdist(X.numpy(), X.numpy())
    return np.sort(minimum_spanning_tree(D).data)  # distinct points: no zero-weight edge lost


@pytest.mark.parametrize("k", [1, 2, 16])
def test_boruvka_with_lists_equals_scipy_mst(k):
    # clusters of 40 points: with k < 40 every list ends inside its cluster, so the bound test
    # and the recomputation of lists run in the late rounds
    g = torch.Generator().manual_seed(6)
    centres = 6.0 * torch.randn(8, 5, generator=g, dtype=torch.float64)
    X = (centres[:, None] + torch.randn(8, 40, 5, generator=g, dtype=torch.float64)).reshape(-1, 5)
    Xc = X - X.mean(0)
    edges = _boruvka_lists(Xc, 50, k)
    assert edges.shape == (319, 2)
    got = np.sort((Xc[edges[:, 0]] - Xc[edges[:, 1]]).norm(dim=1).numpy())
    np.testing.assert_allclose(got, _scipy_mst_lengths(X), rtol=1e-12, atol=1e-12)


def test_above_dense_max_equals_scipy_mst_float32():
    X = torch.randn(700, 12, generator=torch.Generator().manual_seed(7))
    got = mst_edge_lengths(X, dense_max=300, chunk_size=64).double().numpy()  # the chunked path
    np.testing.assert_allclose(got, _scipy_mst_lengths(X.double()), atol=1e-5)


# -- the input boundary (geomonitor._inputs.as_points, as knn) --------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_rows_raise_naming_the_rows(bad):
    X = _cloud(30, 3, seed=2).float()
    X[7, 0] = bad
    for fn in (mst_edge_lengths, mst_edges):
        with pytest.raises(ValueError, match=r"X has 1 rows with NaN or Inf values \(rows 7\); drop them first"):
            fn(X)


@pytest.mark.parametrize("dense_max", [8192, 50])  # Prim on the Gram matrix / Borůvka with lists
def test_float32_near_1e30_gives_the_float64_lengths(dense_max):
    X = (_cloud(120, 4, seed=3) * 1e30).float()  # squared distances overflow float32 as given
    got = mst_edge_lengths(X, dense_max=dense_max)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    np.testing.assert_allclose(got.double().numpy(), _scipy_mst_lengths(X.double()), rtol=1e-5)


def test_lengths_beyond_float32_raise():
    X = torch.tensor([[-3e38, 0.0], [3e38, 0.0], [3e38, 1.0]])  # an edge of 6e38 > float32's maximum
    with pytest.raises(ValueError, match=r"X: distances exceed the largest torch.float32 .*; pass float64 input"):
        mst_edge_lengths(X)
    assert float(mst_edge_lengths(X.double())[-1]) == pytest.approx(6e38, rel=1e-7)


def test_array_likes_and_integer_dtypes_are_computed_in_float():
    X = torch.randint(-20, 20, (60, 3), generator=torch.Generator().manual_seed(5))
    ref = _scipy_mst_lengths(X.double())
    for x, dtype in ((X.numpy(), torch.float64), (X.to(torch.int32), torch.float32),
                     (X.to(torch.int64), torch.float64)):
        got = mst_edge_lengths(x)
        assert isinstance(got, torch.Tensor) and got.dtype == dtype
        np.testing.assert_allclose(np.sort(got.double().numpy()[got.numpy() > 0]), ref, rtol=1e-6)
    got = mst_edge_lengths(torch.eye(5, dtype=torch.bool))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), [2 ** 0.5] * 4, rtol=1e-6)


@pytest.mark.parametrize("X,match", [
    (torch.zeros(10, 2, dtype=torch.complex128), "X must be real-valued, got dtype=torch.complex128"),
    (torch.arange(10.0), r"X must have shape \(N, D\), got shape \(10,\)"),
    (torch.zeros(0, 3), "X needs at least 1 points with finite values, got 0"),
])
def test_bad_inputs_raise(X, match):
    for fn in (mst_edge_lengths, mst_edges):
        with pytest.raises(ValueError, match=match):
            fn(X)
