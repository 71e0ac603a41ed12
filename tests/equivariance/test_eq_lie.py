"""lie_derivative: zero on exactly invariant / equivariant functions, the closed form and a
central finite difference on known functions, fourier_shift against torch.roll."""
from __future__ import annotations

import pytest
import torch

from geomonitor.equivariance import fourier_shift, lie_derivative, lie_derivative_tensor


def rotate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(t), torch.sin(t)
    return x @ torch.stack([torch.stack([c, -s]), torch.stack([s, c])])


def test_zero_on_invariant_functions():
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    assert lie_derivative(lambda z: z.square().sum(-1), x, rotate) < 1e-6
    sig = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    assert lie_derivative(lambda z: z.sum(-1), sig, lambda z, t: fourier_shift(z, t)) < 1e-5


def test_zero_on_an_equivariant_linear_map():
    A = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn(5, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    x = torch.randn(6, 5, dtype=torch.float64)
    f = lambda z: z @ A.T  # noqa: E731
    assert lie_derivative(f, x, lambda z, t: z + t * v, lambda y, t: y + t * (A @ v)) < 1e-12
    # a wrong output action: L = A v - w for every sample
    got = lie_derivative(f, x, lambda z, t: z + t * v, lambda y, t: y + t * w)
    assert got == pytest.approx(float((A @ v - w).norm()), rel=1e-12)


def test_matches_closed_form_and_finite_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 7, dtype=torch.float64, generator=g)
    v = torch.randn(7, dtype=torch.float64, generator=g)
    flow = lambda z, t: z + t * v  # noqa: E731
    d = lie_derivative_tensor(torch.sin, x, flow)
    assert torch.allclose(d, torch.cos(x) * v, atol=1e-12)
    h = 1e-5
    fd = (torch.sin(flow(x, h)) - torch.sin(flow(x, -h))) / (2 * h)
    assert torch.allclose(d, fd, atol=1e-8)
    assert lie_derivative(torch.sin, x, flow) == pytest.approx(float((torch.cos(x) * v).norm(dim=1).mean()))


def test_rotation_of_a_non_invariant_function():
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    f = lambda z: z[:, :1] ** 3  # noqa: E731  d/dt (x cos t + y sin t)^3 = 3 x^2 y at t = 0
    d = lie_derivative_tensor(f, x, rotate)
    assert torch.allclose(d[:, 0], 3 * x[:, 0] ** 2 * x[:, 1], atol=1e-12)


def test_fourier_shift_is_roll_for_integers_and_smooth_between():
    x = torch.randn(3, 12, dtype=torch.float64)
    for s in (1, 4, -3):
        assert torch.allclose(fourier_shift(x, float(s)), torch.roll(x, s, -1), atol=1e-12)
    # a pure cosine shifted by half a sample: cos(2 pi k (n - 1/2) / N)
    n = torch.arange(12, dtype=torch.float64)
    c = torch.cos(2 * torch.pi * 2 * n / 12)
    assert torch.allclose(fourier_shift(c, 0.5), torch.cos(2 * torch.pi * 2 * (n - 0.5) / 12), atol=1e-12)


def test_raises():
    x = torch.randn(4, 2)
    with pytest.raises(TypeError, match="f must be callable, got int"):
        lie_derivative(1, x, rotate)
    with pytest.raises(TypeError, match="flow must be callable, got NoneType"):
        lie_derivative(torch.sin, x, None)
    with pytest.raises(TypeError, match="flow_out must be callable or None, got int"):
        lie_derivative(torch.sin, x, rotate, 2)
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        lie_derivative(torch.sin, torch.ones(3, 2, dtype=torch.long), rotate)
    with pytest.raises(TypeError, match="f must return a tensor, got tuple"):
        lie_derivative(lambda z: (z,), x, rotate)
    with pytest.raises(ValueError, match=r"d/dt flow\(x, t\) = 0 at t = 0 for the whole batch"):
        lie_derivative(torch.sin, x, lambda z, t: torch.roll(z, int(t), -1))
    with pytest.raises(TypeError, match="flow must return a tensor, got list"):
        lie_derivative(torch.sin, x, lambda z, t: [z])
    with pytest.raises(ValueError, match=r"the Lie derivative is not finite"):
        lie_derivative(lambda z: z.sqrt(), torch.zeros(3, 2), lambda z, t: z + t)

    class NoJvp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            return z * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    with pytest.raises(ValueError, match="forward-mode differentiation of t -> f\\(flow\\(x, t\\)\\) failed"):
        lie_derivative(NoJvp.apply, x, rotate)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_is_measured_with_float32_weights(dtype):
    import copy

    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4), nn.Tanh(),
                          nn.Flatten(), nn.Linear(64, 2)).to(dtype).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3, 16).to(dtype)
    got = lie_derivative(model, x, lambda z, t: fourier_shift(z, t, dim=-1))
    # reference: a central finite difference of the same (half) weights in float64
    ref_model = copy.deepcopy(model).double()
    xd, h = x.double(), 1e-4
    with torch.no_grad():
        d = (ref_model(fourier_shift(xd, h)) - ref_model(fourier_shift(xd, -h))) / (2 * h)
    assert got == pytest.approx(float(d.norm(dim=1).mean()), rel=1e-3)
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"should be the same; x is computed in torch.float32: for a "
                                         r"half-precision model pass the nn.Module itself as f"):
        lie_derivative(lambda z: model(z), x, lambda z, t: fourier_shift(z, t, dim=-1))


def test_fourier_shift_bad_arguments():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"dim must be an int in \[-3, 2\] for x of shape \(2, 3, 8\), got 7"):
        fourier_shift(x, 0.5, dim=7)
    with pytest.raises(ValueError, match=r"dim must be an int in \[-3, 2\] for x of shape \(2, 3, 8\), got -4"):
        fourier_shift(x, 0.5, dim=-4)
    with pytest.raises(ValueError, match=r"got 1.0"):
        fourier_shift(x, 0.5, dim=1.0)
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got list"):
        fourier_shift([1.0, 2.0], 0.5)
    torch.testing.assert_close(fourier_shift(x, 2.0, dim=1), torch.roll(x, 2, 1), atol=1e-5, rtol=0)
