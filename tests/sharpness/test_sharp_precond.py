"""Stability thresholds against simulated optimisers, Adam preconditioned sharpness against dense."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from geomonitor.sharpness import SharpnessEstimator, adam_preconditioner, hessian_eigenvalues, stability_threshold

_spec = importlib.util.spec_from_file_location("sharp_models", os.path.join(os.path.dirname(__file__), "sharp_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


def _diverges(make_opt, curvature: float, steps: int = 2000) -> bool:
    """Run the real torch optimiser on 0.5 * curvature * theta^2 and see whether it blows up."""
    th = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = make_opt([th])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * th**2).sum().backward()
        opt.step()
    return abs(th.item()) > 1.0


@pytest.mark.parametrize(
    "kw", [{}, {"momentum": 0.9}, {"momentum": 0.5, "dampening": 0.3}, {"momentum": 0.9, "nesterov": True}]
)
def test_sgd_threshold_is_the_edge_of_the_real_optimiser(kw):
    lr = 0.1
    thr = stability_threshold(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, **kw))
    assert not thr.preconditioned
    make_opt = lambda ps: torch.optim.SGD(ps, lr=lr, **kw)  # noqa: E731
    assert not _diverges(make_opt, 0.97 * thr.value)
    assert _diverges(make_opt, 1.03 * thr.value)


def test_gd_and_adam_thresholds_follow_the_papers():
    assert stability_threshold(None, 0.5).value == pytest.approx(4.0)
    p = torch.nn.Parameter(torch.zeros(1))
    thr = stability_threshold(torch.optim.Adam([p], lr=0.01))
    assert thr.preconditioned and thr.value == pytest.approx(38 / 0.01)  # (2 + 2*0.9) / (0.1 * lr)
    thr = stability_threshold(torch.optim.AdamW([p], lr=0.01, betas=(0.5, 0.999)), lr=0.02)
    assert thr.value == pytest.approx(3.0 / (0.5 * 0.02))
    assert stability_threshold(torch.optim.RMSprop([p], lr=0.01)).value is None
    assert stability_threshold().value is None


def test_threshold_errors():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.2}])
    with pytest.raises(ValueError, match="disagree on 'lr'"):
        stability_threshold(opt)
    assert stability_threshold(opt, params=[b]).value == pytest.approx(10.0)
    with pytest.raises(ValueError, match="lr must be a finite float >= 0"):
        stability_threshold(None, -1.0)
    opt = torch.optim.SGD([a], lr=0.1)
    opt.param_groups[0]["lr"] = -0.1
    with pytest.raises(ValueError, match="optimizer's lr must be >= 0"):
        stability_threshold(opt)


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.0),
                                  lambda p: torch.optim.Adam(p, lr=0.0)])
def test_zero_lr_has_no_edge_of_stability(make):
    # the last step of a linear schedule: sharpness is still measured, eos_ratio is not
    a = torch.nn.Parameter(torch.zeros(1))
    opt = make([a])
    assert stability_threshold(opt).value is None
    assert stability_threshold(opt, 0.0).value is None
    assert "lr is 0" in stability_threshold(opt).rule


def test_adam_preconditioned_sharpness_matches_dense():
    model, x, _, lo = sm.make("tanh")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        lo(model(x)).backward()
        opt.step()
    # independent P_t from the optimiser's state, written out as in Cohen et al. (2022)
    b1, b2, eps = 0.9, 0.999, 1e-8
    diag = []
    for p in model.parameters():
        st = opt.state[p]
        t = float(st["step"])
        diag.append(((1 - b1**t) * (torch.sqrt(st["exp_avg_sq"].double() / (1 - b2**t)) + eps)).reshape(-1))
    d = torch.cat(diag)
    torch.testing.assert_close(adam_preconditioner(opt, list(model.parameters())), d)
    H = sm.dense_hessian(model, lo, x)
    ref = torch.linalg.eigvals(torch.diag(1 / d) @ H).real.max().item()  # top eigenvalue of P^{-1} H
    r = SharpnessEstimator(seed=0).measure(model, lambda: lo(model(x)), optimizer=opt)
    assert r.preconditioned and r.converged
    assert r.sharpness == pytest.approx(ref, rel=1e-2)
    assert r.threshold == pytest.approx(38 / 1e-3)
    assert r.eos_ratio == pytest.approx(ref / (38 / 1e-3), rel=1e-2)
    spec = hessian_eigenvalues(lambda: lo(model(x)), model, 1, scaling=d.rsqrt())
    assert spec.eigenvalues[0].item() == pytest.approx(ref, rel=1e-2)


def test_adam_before_first_step_degrades_to_raw_sharpness():
    model, x, _, lo = sm.make("bn")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ref = torch.linalg.eigvalsh(sm.dense_hessian(model, lo, x))[-1].item()
    r = SharpnessEstimator().measure(model, lambda: lo(model(x)), optimizer=opt)
    assert not r.preconditioned and r.eos_ratio is None and r.threshold is None
    assert "no Adam state" in r.note
    assert r.sharpness == pytest.approx(ref, rel=1e-2)
    with pytest.raises(ValueError, match="has no Adam state"):
        adam_preconditioner(opt, list(model.parameters()))
    with pytest.raises(ValueError, match="must be torch.optim.Adam or AdamW"):
        adam_preconditioner(torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))
