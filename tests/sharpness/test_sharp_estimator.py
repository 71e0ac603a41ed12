"""SharpnessEstimator: warm start across training steps, eos_ratio, state_dict round trip."""
from __future__ import annotations

import importlib.util
import io
import os

import pytest
import torch

from geomonitor.sharpness import SharpnessEstimator

_spec = importlib.util.spec_from_file_location("sharp_models", os.path.join(os.path.dirname(__file__), "sharp_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


def _sgd_step(model, lo, x, opt):
    opt.zero_grad(set_to_none=True)
    lo(model(x)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_warm_start_and_eos_ratio_against_dense():
    model, x, _, lo = sm.make("relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    est = SharpnessEstimator(seed=0)
    cold = est.measure(model, lambda: lo(model(x)), optimizer=opt)
    _sgd_step(model, lo, x, opt)
    warm = est.measure(model, lambda: lo(model(x)), optimizer=opt)
    ref = torch.linalg.eigvalsh(sm.dense_hessian(model, lo, x))[-1].item()
    assert warm.converged and warm.n_hvp <= 5 < cold.n_hvp
    assert warm.sharpness == pytest.approx(ref, rel=1e-2)
    assert warm.threshold == pytest.approx(3.8 / 0.1)  # (2 + 2*0.9) / lr, heavy ball
    assert warm.eos_ratio == pytest.approx(ref * 0.1 / 3.8, rel=1e-2)
    plain = SharpnessEstimator().measure(model, lambda: lo(model(x)), lr=0.5)
    assert plain.eos_ratio == pytest.approx(ref * 0.5 / 2, rel=1e-2)
    assert SharpnessEstimator().measure(model, lambda: lo(model(x))).eos_ratio is None


def test_state_dict_round_trip_through_weights_only_load():
    model, x, _, lo = sm.make("tanh")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    est = SharpnessEstimator(k=2, tol=1e-4, max_hvp=50, seed=7)
    est.measure(model, lambda: lo(model(x)), optimizer=opt)
    _sgd_step(model, lo, x, opt)
    buf = io.BytesIO()
    torch.save(est.state_dict(), buf)
    buf.seek(0)
    loaded = SharpnessEstimator()
    loaded.load_state_dict(torch.load(buf, weights_only=True))
    assert (loaded.k, loaded.tol, loaded.max_hvp, loaded.seed, loaded.n_measurements) == (2, 1e-4, 50, 7, 1)
    a = est.measure(model, lambda: lo(model(x)), optimizer=opt)
    b = loaded.measure(model, lambda: lo(model(x)), optimizer=opt)
    assert a.n_hvp == b.n_hvp and torch.equal(a.eigenvalues, b.eigenvalues)  # same warm start, same generator
    fresh = SharpnessEstimator(k=2, tol=1e-4, max_hvp=50, seed=7).measure(model, lambda: lo(model(x)), optimizer=opt)
    assert fresh.n_hvp > a.n_hvp  # the warm start did travel


def test_errors_and_degradations():
    for kwargs, msg in [({"k": 0}, "k must be"), ({"tol": 0.0}, "tol must be"), ({"max_hvp": -1}, "max_hvp must be"),
                        ({"seed": "a"}, "seed must be an int")]:
        with pytest.raises(ValueError, match=msg):
            SharpnessEstimator(**kwargs)
    est = SharpnessEstimator()
    with pytest.raises(ValueError, match="state must be a dict with keys"):
        est.load_state_dict({"k": 1})
    bad = est.state_dict() | {"eigenvectors": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"state\['eigenvectors'\] must be None or a \(k, P\) tensor"):
        est.load_state_dict(bad)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        est.measure(lambda: 0, lambda: torch.zeros(()))
    model, x, _, lo = sm.make("bn")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="model.parameters\\(\\) has no tensor that requires grad"):
        est.measure(model, lambda: lo(model(x)))
    model, x, _, lo = sm.make("bn")
    r = est.measure(model, lambda: lo(model(x)), optimizer=torch.optim.RMSprop(model.parameters(), lr=0.01))
    assert r.eos_ratio is None and "no known threshold for RMSprop" in r.note
    small = SharpnessEstimator(k=2, max_hvp=1).measure(model, lambda: lo(model(x)))
    assert not small.converged and "only 1 of k=2" in small.reason
    # a different model: the stored warm start (wrong size) is dropped, not misused
    other, xo, _, loo = sm.make("tanh")
    ref = torch.linalg.eigvalsh(sm.dense_hessian(other, loo, xo))[-1].item()
    assert est.measure(other, lambda: loo(other(xo))).sharpness == pytest.approx(ref, rel=1e-2)
    est.reset()
    assert est.state_dict()["eigenvectors"] is None
