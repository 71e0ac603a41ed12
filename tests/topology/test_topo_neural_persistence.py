"""Neural persistence against a plain Kruskal written here and giotto-ph on the layer graph."""
import math

import numpy as np
import pytest
import torch
from gph import ripser_parallel
from torch import nn

from geomonitor.topology import layer_matrix, neural_persistence, neural_persistence_network


def _kruskal_np(W, w_max, p=2.0):
    """Rieck et al. 2019 spelled out: edges by decreasing |w|/w_max, union-find, (1, w') pairs."""
    W = np.abs(np.asarray(W, dtype=np.float64))
    a, b = W.shape
    edges = sorted(((W[i, j] / w_max, i, a + j) for i in range(a) for j in range(b)), reverse=True)
    parent = list(range(a + b))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    pers = []
    for w, u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[ru] = rv
            pers.append(1.0 - w)
    assert len(pers) == a + b - 1
    return (np.sum(np.array(pers) ** p) ** (1 / p)) / (a + b - 1) ** (1 / p)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("shape,p", [((7, 5), 2.0), ((3, 12), 1.0), ((10, 10), 3.0), ((1, 6), 2.0)])
def test_layer_equals_plain_kruskal(shape, p):
    W = _rand(*shape, seed=shape[0])
    ref = _kruskal_np(W, float(W.abs().max()), p)
    assert neural_persistence(W, p=p) == pytest.approx(ref, rel=1e-12)


def test_layer_equals_giotto_ph_on_the_bipartite_graph():
    W = _rand(9, 6, seed=1).numpy()
    Wp = np.abs(W) / np.abs(W).max()
    a, b = W.shape
    D = np.full((a + b, a + b), np.inf)
    np.fill_diagonal(D, 0.0)
    D[:a, a:], D[a:, :a] = 1.0 - Wp, (1.0 - Wp).T   # filtration value 1 - w'
    h0 = ripser_parallel(D, metric="precomputed", maxdim=0)["dgms"][0]
    pers = h0[np.isfinite(h0[:, 1]), 1]
    ref = np.sqrt((pers ** 2).sum()) / math.sqrt(a + b - 1)
    assert neural_persistence(W, normalized=False) / math.sqrt(a + b - 1) == pytest.approx(ref, abs=1e-6)
    assert neural_persistence(W) == pytest.approx(ref, abs=1e-6)


def test_known_values():
    assert neural_persistence(torch.ones(4, 3)) == 0.0  # every edge at the top: no persistence
    # one strong edge, the rest at 1/2: 4 tree edges of persistence 1/2, one of 0
    W = torch.full((2, 4), 0.5)
    W[0, 0] = 1.0
    assert neural_persistence(W, normalized=False) == pytest.approx(math.sqrt(4 * 0.25))
    assert neural_persistence(W) == pytest.approx(1.0 / math.sqrt(5))
    assert neural_persistence(W, p=math.inf) == pytest.approx(0.5)
    assert 0.0 <= neural_persistence(_rand(30, 20)) <= 1.0


def test_network_uses_the_global_max_and_the_mean():
    layers = {"a": _rand(6, 4, seed=2), "b": 5 * _rand(3, 6, seed=3), "c": _rand(2, 3, seed=4)}
    w_max = max(float(w.abs().max()) for w in layers.values())
    res = neural_persistence_network(layers)
    for k, w in layers.items():
        assert res.per_layer[k] == pytest.approx(_kruskal_np(w, w_max), rel=1e-12)
    assert res.mean == pytest.approx(np.mean([_kruskal_np(w, w_max) for w in layers.values()]))
    per = neural_persistence_network(layers, normalization="layer")
    for k, w in layers.items():
        assert per.per_layer[k] == pytest.approx(_kruskal_np(w, float(w.abs().max())), rel=1e-12)
    assert res.per_layer["a"] > per.per_layer["a"]  # a smaller normaliser for the weak layer


def test_module_linear_and_conv_by_max_over_the_kernel():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=2),
                          nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        for s, m in enumerate([model[0], model[2], model[4]]):
            m.weight.copy_(_rand(*m.weight.shape, seed=10 + s))
    res = neural_persistence_network(model)
    assert list(res.per_layer) == ["0", "4"] and res.skipped == ("2",)
    k = model[0].weight.detach().double()
    M = np.zeros((4, 3))
    for o in range(4):
        for i in range(3):
            M[o, i] = max(abs(float(v)) for v in k[o, i].flatten())
    w_max = max(M.max(), float(model[4].weight.detach().abs().max()))
    assert res.per_layer["0"] == pytest.approx(_kruskal_np(M, w_max), rel=1e-6)
    np.testing.assert_allclose(layer_matrix(k), M)


def test_zero_layer():
    with pytest.raises(ValueError, match=r"undefined for a layer whose weights are all zero"):
        neural_persistence(torch.zeros(3, 4))
    # within a network the global normaliser is defined: every persistence is 1
    res = neural_persistence_network({"z": torch.zeros(3, 4), "w": _rand(4, 2)})
    assert res.per_layer["z"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"undefined when every weight of the network is zero"):
        neural_persistence_network({"z": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match=r"undefined for a layer whose weights are all zero"):
        neural_persistence_network({"z": torch.zeros(3, 4), "w": _rand(4, 2)}, normalization="layer")


@pytest.mark.parametrize("kw,msg", [
    (dict(p=0.5), r"p must be a number >= 1 \(or inf\), got 0.5"),
    (dict(p=math.nan), r"p must be a number >= 1 \(or inf\), got nan"),
    (dict(w_max=0.1), r"w_max must be a finite number > 0 and >= the layer's largest \|w\| \(2\), got 0.1"),
    (dict(w_max=-1.0), r"w_max must be a finite number > 0"),
    (dict(w_max=math.inf), r"w_max must be a finite number > 0"),
])
def test_bad_arguments_raise(kw, msg):
    with pytest.raises(ValueError, match=msg):
        neural_persistence(torch.tensor([[1.0, -2.0]]), **kw)


def test_bad_weights_raise():
    with pytest.raises(ValueError, match=r"weight has NaN or Inf values"):
        neural_persistence(torch.tensor([[1.0, math.nan]]))
    with pytest.raises(ValueError, match=r"weight must have shape \(out, in\) or \(out, in, \*kernel\)"):
        neural_persistence(torch.ones(4))
    with pytest.raises(ValueError, match=r"weight must be a real floating tensor, got dtype=torch.complex64"):
        neural_persistence(torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"weight of 'x' has NaN or Inf"):
        neural_persistence_network({"x": torch.tensor([[math.inf, 1.0]])})


def test_bad_network_arguments_raise():
    with pytest.raises(ValueError, match=r"normalization must be 'network' or 'layer', got 'global'"):
        neural_persistence_network({"a": torch.ones(2, 2)}, normalization="global")
    with pytest.raises(ValueError, match=r"has no Linear or Conv layer"):
        neural_persistence_network(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match=r"must be an nn.Module or a mapping name -> weight, got list"):
        neural_persistence_network([torch.ones(2, 2)])


def test_float16_weights_and_no_global_rng_use():
    W = _rand(8, 5, seed=7).half()
    before = torch.get_rng_state()
    assert neural_persistence(W) == pytest.approx(_kruskal_np(W.double(), float(W.double().abs().max())))
    assert torch.equal(before, torch.get_rng_state())
