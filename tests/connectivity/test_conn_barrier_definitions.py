"""loss_barrier's two definitions ("chord": rise above the chord, "frankle": peak minus the
endpoints' mean) against a closed-form quadratic loss and a brute-force numpy computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor.connectivity import loss_barrier


class Vec(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(n, dtype=torch.float64))


def _quadratic(seed: int = 0, n: int = 6):
    """L(theta) = theta^T H theta / 2 + g^T theta + c with an indefinite H, and two endpoints
    whose difference d has d^T H d < 0 and whose losses differ."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    H = Q @ np.diag(np.linspace(-3.0, 2.0, n)) @ Q.T
    g = rng.standard_normal(n) + 2.0 * Q[:, 0]  # tilted: L(0) != L(1), the peak off alpha = 1/2
    a = rng.standard_normal(n)
    b = a + 1.5 * Q[:, 0] + 0.3 * Q[:, -1]  # mostly along the negative curvature
    d = b - a
    assert d @ H @ d < 0
    return H, g, a, b


def _np_loss(H, g, theta):
    return 0.5 * theta @ H @ theta + g @ theta + 1.0


def _torch_loss(H, g):
    Ht, gt = torch.from_numpy(H), torch.from_numpy(g)
    return lambda m: 0.5 * m.theta @ Ht @ m.theta + gt @ m.theta + 1.0


def _brute(H, g, a, b, n_alpha):
    al = np.linspace(0.0, 1.0, n_alpha)
    L = np.array([_np_loss(H, g, (1 - t) * a + t * b) for t in al])
    chord = L - ((1 - al) * L[0] + al * L[-1])
    frankle = L - 0.5 * (L[0] + L[-1])
    return al, L, chord, frankle


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_alpha", [11, 25])
def test_both_definitions_match_brute_force_numpy(seed, n_alpha):
    H, g, a, b = _quadratic(seed)
    al, L, chord, frankle = _brute(H, g, a, b, n_alpha)
    sa, sb = {"theta": torch.from_numpy(a)}, {"theta": torch.from_numpy(b)}
    bc = loss_barrier(Vec(6), sa, sb, _torch_loss(H, g), n_alpha=n_alpha)
    bf = loss_barrier(Vec(6), sa, sb, _torch_loss(H, g), n_alpha=n_alpha, definition="frankle")
    assert bc.definition == "chord" and bf.definition == "frankle"
    assert np.allclose(bc.losses, L, rtol=1e-12, atol=1e-12) and np.allclose(bf.losses, L, rtol=1e-12)
    assert bc.barrier == pytest.approx(chord.max(), abs=1e-12)
    assert bc.alpha == pytest.approx(al[int(np.argmax(chord))], abs=1e-12)
    assert bf.barrier == pytest.approx(frankle.max(), abs=1e-12)
    assert bf.alpha == pytest.approx(al[int(np.argmax(L))], abs=1e-12)
    assert abs(L[0] - L[-1]) > 0.1 and abs(bc.barrier - bf.barrier) > 1e-3  # they differ here


def test_chord_barrier_closed_form_on_a_quadratic():
    # along the segment L(alpha) = chord(alpha) - alpha (1 - alpha) d^T H d / 2: maximum at 1/2
    H, g, a, b = _quadratic(0)
    d = b - a
    bc = loss_barrier(Vec(6), {"theta": torch.from_numpy(a)}, {"theta": torch.from_numpy(b)},
                      _torch_loss(H, g), n_alpha=11)
    assert bc.barrier == pytest.approx(-(d @ H @ d) / 8, rel=1e-10) and bc.alpha == 0.5


def test_default_is_chord():
    H, g, a, b = _quadratic(1)
    sa, sb = {"theta": torch.from_numpy(a)}, {"theta": torch.from_numpy(b)}
    default = loss_barrier(Vec(6), sa, sb, _torch_loss(H, g))
    chord = loss_barrier(Vec(6), sa, sb, _torch_loss(H, g), definition="chord")
    assert default == chord


def test_monotone_segment_chord_zero_frankle_half_and_error_barrier():
    # L(alpha) = alpha (a straight line from 0 to 1), error = alpha^2 (convex, from 0 to 1)
    def loss_fn(m):
        t = m.theta.sum()
        return t, t * t
    sa, sb = {"theta": torch.zeros(1, dtype=torch.float64)}, {"theta": torch.ones(1, dtype=torch.float64)}
    bc = loss_barrier(Vec(1), sa, sb, loss_fn, n_alpha=5)
    bf = loss_barrier(Vec(1), sa, sb, loss_fn, n_alpha=5, definition="frankle")
    assert bc.barrier == pytest.approx(0.0, abs=1e-15) and bc.error_barrier == pytest.approx(0.0, abs=1e-15)
    assert bf.barrier == pytest.approx(0.5) and bf.alpha == 1.0
    assert bf.error_barrier == pytest.approx(0.5) and bf.error_alpha == 1.0


@pytest.mark.parametrize("bad", ["Frankle", "mean", None, 1])
def test_unknown_definition_raises(bad):
    with pytest.raises(ValueError, match=r"definition must be one of \('chord', 'frankle'\), got "):
        loss_barrier(Vec(1), Vec(1), Vec(1), lambda m: m.theta.sum(), definition=bad)
