"""Rescaling imbalance: the exact discrete balance law under SGD (Du, Hu & Lee 2018), brute-force
sums for convolutions, the layer and relative forms, and every error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor.symmetry import layer_imbalance, relative_imbalance, rescaling_imbalance


def _mlp(bias: bool, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7, bias=bias), nn.ReLU(), nn.Linear(7, 6, bias=bias),
                         nn.LeakyReLU(0.1), nn.Linear(6, 3, bias=bias)).double()


def _np_imbalance(w_in, b_in, w_out):
    """sum_k w_in[j,k]^2 + b_in[j]^2 - sum_i w_out[i,j]^2, from numpy arrays."""
    d = (w_in ** 2).sum(axis=1) - (w_out ** 2).sum(axis=0)
    return d if b_in is None else d + b_in ** 2


@pytest.mark.parametrize("bias", [False, True])
def test_discrete_balance_law_under_sgd_with_weight_decay(bias):
    """D(t+1) = (1 - eta lam)^2 D(t) + eta^2 (|g_in|^2 + g_b^2 - |g_out|^2), exactly (float64)."""
    net = _mlp(bias)
    eta, lam = 0.05, 0.01
    opt = torch.optim.SGD(net.parameters(), lr=eta, weight_decay=lam)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(64, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    pairs = [(net[0], net[2]), (net[2], net[4])]
    worst = 0.0
    for step in range(30):
        idx = torch.randint(0, 64, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(X[idx]), Y[idx]).backward()
        predicted = []
        for a, b in pairs:
            w, bb, wo = (a.weight.detach().numpy().copy(), None if a.bias is None else
                         a.bias.detach().numpy().copy(), b.weight.detach().numpy().copy())
            gw, gb, go = (a.weight.grad.numpy(), None if a.bias is None else a.bias.grad.numpy(),
                          b.weight.grad.numpy())
            gnorm = _np_imbalance(gw, gb, go)
            predicted.append((1 - eta * lam) ** 2 * _np_imbalance(w, bb, wo) + eta ** 2 * gnorm)
        opt.step()
        for (a, b), pred in zip(pairs, predicted):
            got = rescaling_imbalance(a.weight, b.weight, a.bias)
            assert got.dtype == torch.float64 and got.shape == (a.out_features,)
            worst = max(worst, float(np.abs(got.numpy() - pred).max()))
    assert worst <= 1e-10
    # the law is not vacuous: the eta^2 term and the decay both moved D
    assert float(rescaling_imbalance(net[0].weight, net[2].weight, net[0].bias).abs().max()) > 1e-3


def test_balance_is_conserved_only_for_homogeneous_units():
    """With tanh between the layers the conservation law fails: the same prediction is off."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    eta = 0.1
    opt = torch.optim.SGD(net.parameters(), lr=eta)
    X = torch.randn(32, 5, dtype=torch.float64)
    opt.zero_grad()
    net(X).pow(2).sum().backward()
    a, b = net[0], net[2]
    pred = rescaling_imbalance(a.weight, b.weight, a.bias) + eta ** 2 * rescaling_imbalance(
        a.weight.grad, b.weight.grad, a.bias.grad)
    opt.step()
    got = rescaling_imbalance(a.weight, b.weight, a.bias)
    assert float((got - pred).abs().max()) > 1e-4


def test_conv_units_are_channels_brute_force():
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    b1 = torch.randn(4, generator=g, dtype=torch.float64)
    w2 = torch.randn(5, 4, 2, 2, generator=g, dtype=torch.float64)
    got = rescaling_imbalance(w1, w2, b1)
    for j in range(4):
        ref = sum(float(v) ** 2 for v in w1[j].flatten()) + float(b1[j]) ** 2 \
            - sum(float(v) ** 2 for v in w2[:, j].flatten())
        assert got[j].item() == pytest.approx(ref, rel=1e-12)


def test_layer_form_and_relative_form():
    g = torch.Generator().manual_seed(0)
    w1, b1, w2 = (torch.randn(6, 4, generator=g, dtype=torch.float64),
                  torch.randn(6, generator=g, dtype=torch.float64),
                  torch.randn(3, 6, generator=g, dtype=torch.float64))
    n1, nb, n2 = float((w1 ** 2).sum()), float((b1 ** 2).sum()), float((w2 ** 2).sum())
    assert layer_imbalance(w1, w2, b1) == pytest.approx(n1 + nb - n2, rel=1e-12)
    # Du et al.'s ||W_{l+1}||^2 - ||W_l||^2 is the negative of the bias-free layer form
    assert layer_imbalance(w1, w2) == pytest.approx(-(n2 - n1), rel=1e-12)
    d = (w1 ** 2).sum(1) + b1 ** 2 - (w2 ** 2).sum(0)
    assert relative_imbalance(w1, w2, b1) == pytest.approx(float(d.norm()) / (n1 + nb + n2), rel=1e-12)
    # a balanced pair (each unit's incoming norm equals its outgoing norm) gives 0
    w2b = w2 / w2.norm(dim=0) * torch.sqrt((w1 ** 2).sum(1) + b1 ** 2)
    assert relative_imbalance(w1, w2b, b1) == pytest.approx(0.0, abs=1e-12)
    # one side zero for a single unit: the bound 1 is reached
    assert relative_imbalance(torch.tensor([[3.0], [0.0]]), torch.zeros(2, 2)) == pytest.approx(1.0)
    assert relative_imbalance(torch.zeros(2, 3), torch.zeros(4, 2)) == 0.0


def test_half_precision_is_computed_in_float32():
    w1, w2 = torch.full((2, 3), 300.0), torch.ones(1, 2)  # 3 * 300^2 overflows float16
    d = rescaling_imbalance(w1.half(), w2.half())
    assert d.dtype == torch.float32 and d.tolist() == [270000.0 - 1.0] * 2


@pytest.mark.parametrize("args,match", [
    ((torch.ones(3, 2), torch.ones(2, 4)), r"w_out must have the hidden units on dim 1: w_in has 3 units"),
    ((torch.ones(3, 2), torch.ones(2, 3), torch.ones(2)), r"b_in must have shape \(3,\)"),
    ((torch.ones(3, 2), torch.ones(3)), r"w_out must have at least 2 dimensions, got shape \(3,\)"),
    ((torch.tensor([[float("nan"), 1.0]]), torch.ones(2, 1)), r"w_in has 1 NaN or Inf entries"),
    ((torch.ones(0, 2), torch.ones(2, 0)), r"w_in must not have a zero-size dimension"),
    ((torch.ones(2, 2, dtype=torch.complex64), torch.ones(2, 2)), r"w_in must be a real numeric tensor"),
    ((np.array([[1, "a"]], dtype=object), torch.ones(2, 1)), r"w_in must be a numeric array"),
    ((torch.ones(2, 2), torch.ones(2, 2), torch.ones(2, 1)), r"b_in must have 1 dimensions"),
])
def test_errors(args, match):
    for fn in (rescaling_imbalance, layer_imbalance, relative_imbalance):
        with pytest.raises(ValueError, match=match):
            fn(*args)
