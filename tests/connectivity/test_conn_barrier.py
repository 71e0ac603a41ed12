"""loss_barrier against closed forms, an independent numpy loss, a hand-written BatchNorm, and
the isolation of the user's model."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor.connectivity import Barrier, interpolate_state, loss_barrier


class Scalar(nn.Module):
    """One parameter theta with the double-well loss (theta^2 - 1)^2."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros((), dtype=torch.float64))


def double_well(m: Scalar) -> torch.Tensor:
    return (m.theta ** 2 - 1) ** 2


def test_double_well_barrier_is_one_at_half():
    b = loss_barrier(Scalar(), {"theta": torch.tensor(-1.0, dtype=torch.float64)},
                     {"theta": torch.tensor(1.0, dtype=torch.float64)}, double_well, n_alpha=11)
    assert isinstance(b, Barrier)
    assert b.barrier == pytest.approx(1.0, abs=1e-12) and b.alpha == 0.5
    alphas = np.linspace(0, 1, 11)
    assert np.allclose(b.alphas, alphas)
    # closed form: theta(alpha) = 2 alpha - 1, L = ((2 alpha - 1)^2 - 1)^2, chord 0
    assert np.allclose(b.losses, ((2 * alphas - 1) ** 2 - 1) ** 2, atol=1e-12)
    assert b.error_barrier is None and b.errors is None


def test_even_grid_misses_the_peak():
    # n_alpha=4 has no alpha=1/2: the maximum on the grid is at 1/3 (and 2/3), value 1 - (1/3)^2 squared
    b = loss_barrier(Scalar(), {"theta": torch.tensor(-1.0, dtype=torch.float64)},
                     {"theta": torch.tensor(1.0, dtype=torch.float64)}, double_well, n_alpha=4)
    assert b.barrier == pytest.approx((1 / 9 - 1) ** 2)
    assert min(abs(b.alpha - 1 / 3), abs(b.alpha - 2 / 3)) < 1e-12  # a tie up to rounding


def _logreg_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(200, generator=g, dtype=torch.float64) > 0).long()
    return X, y


def _numpy_logreg_loss(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    z = X @ W.T + b
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_convex_model_has_no_barrier(seed):
    X, y = _logreg_data()
    model = nn.Linear(5, 2).double()
    g = torch.Generator().manual_seed(seed)
    sa = {k: 3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    sb = {k: 3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    b = loss_barrier(model, sa, sb, lambda m: nn.functional.cross_entropy(m(X), y), n_alpha=21)
    assert b.barrier <= 1e-12  # convex: the curve never rises above the chord
    chord = [(1 - t) * b.losses[0] + t * b.losses[-1] for t in b.alphas]
    assert all(v <= c + 1e-12 for v, c in zip(b.losses, chord))
    for t, v in zip(b.alphas, b.losses):  # independent numpy evaluation of the curve
        W = ((1 - t) * sa["weight"] + t * sb["weight"]).numpy()
        bias = ((1 - t) * sa["bias"] + t * sb["bias"]).numpy()
        assert v == pytest.approx(_numpy_logreg_loss(W, bias, X.numpy(), y.numpy()), rel=1e-10)


def test_error_pair_gives_the_error_barrier():
    X, y = _logreg_data()
    model = nn.Linear(5, 2).double()
    sa = {"weight": torch.tensor([[-1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0]], dtype=torch.float64),
          "bias": torch.zeros(2, dtype=torch.float64)}
    sb = {"weight": torch.tensor([[0, -1.0, 0, 0, 0], [0, 1.0, 0, 0, 0]], dtype=torch.float64),
          "bias": torch.zeros(2, dtype=torch.float64)}

    def loss_err(m):
        out = m(X)
        return nn.functional.cross_entropy(out, y), (out.argmax(1) != y).double().mean()

    b = loss_barrier(model, sa, sb, loss_err, n_alpha=5)
    Xn, yn = X.numpy(), y.numpy()
    errs = []
    for t in np.linspace(0, 1, 5):  # the decision rule of the interpolated model: sign of x0(1-t) + x1 t
        score = (1 - t) * Xn[:, 0] + t * Xn[:, 1]
        errs.append(float(((score > 0).astype(int) != yn).mean()))
    assert np.allclose(b.errors, errs)
    gaps = [e - ((1 - t) * errs[0] + t * errs[-1]) for t, e in zip(np.linspace(0, 1, 5), errs)]
    assert b.error_barrier == pytest.approx(max(gaps))
    assert b.error_alpha == pytest.approx(np.linspace(0, 1, 5)[int(np.argmax(gaps))])


class WithIntBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("counter", torch.tensor(0, dtype=torch.long))
        self.register_buffer("mask", torch.tensor([True, False]))


def test_non_float_buffers_are_not_interpolated():
    model = WithIntBuffer()
    sa, sb = dict(model.state_dict()), dict(model.state_dict())
    sa["counter"], sb["counter"] = torch.tensor(3), torch.tensor(7)
    sb["mask"] = torch.tensor([False, True])
    sb["lin.weight"] = sa["lin.weight"] + 1.0
    seen = []

    def loss_fn(m):
        seen.append((int(m.counter), m.mask.tolist(), m.lin.weight.detach().clone()))
        return m.lin.weight.sum()

    loss_barrier(model, sa, sb, loss_fn, n_alpha=3)
    assert [s[0] for s in seen] == [3, 3, 3] and all(s[1] == [True, False] for s in seen)
    assert torch.allclose(seen[1][2], sa["lin.weight"] + 0.5)
    assert int(model.counter) == 0  # the user's model is untouched


def test_half_precision_interpolated_in_float32():
    a = {"w": torch.tensor([1.0, 2049.0], dtype=torch.float16)}
    b = {"w": torch.tensor([2.0, 2051.0], dtype=torch.float16)}
    out = interpolate_state(a, b, 1 / 3)["w"]
    ref = ((2 / 3) * a["w"].double() + (1 / 3) * b["w"].double()).half()
    assert out.dtype == torch.float16 and torch.equal(out, ref)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _manual_bn_net(s, x, stats):
    """An independent float64 forward of BNNet from a state dict; stats 'batch' or 'running'."""
    h = x @ s["fc1.weight"].T + s["fc1.bias"]
    if stats == "batch":
        mean, var = h.mean(0), h.var(0, unbiased=False)
    else:
        mean, var = s["bn.running_mean"], s["bn.running_var"]
    h = (h - mean) / torch.sqrt(var + 1e-5) * s["bn.weight"] + s["bn.bias"]
    return torch.relu(h) @ s["fc2.weight"].T + s["fc2.bias"]


@pytest.mark.parametrize("reset_bn", [True, False])
def test_batchnorm_reset_on_and_off(reset_bn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    target = torch.randn(64, 1, generator=g, dtype=torch.float64)
    model = BNNet().double()
    sa = {k: (torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v)
          for k, v in model.state_dict().items()}
    sb = {k: (torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v)
          for k, v in model.state_dict().items()}
    for s in (sa, sb):
        s["bn.running_var"] = s["bn.running_var"].abs() + 0.5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    b = loss_barrier(model, sa, sb, lambda m: ((m(x) - target) ** 2).mean(), n_alpha=5, reset_bn=reset_bn)
    for t, v in zip(b.alphas, b.losses):
        s = interpolate_state(sa, sb, t)
        out = _manual_bn_net(s, x, "batch" if reset_bn else "running")
        # eval mode after the reset uses the unbiased batch variance as running_var
        if reset_bn:
            h = x @ s["fc1.weight"].T + s["fc1.bias"]
            s = dict(s, **{"bn.running_mean": h.mean(0), "bn.running_var": h.var(0, unbiased=True)})
            out = _manual_bn_net(s, x, "running")
        assert v == pytest.approx(float(((out - target) ** 2).mean()), rel=1e-9)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched


def test_user_model_and_rng_untouched():
    model = BNNet()
    model.train()
    x = torch.randn(16, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()

    def noisy_loss(m):  # consumes every global stream
        torch.rand(3), np.random.rand(), random.random()
        return m(x).square().mean()

    loss_barrier(model, model, {k: v + 0.1 if v.is_floating_point() else v
                                for k, v in model.state_dict().items()}, noisy_loss)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist() and random.getstate() == py_state
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def _lin():
    return nn.Linear(2, 1)


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"n_alpha": 1}, ValueError, "n_alpha must be an int >= 2"),
    ({"n_alpha": 0}, ValueError, "n_alpha must be a positive int, got 0"),
    ({"n_alpha": 2.5}, ValueError, "n_alpha must be a positive int, got 2.5"),
    ({"reset_bn": 1}, TypeError, "reset_bn must be a bool, got 1"),
])
def test_bad_options(kwargs, exc, msg):
    m = _lin()
    with pytest.raises(exc, match=msg):
        loss_barrier(m, m, m, lambda mm: mm.weight.sum(), **kwargs)


def test_bad_arguments():
    m = _lin()
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
        loss_barrier({}, m, m, lambda mm: 0.0)
    with pytest.raises(TypeError, match="loss_fn must be callable, got int"):
        loss_barrier(m, m, m, 3)
    with pytest.raises(TypeError, match="state_a must be an nn.Module or a state dict"):
        loss_barrier(m, [1, 2], m, lambda mm: 0.0)
    with pytest.raises(ValueError, match=r"state_b does not match the model's state dict: missing keys \['bias'\]"):
        loss_barrier(m, m, {"weight": torch.zeros(1, 2)}, lambda mm: 0.0)
    with pytest.raises(ValueError, match=r"state_a\['weight'\] has shape \(2, 2\), the model's has \(1, 2\)"):
        loss_barrier(m, {"weight": torch.zeros(2, 2), "bias": torch.zeros(1)}, m, lambda mm: 0.0)


@pytest.mark.parametrize("ret, exc, msg", [
    (lambda m: torch.ones(3), ValueError, r"loss_fn must return a scalar loss, got a tensor of shape \(3,\)"),
    (lambda m: "x", TypeError, "loss_fn must return a scalar loss or a \\(loss, error\\) pair, got str"),
    (lambda m: (1.0, 2.0, 3.0), TypeError, "got a sequence of length 3"),
    (lambda m: torch.tensor(float("nan")), ValueError, r"non-finite loss \(nan\) at alpha=0"),
    (lambda m: (1.0, float("inf")), ValueError, r"non-finite error \(inf\) at alpha=0"),
])
def test_bad_loss_values(ret, exc, msg):
    m = _lin()
    with pytest.raises(exc, match=msg):
        loss_barrier(m, m, m, ret)


def test_mixed_pairs_and_bare_losses():
    m = _lin()
    calls = iter(range(100))

    def loss_fn(mm):
        return (1.0, 0.0) if next(calls) == 0 else 1.0

    with pytest.raises(TypeError, match=r"a \(loss, error\) pair at some alphas and a bare loss"):
        loss_barrier(m, m, m, loss_fn, n_alpha=3)


def test_integer_or_bool_state_dicts_are_refused():
    # an integer copy of a float model's state would be copied instead of interpolated:
    # state_b ignored, a flat curve and a barrier of 0 (numpy reference: the curve is not flat)
    m = _lin()
    sa = {k: v.round().long() for k, v in m.state_dict().items()}
    for bad_a, bad_b, name in ((sa, m, "state_a"), (m, sa, "state_b")):
        with pytest.raises(ValueError, match=rf"{name}\['weight'\] has dtype torch.int64, the model's has "
                                             r"torch.float32: a floating-point entry is needed"):
            loss_barrier(m, bad_a, bad_b, lambda mm: mm.weight.sum())
    with pytest.raises(ValueError, match=r"state_a\['bias'\] has dtype torch.bool"):
        loss_barrier(m, {"weight": torch.zeros(1, 2), "bias": torch.ones(1, dtype=torch.bool)}, m,
                     lambda mm: mm.weight.sum())
    model = WithIntBuffer()
    st = dict(model.state_dict())
    st["counter"] = torch.tensor(3.0)  # a float where the model keeps an integer
    with pytest.raises(ValueError, match=r"state_b\['counter'\] has dtype torch.float32, the model's has "
                                         r"torch.int64: an integer or bool entry is needed"):
        loss_barrier(model, model, st, lambda mm: mm.lin.weight.sum())


def test_float_state_dicts_of_another_precision_are_interpolated():
    m = _lin()
    sa = {"weight": torch.tensor([[1.0, -1.0]], dtype=torch.float64), "bias": torch.zeros(1, dtype=torch.float64)}
    sb = {"weight": torch.tensor([[3.0, 1.0]], dtype=torch.float16), "bias": torch.ones(1, dtype=torch.float16)}
    b = loss_barrier(m, sa, sb, lambda mm: (mm.weight.square().sum() + mm.bias.square().sum()), n_alpha=3)
    w = [np.array([1.0, -1.0]) * (1 - t) + np.array([3.0, 1.0]) * t for t in (0.0, 0.5, 1.0)]
    ref = [float((x ** 2).sum() + t ** 2) for x, t in zip(w, (0.0, 0.5, 1.0))]
    np.testing.assert_allclose(b.losses, ref, rtol=1e-6)


def test_interpolate_state_checks_keys_and_kinds():
    a = {"w": torch.zeros(2), "n": torch.tensor(1)}
    with pytest.raises(ValueError, match=r"state_b does not match state_a: missing keys \['n'\], unexpected keys \[\]"):
        interpolate_state(a, {"w": torch.ones(2)}, 0.5)
    with pytest.raises(ValueError, match=r"state_b\['w'\] has dtype torch.int64, state_a's has torch.float32"):
        interpolate_state(a, {"w": torch.ones(2, dtype=torch.long), "n": torch.tensor(2)}, 0.5)
