"""layers="auto", reduce="auto" and the capture on the models users bring: nn.TransformerEncoder,
a tiny Hugging Face GPT-2 (built from a config, nothing downloaded) and a ResNet-style network
with BatchNorm and residual blocks. Selections are checked against the names written out by
hand, activations against the blocks called directly (or HF's own hidden states), neural
persistence against a Kruskal maximum spanning forest written here."""
from __future__ import annotations

import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor._modules import feature_layout, hf_conv1d_type, is_linear_like, weight_matrix
from geomonitor.monitor.layers import (LayerCaptureWarning, LayerSelector, capture_activations,
                                       reduce_output)
from geomonitor.topology import neural_persistence_network


# -- models -----------------------------------------------------------------------------------
class Encoder(nn.Module):
    def __init__(self, n_layers: int = 2, d: int = 16):
        super().__init__()
        self.embed = nn.Embedding(20, d)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 2, dim_feedforward=32, batch_first=True), n_layers,
            enable_nested_tensor=False)
        self.head = nn.Linear(d, 5)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


class Basic(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv-BN, identity or 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)  # depthwise: skipped by NP
        self.layer1 = nn.Sequential(Basic(8, 8), Basic(8, 8))
        self.layer2 = nn.Sequential(Basic(8, 16, 2), Basic(16, 16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.dw(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean((2, 3)))


def _trained_bn(net, x):
    """A few train-mode forwards so the BatchNorm running statistics are not the identity."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x)
    return net


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)  # test-side seeding of the weights only
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _ids(b=6, t=8, vocab=20, seed=0):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


# -- auto selection ---------------------------------------------------------------------------
def test_auto_transformer_encoder_blocks_and_head():
    assert list(LayerSelector("auto").resolve(Encoder())) == [
        "encoder.layers.0", "encoder.layers.1", "head"]
    bare = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                 enable_nested_tensor=False)
    # the last weight layer (layers.1.linear2) is inside a block: no head
    assert list(LayerSelector("auto").resolve(bare)) == ["layers.0", "layers.1"]
    deep = Encoder(n_layers=6)  # 6 blocks + head, 3 kept: first, middle, last
    assert list(LayerSelector("auto", max_auto=3).resolve(deep)) == [
        "encoder.layers.0", "encoder.layers.3", "head"]


def test_auto_gpt2_blocks_and_lm_head():
    assert list(LayerSelector("auto").resolve(_gpt2())) == [
        "transformer.h.0", "transformer.h.1", "lm_head"]


def test_auto_resnet_blocks_and_fc():
    assert list(LayerSelector("auto").resolve(ResNetish())) == [
        "layer1.0", "layer1.1", "layer2.0", "layer2.1", "fc"]


def test_auto_nested_repeats_take_the_outermost_level():
    stages = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(Basic(8, 8), Basic(8, 8)),
                           nn.Sequential(Basic(8, 8), Basic(8, 8)), nn.Flatten(), nn.LazyLinear(2))
    assert list(LayerSelector("auto").resolve(stages)) == ["1", "2", "4"]
    mlp_blocks = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
                               nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    assert list(LayerSelector("auto").resolve(mlp_blocks)) == ["0", "1", "2"]
    # the repeated blocks of two separate containers, in registration order
    two = nn.Transformer(16, 2, 2, 2, 32, batch_first=True)
    assert list(LayerSelector("auto").resolve(two)) == [
        "encoder.layers.0", "encoder.layers.1", "decoder.layers.0", "decoder.layers.1"]
    # one block is not a repetition: searched further, and nothing repeats inside it
    one = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), nn.Flatten(), nn.LazyLinear(2))
    assert list(LayerSelector("auto").resolve(one)) == ["0.0", "2"]


def test_auto_without_repeated_blocks_keeps_the_leaf_layers():
    class QuickstartMLP(nn.Module):  # recipes/quickstart.py's model
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    assert list(LayerSelector("auto").resolve(QuickstartMLP())) == ["fc1", "fc2", "fc3"]
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert list(LayerSelector("auto").resolve(plain)) == ["0", "2", "4"]


def test_auto_leaf_fallback_includes_hf_conv1d():
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D
    net = nn.Sequential(OrderedDict(a=Conv1D(8, 4), act=nn.ReLU(), b=nn.Linear(8, 2)))
    assert list(LayerSelector("auto").resolve(net)) == ["a", "b"]


def test_describe_states_rule_names_and_classes():
    sel = LayerSelector("auto")
    picked = sel.resolve(ResNetish())
    assert sel.describe(picked) == (
        "layers='auto' -> 5 modules (repeated blocks + head): layer1.0, layer1.1, layer2.0, "
        "layer2.1 (Basic); fc (Linear, head); reduce='auto' (mean over positions/tokens)")
    sel = LayerSelector("auto", max_auto=None)
    picked = sel.resolve(nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)]))
    assert sel.describe(picked) == (
        "layers='auto' -> 8 modules (leaf Linear/Conv layers: no repeated blocks): 0, 1, 2, ..., "
        "6, 7 (Linear); reduce='auto' (mean over positions/tokens)")
    sel = LayerSelector(["head", "encoder.layers.1"], reduce="last")
    assert sel.describe(sel.resolve(Encoder())) == (
        "layers=['head', 'encoder.layers.1'] -> 2 modules: encoder.layers.1 "
        "(TransformerEncoderLayer); head (Linear); reduce='last' (last token/position)")


# -- capture on the blocks ----------------------------------------------------------------------
def _no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerCaptureWarning)
        return fn()


def test_capture_transformer_encoder_blocks_against_direct_calls():
    torch.manual_seed(0)
    net = Encoder().train()
    ids = _ids()
    mods = LayerSelector("auto").resolve(net)
    acts = _no_warnings(lambda: capture_activations(net, mods, lambda: net(ids)))
    net.eval()
    with torch.no_grad():
        h0 = net.encoder.layers[0](net.embed(ids))
        h1 = net.encoder.layers[1](h0)
        logits = net.head(h1.mean(1))
    assert list(acts) == ["encoder.layers.0", "encoder.layers.1", "head"]
    torch.testing.assert_close(acts["encoder.layers.0"], h0.mean(1))  # mean over tokens
    torch.testing.assert_close(acts["encoder.layers.1"], h1.mean(1))
    torch.testing.assert_close(acts["head"], logits)


def test_a_module_that_does_not_run_is_dropped_with_one_warning():
    torch.manual_seed(0)
    net = Encoder()
    ids = _ids()
    sel = LayerSelector("encoder.layers.0.*")
    mods = sel.resolve(net)
    for _ in range(2):  # the selector's `warned` set: one warning per module, not per capture
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            acts = capture_activations(net, mods, lambda: net(ids), warned=sel.warned)
        msgs = [str(w.message) for w in caught if issubclass(w.category, LayerCaptureWarning)]
        if _ == 0:
            assert msgs == ["module 'encoder.layers.0.self_attn.out_proj' "
                            "(NonDynamicallyQuantizableLinear) did not run during the forward and is "
                            "left out of the activations (its weights may be used functionally, as "
                            "nn.MultiheadAttention.out_proj's)"]
        else:
            assert msgs == []
        assert list(acts) == [n for n in mods if n != "encoder.layers.0.self_attn.out_proj"]
    assert sel.warned == {"encoder.layers.0.self_attn.out_proj"}
    # the MHA module itself runs: its output (attention output, weights) -> the first tensor
    with torch.no_grad():
        net.eval()
        x = net.embed(ids)
        att, _w = net.encoder.layers[0].self_attn(x, x, x)
    torch.testing.assert_close(acts["encoder.layers.0.self_attn"], att.mean(1))
    # nothing selected runs: the error of a glob that matches only such modules
    only = LayerSelector("*.out_proj").resolve(net)
    with pytest.raises(ValueError, match=r"none of the selected modules encoder\.layers\.0\.self_attn"
                                         r"\.out_proj, encoder\.layers\.1\.self_attn\.out_proj ran"):
        capture_activations(net, only, lambda: net(ids))
    assert all(not m._forward_hooks for m in net.modules())


def test_capture_gpt2_blocks_against_hf_hidden_states():
    net = _gpt2()
    ids = _ids(vocab=50)
    mods = LayerSelector("auto").resolve(net)
    acts = _no_warnings(lambda: capture_activations(net, mods, lambda: net(input_ids=ids)))
    net.eval()
    with torch.no_grad():
        out = net(input_ids=ids, output_hidden_states=True)
    # hidden_states[1] is block 0's output; the last entry has ln_f applied, so block 1's
    # output is checked through ln_f
    torch.testing.assert_close(acts["transformer.h.0"], out.hidden_states[1].mean(1))
    h1 = capture_activations(net, mods, lambda: net(input_ids=ids), reduce="flatten")["transformer.h.1"]
    torch.testing.assert_close(net.transformer.ln_f(h1.reshape(6, 8, 32)).detach(),
                               out.hidden_states[2])
    torch.testing.assert_close(acts["lm_head"], out.logits.mean(1))
    assert acts["lm_head"].shape == (6, 50)


def test_capture_gpt2_submodule_glob_warns_for_what_does_not_run():
    net = _gpt2()
    ids = _ids(vocab=50)
    mods = LayerSelector("transformer.h.0.attn.*").resolve(net)
    ran: set[str] = set()
    handles = [m.register_forward_hook(lambda *_a, n=n: ran.add(n)) for n, m in mods.items()]
    with torch.no_grad():
        net.eval()(input_ids=ids)
    for h in handles:
        h.remove()
    missing = [n for n in mods if n not in ran]  # which ones HF's attention calls, seen directly
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acts = capture_activations(net, mods, lambda: net(input_ids=ids))
    assert sorted(acts) == sorted(ran)
    assert sorted(str(w.message).split("'")[1] for w in caught
                  if issubclass(w.category, LayerCaptureWarning)) == sorted(missing)
    # Conv1D maps the last dim: c_attn [B, T, 96] -> mean over tokens (B, 96)
    assert acts["transformer.h.0.attn.c_attn"].shape == (6, 96)


def test_capture_resnet_blocks_spatial_mean_against_direct_calls():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    net = _trained_bn(ResNetish(), x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mods = LayerSelector("auto").resolve(net)
    acts = _no_warnings(lambda: capture_activations(net, mods, lambda: net(x)))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats untouched
    net.eval()
    with torch.no_grad():
        h = net.dw(torch.relu(net.bn1(net.conv1(x))))
        ref = {}
        for name in ("layer1.0", "layer1.1", "layer2.0", "layer2.1"):
            h = net.get_submodule(name)(h)
            ref[name] = h.sum((2, 3)) / (h.shape[2] * h.shape[3])  # per-channel global average
        ref["fc"] = net.fc(h.mean((2, 3)))
    assert {n: tuple(a.shape) for n, a in acts.items()} == {
        "layer1.0": (4, 8), "layer1.1": (4, 8), "layer2.0": (4, 16), "layer2.1": (4, 16), "fc": (4, 10)}
    for n in ref:
        torch.testing.assert_close(acts[n], ref[n])


def test_large_conv_map_becomes_batch_by_channels():
    """256 x 512x7x7 under reduce='auto': the ID and topology inputs are (256, 512), a tensor
    of its own (not a view into the 25.7 MB map)."""
    from geomonitor.intrinsic import twonn

    g = torch.Generator().manual_seed(0)
    block = nn.Sequential(nn.Conv2d(8, 512, 1), nn.ReLU())
    x = torch.randn(256, 8, 7, 7, generator=g)
    acts = capture_activations(block, {"block": block}, lambda: block(x))
    a = acts["block"]
    assert a.shape == (256, 512) and a.dtype == torch.float32
    assert a.untyped_storage().nbytes() == 256 * 512 * 4
    with torch.no_grad():
        ref = block(x).double().mean((2, 3))
    torch.testing.assert_close(a.double(), ref, rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(twonn(a)))  # the ID input; topology takes the same (256, 512)


# -- reduce="auto" per output kind --------------------------------------------------------------
def test_reduce_auto_per_layout_against_direct_means():
    g = torch.Generator().manual_seed(0)
    tokens, chw, hwc = (torch.randn(5, 7, 3, generator=g), torch.randn(5, 4, 6, 2, generator=g),
                        torch.randn(5, 6, 2, 4, generator=g))
    for r in ("auto", "mean"):
        torch.testing.assert_close(reduce_output(tokens, r), tokens.sum(1) / 7)
        torch.testing.assert_close(reduce_output(tokens, r, channels_first=True), tokens.sum(2) / 3)
        torch.testing.assert_close(reduce_output(chw, r), chw.sum((2, 3)) / 12)
        torch.testing.assert_close(reduce_output(hwc, r, channels_first=False), hwc.sum((1, 2)) / 12)
    with pytest.raises(ValueError, match=r"reduce='last' is defined for \[B, T, D\] .* got shape "
                                         r"\(5, 6, 2, 4\); use 'auto', 'mean' or 'flatten'"):
        reduce_output(hwc, "last", channels_first=False)
    half = chw.half()
    out = reduce_output(half, "auto")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), half.double().mean((2, 3)), rtol=1e-6, atol=1e-6)
    assert reduce_output(chw.double(), "auto").dtype == torch.float64


def test_feature_layout_and_a_linear_on_a_map_is_channels_last():
    assert feature_layout(nn.Conv2d(2, 3, 1)) is True and feature_layout(nn.Linear(2, 3)) is False
    assert feature_layout(Basic(4, 4)) is True
    assert feature_layout(nn.TransformerEncoderLayer(8, 2, 16)) is False
    assert feature_layout(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Linear(2, 2))) is None
    assert feature_layout(nn.ReLU()) is None
    lin = nn.Linear(3, 5)
    x = torch.randn(2, 4, 6, 3, generator=torch.Generator().manual_seed(0))  # [B, H, W, C]
    acts = capture_activations(lin, {"lin": lin}, lambda: lin(x))
    with torch.no_grad():
        torch.testing.assert_close(acts["lin"], lin(x).mean((1, 2)))


# -- linear-like layers and neural persistence --------------------------------------------------
def test_weight_matrix_is_out_by_in_against_the_forward():
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g)
    c1d, lin = Conv1D(6, 4), nn.Linear(4, 6)
    for m in (c1d, lin):
        nn.init.normal_(m.bias)
        W = weight_matrix(m)
        assert W.shape == (6, 4)
        with torch.no_grad():
            torch.testing.assert_close(x @ W.T + m.bias, m(x))
    tconv = nn.ConvTranspose2d(3, 5, 2)
    assert weight_matrix(tconv).shape == (5, 3, 2, 2) and weight_matrix(nn.Conv1d(3, 5, 2)).shape == (5, 3, 2)
    with pytest.raises(TypeError, match=r"module must be a Linear, Hugging Face Conv1D or Conv layer, "
                                        r"got LayerNorm"):
        weight_matrix(nn.LayerNorm(3))


def test_conv1d_recognised_only_once_transformers_is_imported(monkeypatch):
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D
    assert hf_conv1d_type() is Conv1D and is_linear_like(Conv1D(2, 2))
    monkeypatch.delitem(sys.modules, "transformers.pytorch_utils")
    assert hf_conv1d_type() is None and not is_linear_like(Conv1D(2, 2))
    # nothing in the selection or neural persistence imports transformers: with the package
    # made unimportable, reloading and running them works
    import importlib

    import geomonitor._modules as gm

    monkeypatch.setitem(sys.modules, "transformers", None)
    importlib.reload(gm)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    assert list(LayerSelector("auto").resolve(net)) == ["0", "2"]
    assert list(neural_persistence_network(net).per_layer) == ["0", "2"]


def _kruskal_value(mats, w_max, p=2.0):
    """Rieck et al. 2019 per layer: edges by decreasing |w|/w_max, union-find; (sum pers^p)^(1/p)
    over the |V|-1 tree edges, divided by (|V|-1)^(1/p)."""
    out = []
    for M in mats:
        A = np.abs(M) / w_max
        a, b = A.shape
        parent = np.arange(a + b)

        def find(u):
            while parent[u] != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u

        pers = []
        for e in np.argsort(-A, axis=None, kind="stable"):
            i, j = divmod(int(e), b)
            ri, rj = find(i), find(a + j)
            if ri != rj:
                parent[ri] = rj
                pers.append(1.0 - A[i, j])
        assert len(pers) == a + b - 1
        out.append(float((np.array(pers) ** p).sum() ** (1 / p) / (a + b - 1) ** (1 / p)))
    return out


def _kernel_max(k):
    """(out, in) matrix of the largest |w| over the kernel positions, by explicit loops."""
    k = k.detach().double().numpy()
    M = np.zeros(k.shape[:2])
    for o in range(k.shape[0]):
        for i in range(k.shape[1]):
            M[o, i] = np.abs(k[o, i]).max()
    return M


def test_neural_persistence_gpt2_counts_conv1d_and_lm_head():
    net = _gpt2()
    res = neural_persistence_network(net)
    names = [f"transformer.h.{i}.{s}" for i in (0, 1)
             for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")] + ["lm_head"]
    assert list(res.per_layer) == names and res.skipped == ()
    # Conv1D stores (in, out): the (out, in) matrix is its transpose; lm_head is tied to wte
    mats = [net.get_submodule(n).weight.detach().double().numpy() for n in names]
    mats = [m.T if n != "lm_head" else m for n, m in zip(names, mats)]
    assert mats[0].shape == (96, 32) and mats[-1].shape == (50, 32)
    w_max = max(float(np.abs(m).max()) for m in mats)
    ref = _kruskal_value(mats, w_max)
    np.testing.assert_allclose([res.per_layer[n] for n in names], ref, rtol=1e-10)
    assert res.mean == pytest.approx(np.mean(ref), rel=1e-10)


def test_neural_persistence_resnet_and_encoder_layers():
    torch.manual_seed(0)
    net = ResNetish()
    res = neural_persistence_network(net)
    convs = ["conv1"] + [f"{b}.{c}" for b in ("layer1.0", "layer1.1", "layer2.0", "layer2.1")
                         for c in ("conv1", "conv2")]
    convs.insert(7, "layer2.0.downsample.0")  # registered after the block's conv2
    assert list(res.per_layer) == convs + ["fc"] and res.skipped == ("dw",)
    mats = [_kernel_max(net.get_submodule(n).weight) for n in convs]
    mats.append(net.fc.weight.detach().double().numpy())
    ref = _kruskal_value(mats, max(float(np.abs(m).max()) for m in mats))
    np.testing.assert_allclose(list(res.per_layer.values()), ref, rtol=1e-10)

    enc = Encoder()
    res = neural_persistence_network(enc)
    assert list(res.per_layer) == [f"encoder.layers.{i}.{s}" for i in (0, 1)
                                   for s in ("self_attn.out_proj", "linear1", "linear2")] + ["head"]
