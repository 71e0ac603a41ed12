"""LayerSelector, reduce_output and capture_activations: selections against named_modules(),
reductions against direct tensor arithmetic, activations against manual forwards, and the
side-effect guarantees (modes, hooks, BatchNorm statistics, RNG) checked bitwise."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor.monitor.layers import LayerSelector, capture_activations, reduce_output


def _mlp():
    torch.manual_seed(0)  # test-side seeding of the weights only
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(4, 8), bn=nn.BatchNorm1d(8), act=nn.ReLU(), drop=nn.Dropout(0.5),
        fc2=nn.Linear(8, 6), head=nn.Sequential(nn.Linear(6, 3), nn.Tanh())))


# -- selection ------------------------------------------------------------------------------
def test_resolve_exact_glob_and_order():
    net = _mlp()
    assert list(LayerSelector("fc2").resolve(net)) == ["fc2"]
    assert list(LayerSelector(["head.0", "fc1"]).resolve(net)) == ["fc1", "head.0"]  # module order
    assert list(LayerSelector("fc?").resolve(net)) == ["fc1", "fc2"]
    assert list(LayerSelector(["head*", "head.0"]).resolve(net)) == ["head", "head.0", "head.1"]
    picked = LayerSelector("*").resolve(net)
    assert list(picked) == [n for n, _ in net.named_modules() if n]  # root excluded
    assert picked["fc1"] is net.fc1


def test_auto_selects_leaf_linear_and_conv():
    net = _mlp()
    assert list(LayerSelector("auto").resolve(net)) == ["fc1", "fc2", "head.0"]
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv1d(2, 2, 1), nn.ConvTranspose2d(2, 2, 1),
                        nn.Flatten(), nn.Linear(4, 2))
    assert list(LayerSelector("auto").resolve(cnn)) == ["0", "2", "3", "5"]


@pytest.mark.parametrize("n, k", [(20, 4), (10, 3), (5, 5), (9, 2)])
def test_auto_caps_evenly_spaced(n, k):
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(n)])
    expected = sorted({int(v) for v in np.round(np.linspace(0, n - 1, k))}) if k < n else list(range(n))
    assert [int(s) for s in LayerSelector("auto", max_auto=k).resolve(net)] == expected
    assert list(LayerSelector("auto", max_auto=1).resolve(net)) == [str(n - 1)]
    assert len(LayerSelector("auto", max_auto=None).resolve(net)) == n


def test_resolve_errors_list_available_names():
    net = _mlp()
    with pytest.raises(ValueError, match=r"pattern 'encoder\.\*' matches no module of Sequential; "
                                         r"available: \[fc1, bn, act, drop, fc2, head, head\.0, head\.1\]"):
        LayerSelector(["fc1", "encoder.*"]).resolve(net)
    with pytest.raises(ValueError, match=r"'auto' \(repeated blocks, head, or leaf Linear/Conv modules\) matches no module .* "
                                         r"available: \[0, 1\]"):
        LayerSelector().resolve(nn.Sequential(nn.ReLU(), nn.Tanh()))
    many = nn.Sequential(*[nn.ReLU() for _ in range(70)])
    with pytest.raises(ValueError, match=r"available: \[0, 1, .*, 59, \.\.\. \(10 more\)\]"):
        LayerSelector("fc").resolve(many)


@pytest.mark.parametrize("kwargs, match", [
    (dict(patterns=""), r"patterns must be 'auto', a module name/glob .* got \[''\]"),
    (dict(patterns=[]), r"patterns must be .* got \[\]"),
    (dict(patterns=["fc1", 3]), r"patterns must be .* got \['fc1', 3\]"),
    (dict(patterns=None), r"patterns must be .* got None"),
    (dict(reduce="median"), r"reduce must be one of \('auto', 'flatten', 'mean', 'last'\), got 'median'"),
    (dict(max_auto=0), r"max_auto must be a positive int or None, got 0"),
])
def test_selector_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerSelector(**kwargs)


# -- reduction ------------------------------------------------------------------------------
def test_reduce_shapes_against_direct_arithmetic():
    g = torch.Generator().manual_seed(0)
    seq, img, vec = torch.randn(5, 7, 3, generator=g), torch.randn(5, 4, 6, 2, generator=g), torch.randn(5, 9, generator=g)
    assert torch.equal(reduce_output(seq, "flatten"), seq.reshape(5, 21))
    assert torch.allclose(reduce_output(seq, "mean"), seq.sum(1) / 7)
    assert torch.equal(reduce_output(seq, "last"), seq[:, 6, :])
    assert torch.equal(reduce_output(img, "flatten"), img.reshape(5, 48))
    assert torch.allclose(reduce_output(img, "mean"), img.sum((2, 3)) / 12)
    for r in ("flatten", "mean", "last"):
        assert torch.equal(reduce_output(vec, r), vec)
        assert reduce_output(torch.arange(5.0), r).shape == (5, 1)
    conv1d = torch.randn(5, 4, 10, generator=g)  # [B, C, L]
    assert torch.allclose(reduce_output(conv1d, "mean", channels_first=True), conv1d.sum(2) / 10)
    assert torch.equal(reduce_output(conv1d, "last", channels_first=True), conv1d[:, :, 9])
    vol = torch.randn(2, 3, 2, 2, 2, generator=g)
    assert torch.allclose(reduce_output(vol, "mean"), vol.sum((2, 3, 4)) / 8)


class _FakeModelOutput(OrderedDict):
    """Imitates transformers' ModelOutput: an OrderedDict whose fields are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def test_reduce_unwraps_containers():
    a, b = torch.randn(3, 4, 2), torch.randn(3, 5)
    assert torch.equal(reduce_output((a, (b,)), "last"), a[:, -1])
    assert torch.equal(reduce_output([None, "x", (b, a)], "flatten"), b)
    assert torch.equal(reduce_output({"logits": b, "last_hidden_state": a}, "mean"), a.mean(1))
    assert torch.equal(reduce_output({"loss": None, "logits": b}, "flatten"), b)
    out = _FakeModelOutput(logits=b, last_hidden_state=a)
    assert out.logits is b
    assert torch.equal(reduce_output(out, "last"), a[:, -1])
    assert torch.equal(reduce_output(_FakeModelOutput(pooler_output=b), "flatten"), b)


def test_reduce_dtypes_and_detach():
    w = torch.ones(2, 3, requires_grad=True)
    out = reduce_output(w * 2, "flatten")
    assert not out.requires_grad and out.dtype == torch.float32
    assert reduce_output(torch.ones(2, 3, dtype=torch.float16), "mean").dtype == torch.float32
    assert reduce_output(torch.ones(2, 3, dtype=torch.bfloat16), "mean").dtype == torch.float32
    assert reduce_output(torch.ones(2, 3, dtype=torch.float64), "mean").dtype == torch.float64
    assert torch.equal(reduce_output(torch.arange(6).reshape(2, 3), "flatten"),
                       torch.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("output, reduce, match", [
    (torch.ones(2, 3), "max", r"reduce must be one of \('auto', 'flatten', 'mean', 'last'\), got 'max'"),
    ((None, "a"), "mean", r"output must contain a tensor .* got tuple"),
    ({"x": 1}, "mean", r"output must contain a tensor .* got dict"),
    (torch.tensor(1.0), "mean", r"output must have a batch dimension, got a 0-d tensor"),
    (torch.ones(2, 3, dtype=torch.complex64), "mean", r"output must be real, got dtype torch.complex64"),
    (torch.ones(2, 3, 4, 4), "last", r"reduce='last' is defined for \[B, T, D\] .* got shape \(2, 3, 4, 4\)"),
])
def test_reduce_errors(output, reduce, match):
    with pytest.raises(ValueError, match=match):
        reduce_output(output, reduce)


# -- capture --------------------------------------------------------------------------------
def _snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_capture_matches_a_manual_eval_forward_and_touches_nothing():
    net = _mlp()
    net.train()
    net.head.eval()  # mixed modes must survive exactly
    modes = {n: m.training for n, m in net.named_modules()}
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    before, rng = _snapshot(net), torch.get_rng_state()
    mods = LayerSelector(["fc1", "fc2", "head.0"]).resolve(net)
    acts = capture_activations(net, mods, lambda: net(x))
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)
    after = _snapshot(net)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats, counters
    assert all(not m._forward_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    # independent reference: the layers applied by hand in eval mode
    with torch.no_grad():
        h1 = net.fc1(x)
        bn = (h1 - net.bn.running_mean) / torch.sqrt(net.bn.running_var + net.bn.eps) * net.bn.weight + net.bn.bias
        h2 = net.fc2(torch.relu(bn))
        h3 = net.head[0](h2)
    assert list(acts) == ["fc1", "fc2", "head.0"]
    assert torch.allclose(acts["fc1"], h1) and torch.allclose(acts["fc2"], h2, atol=1e-6)
    assert torch.allclose(acts["head.0"], h3, atol=1e-6)
    assert all(a.dtype == torch.float32 and not a.requires_grad for a in acts.values())


def test_capture_runs_without_grad_and_restores_rng_even_if_forward_samples():
    net = nn.Linear(3, 3)
    seen = {}

    def forward():
        seen["grad"] = torch.is_grad_enabled()
        torch.rand(4)  # a model that samples in eval mode
        return net(torch.ones(2, 3))

    rng = torch.get_rng_state()
    capture_activations(net, {"fc": net}, forward)
    assert seen["grad"] is False and torch.equal(torch.get_rng_state(), rng)


def test_capture_cleans_up_when_the_forward_raises():
    net = _mlp().train()
    before = _snapshot(net)

    def forward():
        net(torch.randn(4, 4))  # runs (BN in eval: stats must not move), then fails
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture_activations(net, {"fc1": net.fc1, "bn": net.bn}, forward)
    assert all(m.training for m in net.modules())
    assert all(not m._forward_hooks for m in net.modules())
    after = _snapshot(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_capture_sequence_conv_and_reductions():
    class _Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.proj = nn.Linear(4, 5)
            self.conv = nn.Conv1d(5, 2, 1)

        def forward(self, ids):
            h = self.proj(self.embed(ids))  # [B, T, 5]
            return _FakeModelOutput(last_hidden_state=h, conv=self.conv(h.transpose(1, 2)))

    net = _Tok()
    ids = torch.randint(0, 10, (3, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = net.proj(net.embed(ids))
        c = net.conv(h.transpose(1, 2))  # [B, 2, T]
    mean = capture_activations(net, {"proj": net.proj, "conv": net.conv}, lambda: net(ids), reduce="mean")
    assert torch.allclose(mean["proj"], h.mean(1)) and torch.allclose(mean["conv"], c.mean(2))
    last = capture_activations(net, {"proj": net.proj, "conv": net.conv}, lambda: net(ids), reduce="last")
    assert torch.equal(last["proj"], h[:, -1]) and torch.equal(last["conv"], c[:, :, -1])
    flat = capture_activations(net, {"proj": net.proj}, lambda: net(ids), reduce="flatten")
    assert flat["proj"].shape == (3, 30)
    auto = capture_activations(net, {"proj": net.proj, "conv": net.conv}, lambda: net(ids))
    assert torch.allclose(auto["proj"], h.mean(1)) and torch.allclose(auto["conv"], c.mean(2))


def test_capture_keeps_the_last_call_of_a_shared_module():
    cell = nn.Linear(2, 2)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    acts = capture_activations(cell, {"cell": cell}, lambda: cell(cell(x)))
    with torch.no_grad():
        assert torch.equal(acts["cell"], cell(cell(x)))


def test_capture_on_the_models_device():
    net = nn.Sequential(nn.Linear(3, 4)).to("meta")
    acts = capture_activations(net, {"0": net[0]}, lambda: net(torch.ones(2, 3, device="meta")))
    assert acts["0"].device.type == "meta" and acts["0"].shape == (2, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_capture_on_cuda_keeps_cuda_rng():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout()).cuda().train()
    rng = torch.cuda.get_rng_state()
    acts = capture_activations(net, {"0": net[0]}, lambda: net(torch.ones(2, 3, device="cuda")))
    assert acts["0"].is_cuda and torch.equal(torch.cuda.get_rng_state(), rng)


def test_capture_errors():
    net = _mlp()
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"none of the selected modules head.0, fc2 ran during the "
                                         r"forward; select modules the forward calls"):
        capture_activations(net, {"head.0": net.head[0], "fc2": net.fc2}, lambda: net.fc1(x))
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError, match=r"modules must be a non-empty dict of name -> nn.Module, got \{\}"):
        capture_activations(net, {}, lambda: net(x))
    with pytest.raises(ValueError, match=r"modules must be a non-empty dict .* got \{'fc1': 3\}"):
        capture_activations(net, {"fc1": 3}, lambda: net(x))
    with pytest.raises(ValueError, match=r"reduce must be one of .* got 'sum'"):
        capture_activations(net, {"fc1": net.fc1}, lambda: net(x), reduce="sum")
