"""equivariance_error and layer_equivariance_errors: invariance of circular CNNs with global
average pooling (Zhang 2019; Azulay & Weiss 2019), its loss with stride 2, closed forms, the
zero-norm degradation and every raise."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from geomonitor.equivariance import equivariance_error, layer_equivariance_errors


def roll(s: int, dims=(-2, -1)):
    return lambda x: torch.roll(x, (s, s), dims=dims)


class CircularCNN(nn.Module):
    def __init__(self, stride2: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular")
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular", stride=2 if stride2 else 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(self.pool(h).flatten(1))


@pytest.fixture
def images():
    return torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shift", [1, 3, 5])
def test_circular_cnn_is_roll_invariant(images, shift):
    err = equivariance_error(CircularCNN().eval(), images, roll(shift))
    assert err < 1e-6  # float precision


def test_stride_two_breaks_invariance(images):
    model = CircularCNN(stride2=True).eval()
    assert equivariance_error(model, images, roll(1)) > 1e-3
    assert equivariance_error(model, images, roll(2)) < 1e-6  # even shifts still commute


def test_mlp_is_far_from_invariant(images):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    assert equivariance_error(mlp, images, roll(1)) > 0.1


def test_per_layer_actions(images):
    model = CircularCNN(stride2=True).eval()
    errs = layer_equivariance_errors(model, images, roll(2), {
        "c1": roll(2), "c2": roll(1), "pool": None, "fc": None})
    assert set(errs) == {"c1", "c2", "pool", "fc"} and max(errs.values()) < 1e-6
    errs1 = layer_equivariance_errors(model, images, roll(1), {"c1": roll(1), "c2": roll(1)})
    assert errs1["c1"] < 1e-6 and errs1["c2"] > 1e-2  # stride 2: an odd shift has no image


def test_closed_forms():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    double = lambda z: 2 * z  # noqa: E731
    negate = lambda z: -z  # noqa: E731
    # f(-x) - f(x) = -4x, ||.|| / ||2x|| = 2 for every sample
    assert equivariance_error(double, x, negate) == pytest.approx(2.0, rel=1e-12)
    assert equivariance_error(double, x, negate, negate) == 0.0
    c = torch.tensor([1.0, 0.0, 0.0, 0.0])
    ref = float((c.norm() / x.double().norm(dim=1)).mean())
    assert equivariance_error(lambda z: z, x, lambda z: z + c) == pytest.approx(ref, rel=1e-6)


def test_zero_norm_samples_are_left_out():
    x = torch.tensor([[1.0, -2.0], [-1.0, -1.0], [3.0, 0.5]])
    err = equivariance_error(torch.relu, x, lambda z: z + 1.0)
    # sample 1 has relu(x) = 0 and is left out; the others by hand
    r0 = torch.tensor([2.0, 0.0]).sub(torch.tensor([1.0, 0.0])).norm() / 1.0
    r2 = torch.tensor([4.0, 1.5]).sub(torch.tensor([3.0, 0.5])).norm() / torch.tensor([3.0, 0.5]).norm()
    assert err == pytest.approx(float((r0 + r2) / 2), rel=1e-6)
    with pytest.raises(ValueError, match=r"\|\|f\(x\)\|\| = 0 for every sample"):
        equivariance_error(torch.relu, -x.abs() - 1, lambda z: z + 1.0)


def test_half_precision_output():
    x = torch.randn(4, 8, dtype=torch.float16)
    assert equivariance_error(lambda z: z.sum(-1, keepdim=True), x, roll(1, dims=(-1, -1))) < 1e-2


def test_raises(images):
    model = CircularCNN().eval()
    with pytest.raises(TypeError, match="f must be callable, got int"):
        equivariance_error(1, images, roll(1))
    with pytest.raises(TypeError, match="transform_in must be callable, got NoneType"):
        equivariance_error(model, images, None)
    with pytest.raises(TypeError, match="transform_out must be callable or None, got str"):
        equivariance_error(model, images, roll(1), "x")
    with pytest.raises(TypeError, match="x must be a tensor, got list"):
        equivariance_error(model, [1, 2], roll(1))
    with pytest.raises(TypeError, match=r"f\(x\) must be a tensor, got tuple"):
        equivariance_error(lambda z: (z,), images, roll(1))
    with pytest.raises(ValueError, match=r"f\(g.x\) has shape \(16, 10\) but rho\(g\) f\(x\) has shape \(16, 5\)"):
        equivariance_error(model, images, roll(1), lambda y: y[:, :5])
    with pytest.raises(ValueError, match="outputs must be batches"):
        equivariance_error(lambda z: z.sum(), images, roll(1))
    with pytest.raises(ValueError, match="the outputs contain NaN or Inf"):
        equivariance_error(lambda z: z / 0.0, images, roll(1))


def test_layer_raises(images):
    model = CircularCNN().eval()
    with pytest.raises(ValueError, match="layer 'nope' is not a module of the model"):
        layer_equivariance_errors(model, images, roll(1), {"nope": None})
    with pytest.raises(ValueError, match="layer_transforms must be a non-empty mapping"):
        layer_equivariance_errors(model, images, roll(1), {})
    with pytest.raises(TypeError, match=r"layer_transforms\['c1'\] must be callable or None, got int"):
        layer_equivariance_errors(model, images, roll(1), {"c1": 3})

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x))

    with pytest.raises(ValueError, match="layer 'lin' ran 2 times per forward"):
        layer_equivariance_errors(Twice(), torch.randn(3, 4), lambda z: -z, {"lin": None})
    with pytest.raises(ValueError, match="layer 'c1' ran 0 times per forward"):
        layer_equivariance_errors(model, images, roll(1), {"c1": None}, forward=lambda m, x: x)

    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    with pytest.raises(ValueError, match="layer 'rnn' returns tuple, not a tensor"):
        layer_equivariance_errors(TupleOut(), torch.randn(2, 3, 4), lambda z: -z, {"rnn": None})
    assert not model.c1._forward_hooks  # hooks removed after the failure
