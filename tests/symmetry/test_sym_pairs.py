"""find_pairs on an MLP, a residual MLP, a plain CNN with a flatten, a ResNet-style CNN with
BatchNorm, nn.TransformerEncoder and a tiny GPT-2: which pairs are found, which are skipped and
why, and that the model, its modes, its hooks and the RNG streams are left as they were. The
pairs found are checked by rescaling the real weights: the outputs must not change."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from geomonitor.symmetry import find_pairs, input_weight, is_linear_like, output_weight


def _rescale_pair_weights(model, pair, seed=0):
    """Scale unit j of pair.a (rows and bias) by s_j and b's inputs from j by 1/s_j, in place."""
    mods = dict(model.named_modules())
    a, b = mods[pair.a], mods[pair.b]
    units = output_weight(a)[0].shape[0]
    s = torch.rand(units, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3 + 0.2
    with torch.no_grad():
        shape = [units] + [1] * (a.weight.dim() - 1)
        a.weight.mul_(s.to(a.weight.dtype).reshape(shape))
        if a.bias is not None:
            a.bias.mul_(s.to(a.bias.dtype))
        w = input_weight(b, units)  # a view of b.weight with the units on dim 1
        w.div_(s.to(w.dtype).reshape([1, units] + [1] * (w.dim() - 2)))


def _check_pairs_are_symmetries(model, run):
    """The independent check: change the actual weights and compare outputs (float64)."""
    st = find_pairs(model, run)
    model.eval()
    with torch.no_grad():
        y0 = run()
    for i, p in enumerate(st.pairs):
        _rescale_pair_weights(model, p, seed=i)
    with torch.no_grad():
        y1 = run()
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-9)
    return st


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(6, 12), nn.Linear(12, 6), nn.Linear(6, 8), nn.Linear(8, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        h = x + self.fc2(torch.relu(self.fc1(x)))   # residual around fc1 -> fc2
        return self.head(self.act(self.fc3(h)))


def test_mlp_and_residual_mlp():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 8), nn.LeakyReLU(0.1),
                        nn.Linear(8, 3)).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    st = _check_pairs_are_symmetries(mlp, lambda: mlp(x))
    assert [(p.a, p.b, p.between) for p in st.pairs] == [("0", "3", ("ReLU", "Dropout")),
                                                         ("3", "5", ("LeakyReLU",))]
    assert st.skipped == {} and st.layers == ["0", "3", "5"] and st.last == "5"

    res = ResidualMLP().double()
    x = torch.randn(20, 6, dtype=torch.float64)
    st = _check_pairs_are_symmetries(res, lambda: res(x))
    # fc1 -> fc2 (functional relu) is symmetric; fc2's output is added to x, so fc2 -> fc3 is not
    assert [(p.a, p.b) for p in st.pairs] == [("fc1", "fc2"), ("fc3", "head")]
    assert st.skipped["fc2 -> fc3"].startswith("rescaling the units changes the output (a residual")


def test_cnn_with_flatten_pairs_channels_with_the_linear_head():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 2 * 2, 5)).double()
    x = torch.randn(7, 3, 9, 9, dtype=torch.float64)
    st = _check_pairs_are_symmetries(net, lambda: net(x))
    assert [(p.a, p.b, p.spread) for p in st.pairs] == [("0", "3", 1), ("3", "6", 4)]
    assert input_weight(net[6], 6).shape == (5, 6, 4)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.block1, self.block2 = Block(8), Block(8)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

    def forward(self, x):
        h = self.block2(self.block1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(self.pool(h).flatten(1))


def test_resnet_with_batchnorm_has_no_pair_and_says_why():
    torch.manual_seed(0)
    net = TinyResNet()
    net.train()
    st = find_pairs(net, lambda: net(torch.randn(4, 3, 8, 8)))
    assert st.pairs == []
    assert st.skipped == {
        "stem -> block1.conv1": "normalisation (BatchNorm2d) in between",
        "block1.conv1 -> block1.conv2": "normalisation (BatchNorm2d) in between",
        "block1.conv2 -> block2.conv1": "normalisation (BatchNorm2d) in between",
        "block2.conv1 -> block2.conv2": "normalisation (BatchNorm2d) in between",
        "block2.conv2 -> fc": "normalisation (BatchNorm2d) in between",
    }
    assert st.last == "fc" and net.training and net.bn.training  # modes restored


def test_transformer_encoder_relu_pairs_found_gelu_pairs_skipped():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    relu = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 2, enable_nested_tensor=False).double()
    st = _check_pairs_are_symmetries(relu, lambda: relu(x))
    assert [(p.a, p.b) for p in st.pairs] == [("layers.0.linear1", "layers.0.linear2"),
                                              ("layers.1.linear1", "layers.1.linear2")]
    assert st.skipped == {"layers.0.linear2 -> layers.1.linear1": "normalisation (LayerNorm, LayerNorm) in between"}
    gelu = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, activation="gelu"), 2,
                                 enable_nested_tensor=False).double()
    st = find_pairs(gelu, lambda: gelu(x))
    assert st.pairs == []  # F.gelu is no module: the verification forward catches it
    assert st.skipped["layers.0.linear1 -> layers.0.linear2"].startswith("rescaling the units changes")


def test_gpt2_every_pair_skipped_with_its_reason():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 50, (4, 10), generator=torch.Generator().manual_seed(0))
    st = find_pairs(model, lambda: model(ids))
    c = model.transformer.h[0].mlp.c_fc
    assert is_linear_like(c) and output_weight(c)[0].shape == (4 * 32, 32)  # Conv1D stored (in, out)
    assert st.pairs == [] and st.last == "lm_head" and len(st.layers) == 9
    h = "transformer.h.{}."
    want = {}
    for i in range(2):
        p = h.format(i)
        want[f"{p}attn.c_attn -> {p}attn.c_proj"] = f"{p}attn.c_attn has 96 output units, {p}attn.c_proj takes 32 inputs"
        want[f"{p}attn.c_proj -> {p}mlp.c_fc"] = "normalisation (LayerNorm) in between"
        want[f"{p}mlp.c_fc -> {p}mlp.c_proj"] = "non-homogeneous module (NewGELUActivation) in between"
    want["transformer.h.0.mlp.c_proj -> transformer.h.1.attn.c_attn"] = "normalisation (LayerNorm) in between"
    want["transformer.h.1.mlp.c_proj -> lm_head"] = "normalisation (LayerNorm) in between"
    assert st.skipped == want


def test_shared_and_grouped_layers_are_skipped():
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(4, 2))
    st = find_pairs(net, lambda: net(torch.randn(3, 4)))
    assert st.pairs == [] and st.skipped == {"0 -> 4": "0 is called 2 times in one forward (shared weights)"}
    grouped = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2))
    st = find_pairs(grouped, lambda: grouped(torch.randn(2, 4, 5, 5)))
    assert st.skipped == {"0 -> 2": "2 is a grouped convolution (groups=2)"}
    with pytest.raises(ValueError, match=r"grouped convolution \(groups=2\) has no per-unit input columns"):
        input_weight(grouped[2], 4)
    with pytest.raises(ValueError, match=r"input size 4 is not a multiple of 3 units"):
        input_weight(nn.Linear(4, 2), 3)


def test_nothing_of_the_model_or_the_rng_changes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3), nn.BatchNorm1d(3))
    net.train()
    net[2].eval()  # mixed modes survive
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    st = find_pairs(net, lambda: net(torch.randn(6, 5)))  # the forward itself draws numbers
    assert [(p.a, p.b) for p in st.pairs] == [("0", "3")]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net] == [True, True, False, True, True]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_errors_and_cleanup_on_a_failing_forward():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"model must be an nn.Module, got function"):
        find_pairs(lambda x: x, lambda: None)
    with pytest.raises(ValueError, match=r"the forward of model returned no floating tensor"):
        find_pairs(net, lambda: net(torch.randn(3, 2)).argmax(1))

    def boom():
        raise RuntimeError("bad batch")

    with pytest.raises(RuntimeError, match="bad batch"):
        find_pairs(net, boom)
    assert net.training and all(not m._forward_pre_hooks for m in net.modules())
