"""SymmetryFamily run through hand-built Contexts: an MLP (every number against an independent
numpy computation), the geometric decay of the imbalance under SGD with weight decay read from
the family's own metric, nn.TransformerEncoder, a tiny GPT-2, a ResNet-style CNN with
BatchNorm, the large-layer path, per-layer errors, state and every argument error.

The decay test drives the family from a plain PyTorch SGD loop (float64); the same check through
a Lightning fit belongs with the Lightning adapter's tests."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor.monitor.families.symmetry import SymmetryFamily
from geomonitor.monitor.family import Context
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.layers import capture_activations
from geomonitor.monitor.schedule import Every


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ctx(model, batch, layers=(), step=1, forward=lambda m, b: m(b[0])):
    mods = dict(model.named_modules())
    sel = {n: mods[n] for n in layers}

    def capture():
        return capture_activations(model, sel, lambda: forward(model, batch)) if sel else {}

    return Context(model, step, batch, capture, forward=forward)


def _np(t):
    return t.detach().double().numpy()


def _erank_np(M):
    s = np.linalg.svd(M.reshape(M.shape[0], -1), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _digits_like(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    x = x + torch.eye(3, 6, dtype=torch.float64)[y]
    return x, y


def test_mlp_every_metric_against_numpy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        net[0].bias[[2, 7]] = -50.0                       # two dead units
        net[2].weight[3], net[2].bias[3] = 1.5 * net[2].weight[1], 1.5 * net[2].bias[1]
        net[4].weight[:, 3] = 0.5 * net[4].weight[:, 1]   # unit 3 of layer "2" copies unit 1
    x, y = _digits_like()
    fam = SymmetryFamily(Every(n_steps=1))
    m = fam.run(_ctx(net, (x, y), layers=["1", "3"]))
    assert m.errors == []
    k = lambda layer, s: metric_key("symmetry", layer, s)  # noqa: E731
    # imbalance: numpy per-unit norms
    for a, b in ((0, 2), (2, 4)):
        wa, ba, wb = _np(net[a].weight), _np(net[a].bias), _np(net[b].weight)
        d = (wa ** 2).sum(1) + ba ** 2 - (wb ** 2).sum(0)
        assert m.metrics[k(str(a), "imbalance")] == pytest.approx(np.linalg.norm(d), rel=1e-10)
        tot = (wa ** 2).sum() + (ba ** 2).sum() + (wb ** 2).sum()
        assert m.metrics[k(str(a), "imbalance_rel")] == pytest.approx(np.linalg.norm(d) / tot, rel=1e-10)
    # dead units: ReLU outputs of the probe set, by hand
    h1 = np.maximum(_np(x) @ _np(net[0].weight).T + _np(net[0].bias), 0)
    h2 = np.maximum(h1 @ _np(net[2].weight).T + _np(net[2].bias), 0)
    assert m.metrics[k("0", "dead_fraction")] == pytest.approx((h1.max(0) == 0).mean()) == 0.2
    assert m.metrics[k("2", "dead_fraction")] == pytest.approx((h2.max(0) == 0).mean())
    assert m.metrics[k("0", "duplicates")] == 0.0 and m.metrics[k("2", "duplicates")] == 2.0
    for name in ("0", "2", "4"):
        W = _np(dict(net.named_modules())[name].weight)
        s = np.linalg.svd(W, compute_uv=False)
        assert m.metrics[k(name, "effective_rank")] == pytest.approx(_erank_np(W), rel=1e-9)
        assert m.metrics[k(name, "stable_rank")] == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=1e-9)
        assert m.metrics[k(name, "weight_norm")] == pytest.approx(np.linalg.norm(W, "fro"), rel=1e-12)
    # RankMe of the selected layers' activations (outputs of the ReLU modules)
    for name, h in (("1", h1), ("3", h2)):
        s = np.linalg.svd(h, compute_uv=False)
        p = s / s.sum() + 1e-7
        assert m.metrics[k(name, "rankme")] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    # neural collapse at the classifier "4", on its input h2: NC1 by dense numpy
    yy = y.numpy()
    means = np.stack([h2[yy == c].mean(0) for c in range(3)])
    Sw = sum(np.outer(h - means[c], h - means[c]) for h, c in zip(h2, yy)) / len(h2)
    Mc = means - h2.mean(0)
    Sb = Mc.T @ Mc / 3
    nc = lambda s: metric_key("neural_collapse", "4", s)  # noqa: E731
    assert m.metrics[nc("nc1")] == pytest.approx(np.trace(Sw @ np.linalg.pinv(Sb)) / 3, rel=1e-6)
    pred = (h2 @ _np(net[4].weight).T + _np(net[4].bias)).argmax(1)
    ncc = ((h2[:, None, :] - means[None]) ** 2).sum(2).argmin(1)
    assert m.metrics[nc("nc4")] == pytest.approx((pred != ncc).mean())
    assert {nc(s) for s in ("nc2_equinorm", "nc2_equiangular", "nc3")} <= set(m.metrics)
    assert len(m.metrics) == 8 + 12 + 2 + 5
    # without labels: no neural collapse
    m2 = fam.run(_ctx(net, (x,), layers=["1"]))
    assert not any(key.startswith("geometry/neural_collapse") for key in m2.metrics)


def test_imbalance_decays_geometrically_through_the_logged_metric():
    """Plain SGD (float64), lr eta, coupled weight decay lam, full batch: the family's
    ``imbalance`` follows (1 - eta lam)^(2t) ||D_0|| up to the accumulated eta^2 gradient
    term, whose size is computed from the gradients in the loop (triangle inequality)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).double()
    with torch.no_grad():
        net[0].weight.mul_(3.0)  # start far from balance
    x, y = _digits_like(60)
    eta, lam, T = 0.02, 2.0, 60
    r = (1 - eta * lam) ** 2
    opt = torch.optim.SGD(net.parameters(), lr=eta, weight_decay=lam)
    fam = SymmetryFamily(Every(n_steps=1), weight_ranks=False, activation_ranks=False, collapse=False)
    key = metric_key("symmetry", "0", "imbalance")
    logged, bound = [fam.run(_ctx(net, (x, y), step=0)).metrics[key]], [0.0]
    for t in range(1, T + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        g_in = (net[0].weight.grad ** 2).sum(1) + net[0].bias.grad ** 2
        g_out = (net[2].weight.grad ** 2).sum(0)
        bound.append(r * bound[-1] + eta ** 2 * float((g_in - g_out).norm()))
        opt.step()
        logged.append(fam.run(_ctx(net, (x, y), step=t)).metrics[key])
    for t in range(T + 1):
        predicted = r ** t * logged[0]
        assert abs(logged[t] - predicted) <= bound[t] + 1e-12, t
    assert logged[T] < 0.1 * logged[0]             # it did decay ...
    assert bound[T] < 0.02 * r ** T * logged[0]    # ... at the predicted rate, not by the noise term
    slope = np.polyfit(np.arange(T + 1), np.log(logged), 1)[0]
    assert slope == pytest.approx(math.log(r), rel=0.02)


def test_transformer_encoder():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 2, enable_nested_tensor=False)
    x = torch.randn(5, 12, 16)  # (T, B, D)
    labels = torch.randint(0, 3, (12,))
    fam = SymmetryFamily(Every(n_steps=1))
    m = fam.run(_ctx(enc, (x, labels), layers=["layers.1.linear1"]))
    assert m.errors == []
    pairs = [(p.a, p.b) for p in fam.structure.pairs]
    assert pairs == [("layers.0.linear1", "layers.0.linear2"), ("layers.1.linear1", "layers.1.linear2")]
    for a, _ in pairs:
        for s in ("imbalance", "imbalance_rel", "dead_fraction", "duplicates"):
            assert metric_key("symmetry", a, s) in m.metrics
    assert 0.0 <= m.metrics[metric_key("symmetry", "layers.0.linear1", "dead_fraction")] <= 1.0
    assert metric_key("symmetry", "layers.1.linear1", "rankme") in m.metrics
    # the classifier candidate sees (T, B, D) token features: no neural collapse
    assert not any(k.startswith("geometry/neural_collapse") for k in m.metrics)
    assert len(m.metrics) == 2 * 4 + 4 * 4 + 1


def test_tiny_gpt2_logs_ranks_only():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 50, (4, 10), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    fam = SymmetryFamily(Every(n_steps=1))
    ctx = _ctx(model, batch, layers=["transformer.h.1.mlp.c_fc"],
               forward=lambda m, b: m(input_ids=b["input_ids"]))
    m = fam.run(ctx)
    assert m.errors == [] and fam.structure.pairs == [] and len(fam.structure.skipped) == 8
    W = model.transformer.h[0].mlp.c_fc.weight.detach().double().numpy().T  # Conv1D: (in, out)
    assert m.metrics[metric_key("symmetry", "transformer.h.0.mlp.c_fc", "effective_rank")] == \
        pytest.approx(_erank_np(W), rel=1e-5)
    assert sorted({k.split("/")[-1] for k in m.metrics}) == ["collapsed", "effective_rank", "rankme",
                                                               "stable_rank", "weight_norm"]
    assert len(m.metrics) == 9 * 4 + 1


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(h + self.bn2(self.conv2(h)))
        return self.fc(h.mean(dim=(2, 3)))


def test_resnet_with_batchnorm_skips_every_pair_but_measures_collapse():
    torch.manual_seed(0)
    net = _ResNet()
    x, y = torch.randn(40, 3, 6, 6), torch.arange(4).repeat(10)
    bn_stats = net.bn1.running_mean.clone()
    fam = SymmetryFamily(Every(n_steps=1))
    m = fam.run(_ctx(net, (x, y), layers=["conv2"]))
    assert m.errors == [] and fam.structure.pairs == []
    assert fam.structure.skipped == {"conv1 -> conv2": "normalisation (BatchNorm2d) in between",
                                     "conv2 -> fc": "normalisation (BatchNorm2d) in between"}
    assert torch.equal(net.bn1.running_mean, bn_stats) and net.training
    assert metric_key("symmetry", "conv1", "effective_rank") in m.metrics  # (8, 27) kernel matrix
    assert metric_key("neural_collapse", "fc", "nc1") in m.metrics
    assert metric_key("symmetry", "conv2", "rankme") in m.metrics


def test_weight_norm_shows_a_collapse_the_scale_blind_ranks_miss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    fam = SymmetryFamily(Every(n_steps=1), activation_ranks=False, collapse=False)
    x = torch.rand(16, 12, dtype=torch.float64)
    before = fam.run(_ctx(net, (x,))).metrics
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e-3)  # what strong weight decay does to every weight
    after = fam.run(_ctx(net, (x,))).metrics
    k = lambda layer, s: metric_key("symmetry", layer, s)  # noqa: E731
    for name in ("0", "2"):
        W = _np(dict(net.named_modules())[name].weight)
        assert after[k(name, "effective_rank")] == pytest.approx(_erank_np(W), rel=1e-9)
        assert after[k(name, "effective_rank")] == pytest.approx(before[k(name, "effective_rank")], rel=1e-9)
        assert after[k(name, "weight_norm")] == pytest.approx(np.sqrt((W ** 2).sum()), rel=1e-12)
        assert after[k(name, "weight_norm")] == pytest.approx(1e-3 * before[k(name, "weight_norm")], rel=1e-9)


def _collapsed_np(W, first, fraction=0.05, rms=1e-4):
    """The documented collapse rule in numpy: ||W||_F < fraction ||W_0||_F or RMS(W) < rms."""
    norm = np.sqrt((W.astype(np.float64) ** 2).sum())
    return float(norm < fraction * first or norm / np.sqrt(W.size) < rms)


def test_collapse_flag_on_a_model_scaled_down_by_1e3():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    x = torch.rand(16, 12)
    k = lambda layer: metric_key("symmetry", layer, "collapsed")  # noqa: E731
    first = {n: np.linalg.norm(_np(net[int(n)].weight)) for n in ("0", "2")}
    fam = SymmetryFamily(Every(n_steps=1), activation_ranks=False, collapse=False)
    fresh = SymmetryFamily(Every(n_steps=1), activation_ranks=False, collapse=False)
    only_fraction = SymmetryFamily(Every(n_steps=1), activation_ranks=False, collapse=False,
                                   weight_collapse_rms=None)
    only_floor = SymmetryFamily(Every(n_steps=1), activation_ranks=False, collapse=False,
                                weight_collapse_fraction=None)
    before = fam.run(_ctx(net, (x,))).metrics
    only_fraction.run(_ctx(net, (x,)))
    only_floor.run(_ctx(net, (x,)))
    for name in ("0", "2"):
        assert before[k(name)] == _collapsed_np(_np(net[int(name)].weight), first[name]) == 0.0
    # a milder shrink (x 0.2) is not a collapse under the defaults
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.2)
    mild = fam.run(_ctx(net, (x,))).metrics
    for name in ("0", "2"):
        assert mild[k(name)] == _collapsed_np(_np(net[int(name)].weight), first[name]) == 0.0
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e-3 / 0.2)  # what strong weight decay does: every weight x 1e-3 of its start
    after = fam.run(_ctx(net, (x,))).metrics
    late = fresh.run(_ctx(net, (x,))).metrics  # first measured after the collapse: the floor
    by_fraction = only_fraction.run(_ctx(net, (x,))).metrics
    by_floor = only_floor.run(_ctx(net, (x,))).metrics
    for name in ("0", "2"):
        W = _np(net[int(name)].weight)
        rms = np.sqrt((W ** 2).mean())
        assert after[k(name)] == _collapsed_np(W, first[name]) == 1.0
        assert after[metric_key("symmetry", name, "effective_rank")] == pytest.approx(
            before[metric_key("symmetry", name, "effective_rank")], rel=1e-5)  # the ranks cannot see it
        assert by_fraction[k(name)] == float(np.linalg.norm(W) < 0.05 * first[name]) == 1.0
        assert late[k(name)] == by_floor[k(name)] == float(rms < 1e-4)
        assert late[k(name)] == _collapsed_np(W, np.linalg.norm(W))
    # default-initialised fan-in 12 and 10: RMS x 1e-3 is ~1.6e-4 and ~1.8e-4, above the floor
    assert [late[k(n)] for n in ("0", "2")] == [0.0, 0.0]
    tighter = SymmetryFamily(Every(n_steps=1), activation_ranks=False, collapse=False,
                             weight_collapse_rms=1e-3).run(_ctx(net, (x,))).metrics
    assert [tighter[k(n)] for n in ("0", "2")] == [1.0, 1.0]
    # the first norms survive a state round trip (a resumed run compares with the run's start)
    resumed = SymmetryFamily(Every(n_steps=1), activation_ranks=False, collapse=False)
    resumed.load_state_dict(fam.state_dict())
    assert resumed.first_norm == pytest.approx(first, rel=1e-6)
    assert resumed.run(_ctx(net, (x,))).metrics[k("0")] == 1.0


def test_large_layers_get_a_power_iteration_stable_rank_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 2))
    fam = SymmetryFamily(Every(n_steps=1), max_svd_size=10, activation_ranks=False, collapse=False)
    m = fam.run(_ctx(net, (torch.randn(8, 40),)))
    assert metric_key("symmetry", "0", "effective_rank") not in m.metrics
    s = np.linalg.svd(_np(net[0].weight), compute_uv=False)
    assert m.metrics[metric_key("symmetry", "0", "stable_rank")] == pytest.approx((s ** 2).sum() / s[0] ** 2, rel=1e-4)
    assert m.metrics[metric_key("symmetry", "0", "weight_norm")] == \
        pytest.approx(np.linalg.norm(_np(net[0].weight), "fro"), rel=1e-12)
    assert metric_key("symmetry", "2", "effective_rank") in m.metrics  # (2, 30): small side 2


def test_a_failing_layer_is_reported_and_the_others_still_measured():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    fam = SymmetryFamily(Every(n_steps=1), collapse=False)
    x = torch.rand(10, 4)
    fam.run(_ctx(net, (x,)))  # structure found on finite weights
    with torch.no_grad():
        net[4].weight[0, 0] = float("nan")
    m = fam.run(_ctx(net, (x,)))
    text = [str(e) for e in m.errors]
    assert any(t.startswith("symmetry, layer '2': w_out has 1 NaN or Inf entries") for t in text)
    assert any(t.startswith("symmetry, layer '4': 4.weight has 1 NaN or Inf entries") for t in text)
    assert metric_key("symmetry", "0", "imbalance") in m.metrics
    assert metric_key("symmetry", "2", "effective_rank") in m.metrics
    # NaN activations: the pair after them reports its dead units as an error, keeps the rest
    with torch.no_grad():
        net[4].weight[0, 0] = 0.0
        net[0].weight[0, 0] = float("nan")
    m = fam.run(_ctx(net, (x,)))
    text = [str(e) for e in m.errors]
    assert any(t.startswith("symmetry, layer '0': w_in has 1 NaN") for t in text)
    assert any(t.startswith("symmetry, layer '2': dead units at the input of '4': activation has")
               for t in text)
    assert metric_key("symmetry", "2", "imbalance") in m.metrics


def test_run_leaves_model_rng_and_modes_untouched_and_state_round_trips():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    x, y = torch.rand(30, 5), torch.arange(3).repeat(10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    fam = SymmetryFamily(Every(n_steps=1), max_svd_size=1, seed=3)
    m1 = fam.run(_ctx(net, (x, y), layers=["1"]))
    assert torch.equal(torch.get_rng_state(), rng) and net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    state = fam.state_dict()
    other = SymmetryFamily(Every(n_steps=1), max_svd_size=1, seed=99)
    other.load_state_dict(state)
    assert torch.equal(other.generator.get_state(), fam.generator.get_state())
    assert other.run(_ctx(net, (x, y), layers=["1"])).metrics == fam.run(_ctx(net, (x, y), layers=["1"])).metrics
    assert m1.metrics.keys() == fam.run(_ctx(net, (x, y), layers=["1"])).metrics.keys()
    with pytest.raises(ValueError, match=r"state for family 'symmetry' lacks key 'generator', got \[\]"):
        other.load_state_dict({})


def test_setup_and_errors():
    fam = SymmetryFamily(Every(n_steps=5))
    assert fam.name == "symmetry" and fam.needs_probe and fam.needs_activations
    assert fam.setup(nn.Sequential(nn.Linear(2, 2))) is None
    assert fam.setup(nn.Sequential(nn.ReLU())) == "the model has no Linear, Conv or Conv1D layer"
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"the symmetry family needs ctx.forward to run the probe batch"):
        fam.run(Context(net, 1, (torch.ones(3, 2),), dict, forward=None))


@pytest.mark.parametrize("kw,match", [
    ({"duplicate_threshold": 1.5}, r"duplicate_threshold must be a cosine in \(0, 1\), got 1.5"),
    ({"duplicate_threshold": True}, r"duplicate_threshold must be a cosine in \(0, 1\), got True"),
    ({"max_svd_size": 0}, r"max_svd_size must be a positive int or None, got 0"),
    ({"max_svd_size": 2.0}, r"max_svd_size must be a positive int or None, got 2.0"),
    ({"rankme_eps": -1e-3}, r"rankme_eps must be a finite number >= 0, got -0.001"),
    ({"weight_ranks": 1}, r"weight_ranks must be a bool, got 1"),
    ({"activation_ranks": None}, r"activation_ranks must be a bool, got None"),
    ({"collapse": "yes"}, r"collapse must be a bool, got 'yes'"),
    ({"seed": 1.0}, r"seed must be an int, got 1.0"),
    ({"weight_collapse_fraction": 1.0}, r"weight_collapse_fraction must be a number in \(0, 1\) or None, got 1.0"),
    ({"weight_collapse_fraction": True}, r"weight_collapse_fraction must be a number in \(0, 1\) or None, got True"),
    ({"weight_collapse_rms": 0.0}, r"weight_collapse_rms must be a number > 0 and finite or None, got 0.0"),
    ({"weight_collapse_rms": math.inf}, r"weight_collapse_rms must be a number > 0 and finite or None, got inf"),
])
def test_argument_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        SymmetryFamily(Every(n_steps=1), **kw)
    with pytest.raises(ValueError, match=r"schedule must be an Every, got 5"):
        SymmetryFamily(5)


class _Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("shared_first", [False, True])
def test_hooks_ride_on_the_shared_activation_forward(shared_first):
    """A warm measurement costs one forward: the engine's shared one, with the dead-unit and
    classifier hooks on. When another family already ran it at this step, the family runs its
    own; the numbers are the same either way, and match a hand computation."""
    torch.manual_seed(0)
    net = _Counting(nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).double())
    with torch.no_grad():
        net.net[0].bias[[1, 4, 8]] = -50.0
    x, y = _digits_like()
    fam = SymmetryFamily(Every(n_steps=1))
    first = fam.run(_ctx(net, (x, y), layers=["net.1"]))  # find_pairs: its own forwards
    ctx = _ctx(net, (x, y), layers=["net.1"], step=2)
    if shared_first:
        ctx.activations()
    net.calls = 0
    m = fam.run(ctx)
    # not shared first: the shared forward is the family's only one; shared first: its own
    assert net.calls == 1 and ctx.activations() is ctx.activations() and net.calls == 1
    assert m.errors == [] and m.metrics == first.metrics
    h1 = np.maximum(_np(x) @ _np(net.net[0].weight).T + _np(net.net[0].bias), 0)
    dead = (h1.max(0) == 0).mean()
    assert m.metrics[metric_key("symmetry", "net.0", "dead_fraction")] == pytest.approx(dead) and dead >= 0.3
    assert metric_key("neural_collapse", "net.2", "nc1") in m.metrics


def test_a_failing_shared_forward_falls_back_and_fails_the_rankme_item_only_once_raised():
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    x, y = _digits_like()
    fam = SymmetryFamily(Every(n_steps=1))
    fam.run(_ctx(net, (x, y)))

    def broken():
        raise RuntimeError("capture broke")

    ctx = Context(net, 2, (x, y), broken, forward=lambda m, b: m(b[0]))
    with pytest.raises(RuntimeError, match="capture broke"):
        fam.run(ctx)  # as before: the activations the family reads fail the measurement
    fam2 = SymmetryFamily(Every(n_steps=1), activation_ranks=False)
    m = fam2.run(Context(net, 2, (x, y), broken, forward=lambda m, b: m(b[0])))
    assert m.errors == [] and metric_key("symmetry", "0", "dead_fraction") in m.metrics


def test_the_engine_runs_one_probe_forward_for_symmetry_and_intrinsic_dimension():
    """Due at the same step, ID (asked first) and symmetry share the engine's one activation
    forward: the family whose hooks ride on it runs first. Counted on the model itself."""
    from geomonitor.monitor import Monitor
    from geomonitor.monitor.families import IntrinsicDimensionFamily

    torch.manual_seed(0)
    net = _Counting(nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).double())
    with torch.no_grad():
        net.net[0].bias[[1, 4, 8]] = -50.0
    x, y = _digits_like()
    mon = Monitor(net, probe=(x, y), families=[IntrinsicDimensionFamily(Every(n_steps=1)),
                                              SymmetryFamily(Every(n_steps=1))],
                  layers=["net.1"], max_overhead=None, verbose=False)
    try:
        mon.step(1)  # cold: structure discovery runs forwards of its own
        calls = []
        for s in (2, 3):
            net.calls = 0
            mon.step(s)
            calls.append(net.calls)
        assert calls == [1, 1]
        assert mon.measured == {"id": 3, "symmetry": 3} and mon.errors == {}
    finally:
        mon.close()


class _Sizes(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.sizes = net, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.net(x)


def test_structure_discovery_runs_on_a_few_probe_samples_and_finds_the_same_pairs():
    """The first measurement's find_pairs forwards see ``discovery_size`` samples, not the
    probe set; the pairs are those find_pairs finds on the whole probe set (the reference),
    with a residual-free MLP and one whose second pair a non-homogeneous op breaks."""
    from geomonitor.symmetry import find_pairs

    class Shifted(nn.Module):
        def forward(self, x):
            return torch.relu(x) + 0.5           # not positively homogeneous: breaks net.2 -> net.4

    torch.manual_seed(0)
    for mid in (nn.ReLU(), Shifted()):
        net = _Sizes(nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), mid,
                                   nn.Linear(8, 3)).double())
        x, y = _digits_like(n=120)
        reference = find_pairs(net, lambda: net(x))
        net.sizes.clear()
        fam = SymmetryFamily(Every(n_steps=1))
        m = fam.run(_ctx(net, (x, y), forward=lambda mod, b: mod(b[0])))
        assert m.errors == []
        assert [(p.a, p.b) for p in fam.structure.pairs] == [(p.a, p.b) for p in reference.pairs]
        assert fam.structure.skipped == reference.skipped
        full = [s for s in net.sizes if s == 120]
        assert len(full) == 1 and all(s == SymmetryFamily.discovery_size for s in net.sizes if s != 120)
        assert len(net.sizes) >= 3  # the discovery's base and scaled forwards, then the measurement's
    assert len(reference.pairs) == 1  # the shifted net keeps net.0 -> net.2 only
