"""layerwise_lie_derivative: each layer's value against lie_derivative of the hand-written prefix
sub-network (an MLP under a rotation, a CNN and a 1-D CNN under sub-pixel translations, a
branching model), against a central finite difference in float64, zero for a circularly padded
convolution with the matching output flow, the model left as it was, and every raise."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from geomonitor.equivariance import fourier_shift, layerwise_lie_derivative, lie_derivative
from geomonitor.equivariance.layerwise import layerwise_lie_derivative_tensors


def _rotate2d(x, t):
    c, s = torch.cos(t), torch.sin(t)
    R = torch.stack([torch.stack([c, -s]), torch.stack([s, c])]).to(x.dtype)
    return x @ R.T


def _shift_image(x, t):
    """Diagonal translation of (N, C, H, W) images by t pixels (band-limited, differentiable)."""
    return fourier_shift(fourier_shift(x, t, dim=-1), 0.5 * t, dim=-2)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).eval()


def test_mlp_layers_equal_the_hand_written_prefixes():
    net = _mlp()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    names = ["0", "1", "2", "3", "4"]
    got = layerwise_lie_derivative(net, x, _rotate2d, layers=names)
    assert list(got) == names
    for k, name in enumerate(names):
        prefix = nn.Sequential(*list(net)[:k + 1])
        assert got[name] == pytest.approx(lie_derivative(prefix, x, _rotate2d), rel=1e-6, abs=1e-9)
    assert all(v > 1e-3 for v in got.values())


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        return self.head(h.mean(dim=(2, 3)))


def test_cnn_under_translation_equals_hand_written_prefixes_and_finite_differences():
    torch.manual_seed(0)
    net = _CNN().double().eval()
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    prefixes = {"conv1": lambda z: net.conv1(z),
                "conv2": lambda z: net.conv2(torch.relu(net.conv1(z))),
                "head": net}
    tensors = layerwise_lie_derivative_tensors(net, x, _shift_image, layers=list(prefixes))
    values = layerwise_lie_derivative(net, x, _shift_image, layers=list(prefixes))
    h = 1e-5
    for name, fn in prefixes.items():
        assert values[name] == pytest.approx(lie_derivative(fn, x, _shift_image), rel=1e-9)
        t = torch.tensor(h, dtype=torch.float64)
        fd = (fn(_shift_image(x, t)) - fn(_shift_image(x, -t))) / (2 * h)  # central difference
        assert torch.allclose(tensors[name], fd, rtol=1e-5, atol=1e-7)


def test_translation_equivariant_conv_is_zero_with_the_output_flow():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 4, 5, padding=2, padding_mode="circular"), nn.Tanh(),
                        nn.Conv1d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 2)).double().eval()
    x = torch.randn(8, 1, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shift = lambda z, t: fourier_shift(z, t)  # noqa: E731
    got = layerwise_lie_derivative(net, x, shift, layers=["0", "1", "2", "4"],
                                   flow_out={"0": shift, "1": shift, "2": shift})
    assert got["0"] < 1e-10                            # circular conv: equivariant
    # a pointwise tanh does not commute with a sub-pixel (band-limited) shift: aliasing, which
    # Gruver et al. 2023 find to be a main source of lost equivariance
    assert got["1"] > 1e-3
    assert got["2"] > 1e-3                             # zero padding breaks it at the border
    assert got["4"] == pytest.approx(lie_derivative(net, x, shift), rel=1e-9)
    for k, name in ((2, "2"), (4, "4")):
        prefix = nn.Sequential(*list(net)[:k + 1])
        assert got[name] == pytest.approx(lie_derivative(prefix, x, shift, shift if k < 3 else None), rel=1e-9)
    # one output flow for every layer is the same as naming it per layer
    same = layerwise_lie_derivative(net, x, shift, layers=["0", "1"], flow_out=shift)
    assert same == pytest.approx({"0": got["0"], "1": got["1"]}, abs=1e-12)


class _Branch(nn.Module):
    """Two branches from the input; a block returning a tuple (as Hugging Face blocks do)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 8), nn.Linear(2, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.a(x)) * torch.sigmoid(self.b(x))), "extra"


def test_branching_model_and_tuple_outputs():
    torch.manual_seed(0)
    net = _Branch().double().eval()
    x = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    got = layerwise_lie_derivative(net, x, _rotate2d, layers=["out", "a", "b", ""])
    assert got["a"] == pytest.approx(lie_derivative(net.a, x, _rotate2d), rel=1e-9)
    assert got["b"] == pytest.approx(lie_derivative(net.b, x, _rotate2d), rel=1e-9)
    assert got["out"] == pytest.approx(lie_derivative(lambda z: net(z)[0], x, _rotate2d), rel=1e-9)
    assert got[""] == got["out"]  # "" is the whole model; its tuple output contributes its first element


def test_model_is_left_as_it_was():
    net = _mlp()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 2)
    layerwise_lie_derivative(net, x, _rotate2d, layers=["2"])
    assert all(not m._forward_hooks for m in net.modules())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.unused = nn.Linear(2, 2)
        self.tuple_out = _Empty()

    def forward(self, x):
        self.tuple_out(x)
        return self.fc(self.fc(x))


class _Empty(nn.Module):
    def forward(self, x):
        return {"x": x}


def test_errors():
    net, x = _Twice(), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"layer 'fc' was called 2 times in the forward"):
        layerwise_lie_derivative(net, x, _rotate2d, layers=["fc"])
    with pytest.raises(ValueError, match=r"layer 'unused' was not called in the forward"):
        layerwise_lie_derivative(net, x, _rotate2d, layers=["unused"])
    with pytest.raises(ValueError, match=r"layer 'tuple_out' returned dict, not a tensor"):
        layerwise_lie_derivative(net, x, _rotate2d, layers=["tuple_out"])
    with pytest.raises(ValueError, match=r"no module named \['nope'\] in the model"):
        layerwise_lie_derivative(net, x, _rotate2d, layers=["nope"])
    with pytest.raises(ValueError, match=r"layers must be a non-empty list of module names, got 'fc'"):
        layerwise_lie_derivative(net, x, _rotate2d, layers="fc")
    with pytest.raises(ValueError, match=r"layers must be a non-empty list of module names, got \[\]"):
        layerwise_lie_derivative(net, x, _rotate2d, layers=[])
    with pytest.raises(ValueError, match=r"flow_out names layers not in layers: \['fc'\]"):
        layerwise_lie_derivative(_mlp(), x, _rotate2d, layers=["0"], flow_out={"fc": _rotate2d})
    with pytest.raises(TypeError, match=r"flow_out for layer '0' must be callable or None, got int"):
        layerwise_lie_derivative(_mlp(), x, _rotate2d, layers=["0"], flow_out={"0": 3})
    with pytest.raises(TypeError, match=r"model must be an nn.Module, got function"):
        layerwise_lie_derivative(lambda z: z, x, _rotate2d, layers=["0"])
    with pytest.raises(TypeError, match=r"flow must be callable, got int"):
        layerwise_lie_derivative(_mlp(), x, 1, layers=["0"])
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor, got torch.int64"):
        layerwise_lie_derivative(_mlp(), torch.ones(3, 2, dtype=torch.long), _rotate2d, layers=["0"])
    with pytest.raises(TypeError, match=r"flow must return a tensor, got list"):
        layerwise_lie_derivative(_mlp(), x, lambda z, t: [z], layers=["0"])
    with pytest.raises(ValueError, match=r"d/dt flow\(x, t\) = 0 at t = 0 for the whole batch"):
        layerwise_lie_derivative(_mlp(), x, lambda z, t: torch.roll(z, int(t), 0), layers=["0"])
    with pytest.raises(ValueError, match=r"the Lie derivative of layer '0' is not finite"):
        layerwise_lie_derivative(_mlp(), x, lambda z, t: z * (1 + t) + 0 * t.log(), layers=["0"])
    def rotate_by_grid_sample(z, t):  # grid_sample has no forward-mode derivative in torch
        c, s_ = torch.cos(t), torch.sin(t)
        theta = torch.stack([torch.stack([c, -s_, 0 * t]), torch.stack([s_, c, 0 * t])])
        grid = nn.functional.affine_grid(theta.expand(z.shape[0], 2, 3), list(z.shape), align_corners=False)
        return nn.functional.grid_sample(z, grid, align_corners=False)

    with pytest.raises(ValueError, match=r"forward-mode differentiation of t -> model\(flow\(x, t\)\) failed"):
        layerwise_lie_derivative(nn.Sequential(nn.Flatten()), torch.randn(2, 1, 4, 4),
                                 rotate_by_grid_sample, layers=["0"])
    assert math.isfinite(layerwise_lie_derivative(_mlp(), x, _rotate2d, layers=["0"])["0"])
