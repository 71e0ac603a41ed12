"""Rescaling collapse (Ziyin, "Symmetry induces structure and constraint of learning", ICML 2024):
in the two-parameter model y ~ u w x with weight decay gamma (u^2 + w^2), gradient descent sends
both parameters to zero exactly when gamma > |E[xy]|; otherwise to the balanced solution
|u| = |w| = sqrt((|E[xy]| - gamma) / E[x^2]). Gradients are written out by hand (not autograd);
the imbalance is read with :func:`rescaling_imbalance`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geomonitor.symmetry import rescaling_imbalance


def _data(sign):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(400)
    y = sign * 1.5 * x + 0.5 * rng.standard_normal(400)
    return x, y, float(np.mean(x * y)), float(np.mean(x * x))


def _gd(c, s2, gamma, eta=0.05, steps=3000, u=1.0, w=0.3):
    """GD on L = E[(y - u w x)^2] + gamma (u^2 + w^2) = const - 2 u w c + u^2 w^2 s2 + gamma (u^2 + w^2)."""
    def imbalance():
        return float(rescaling_imbalance(torch.tensor([[u]], dtype=torch.float64),
                                         torch.tensor([[w]], dtype=torch.float64))[0])

    start = imbalance()
    for _ in range(steps):
        gu = -2 * w * c + 2 * u * w * w * s2 + 2 * gamma * u
        gw = -2 * u * c + 2 * w * u * u * s2 + 2 * gamma * w
        u, w = u - eta * gu, w - eta * gw
    return u, w, (start, imbalance())


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("ratio", [0.5, 0.9, 1.1, 2.0])
def test_collapse_iff_weight_decay_exceeds_the_correlation(sign, ratio):
    x, y, c, s2 = _data(sign)
    gamma = ratio * abs(c)
    u, w, imb = _gd(c, s2, gamma, steps=1500 if ratio != 1.1 else 3000)
    if ratio > 1:
        assert abs(u) < 1e-6 and abs(w) < 1e-6, (u, w)
    else:
        s_star = (abs(c) - gamma) / s2
        assert abs(u) == pytest.approx(np.sqrt(s_star), rel=1e-6)
        assert abs(w) == pytest.approx(np.sqrt(s_star), rel=1e-6)
        assert np.sign(u * w) == np.sign(c)
    # the balance is restored in every case (the imbalance u^2 - w^2 decays to zero)
    assert abs(imb[0]) > 0.5 and abs(imb[-1]) < 1e-8
