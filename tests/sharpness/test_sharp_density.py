"""spectral_density (stochastic Lanczos quadrature) against the dense float64 Hessian."""
from __future__ import annotations

import importlib.util
import os
import random

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from geomonitor.sharpness import SpectralDensity, hessian_trace, spectral_density

_spec = importlib.util.spec_from_file_location("sharp_models", os.path.join(os.path.dirname(__file__), "sharp_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


@pytest.fixture(scope="module", params=["bn", "relu"])
def case(request):
    model, x, _, lo = sm.make(request.param)
    ev = torch.linalg.eigvalsh(sm.dense_hessian(model, lo, x)).numpy()
    return model, (lambda: lo(model(x))), ev

_trapz = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _gap_rule(values: np.ndarray, gap: float) -> int:
    """The documented outlier rule applied to the true eigenvalues (uniform weights), written
    out independently: the last relative gap >= gap from the top that lies above the median."""
    desc = np.sort(values)[::-1]
    rng = desc[0] - desc[-1]
    median = np.median(values)
    count = 0
    for n in range(1, desc.size):
        if desc[n - 1] - desc[n] >= gap * rng and desc[n] >= median:
            count = n
    return count


@pytest.mark.parametrize("hvp", ["exact", "fd"])
def test_measure_matches_dense_spectrum(case, hvp):
    model, loss_fn, ev = case
    sd = spectral_density(model, loss_fn, n_iter=40, n_vectors=6, seed=1, hvp=hvp)
    assert sd.hvp == hvp and sd.dim == ev.size and sd.n_hvp == 6 * 40
    assert abs(float(sd.weights.sum()) - 1) < 1e-12
    for w in sd.weights_per_vector:
        assert abs(float(w.sum()) - 1) < 1e-12
    span = ev[-1] - ev[0]
    w1 = wasserstein_distance(sd.nodes.numpy(), ev, u_weights=sd.weights.numpy())
    assert w1 < 0.02 * span
    # not vacuous: a point mass at the mean eigenvalue is much farther
    assert wasserstein_distance([ev.mean()], ev) > 5 * w1
    assert abs(float(sd.nodes.max()) - ev[-1]) < 0.01 * ev[-1]
    assert abs(float(sd.nodes.min()) - ev[0]) < 0.01 * span
    assert sd.n_outliers() == _gap_rule(ev, 0.05) > 0


def test_synthetic_outliers_closed_form():
    # 0.5 w^T A w: Hessian A with a bulk of 300 eigenvalues uniform in [0, 1] and three
    # outliers at 4, 6, 9 (a closed-form spectrum; fd products are exact on a quadratic)
    gen = torch.Generator().manual_seed(3)
    ev = torch.cat([torch.linspace(0, 1, 300, dtype=torch.float64), torch.tensor([4.0, 6.0, 9.0], dtype=torch.float64)])
    U, _ = torch.linalg.qr(torch.randn(303, 303, generator=gen, dtype=torch.float64))
    A = U @ torch.diag(ev) @ U.T
    model = torch.nn.Linear(303, 1, bias=False).double()
    w = model.weight
    sd = spectral_density(model, lambda: 0.5 * (w @ A @ w.T).sum(), n_iter=30, n_vectors=10, seed=0)
    assert sd.hvp == "fd"
    assert sd.n_outliers() == 3 and _gap_rule(ev.numpy(), 0.05) == 3
    top = np.sort(sd.nodes.numpy())[::-1]
    assert np.allclose(np.unique(np.round(top[top > 2], 6)), [4.0, 6.0, 9.0], atol=1e-6)
    assert wasserstein_distance(sd.nodes.numpy(), ev.numpy(), u_weights=sd.weights.numpy()) < 0.02 * 9
    assert abs(sd.trace - float(ev.sum())) < 4 * sd.trace_stderr
    # a larger gap threshold keeps only the outlier separated by >= 0.4 * range: none here
    # (gaps 3, 2, 3 against a range of 9 are all < 3.6)
    assert sd.n_outliers(gap=0.4) == 0


def test_trace_is_hutchinson_and_within_error():
    model, x, _, lo = sm.make("bn")
    ref = float(torch.trace(sm.dense_hessian(model, lo, x)))
    sd = spectral_density(model, lambda: lo(model(x)), n_iter=1, n_vectors=200, seed=0, hvp="exact")
    assert sd.n_hvp == 200 and sd.trace_stderr is not None and sd.trace_stderr < 0.2 * abs(ref)
    assert abs(sd.trace - ref) < 4 * sd.trace_stderr
    # Rademacher start vectors: P q^T H q = z^T H z, Hutchinson's estimator on the same probes
    hut = hessian_trace(lambda: lo(model(x)), model, n_samples=200, generator=torch.Generator().manual_seed(0))
    assert abs(sd.trace - hut.estimate) < 1e-5 * abs(ref)
    one = spectral_density(model, lambda: lo(model(x)), n_iter=3, n_vectors=1)
    assert one.trace_stderr is None


def test_density_integrates_to_one_and_matches_smoothed_truth(case):
    model, loss_fn, ev = case
    sd = spectral_density(model, loss_fn, n_iter=40, n_vectors=6, seed=0, hvp="exact")
    span = ev[-1] - ev[0]
    sigma = 0.02 * span
    grid = np.linspace(ev[0] - 6 * sigma, ev[-1] + 6 * sigma, 4001)
    dens = sd.density(torch.from_numpy(grid), sigma).numpy()
    assert dens.shape == grid.shape and (dens >= 0).all()
    assert abs(_trapz(dens, grid) - 1) < 1e-3
    # smoothed true density, written out with numpy
    truth = np.exp(-0.5 * ((grid[:, None] - ev[None, :]) / sigma) ** 2).mean(1) / (sigma * np.sqrt(2 * np.pi))
    assert _trapz(np.abs(dens - truth), grid) < 0.15  # L1 distance (0.03 and 0.02 seen)
    assert sd.density(list(grid[:3]), sigma).dtype == torch.float64


def test_seed_reproducible_generator_advanced_and_nothing_touched():
    model, x, y, lo = sm.make("bn")
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a = spectral_density(model, lambda: lo(model(x)), n_iter=10, n_vectors=3, seed=4)
    b = spectral_density(model, lambda: lo(model(x)), n_iter=10, n_vectors=3, seed=4)
    c = spectral_density(model, lambda: lo(model(x)), n_iter=10, n_vectors=3, seed=5)
    for u, v in zip(a.nodes_per_vector + a.weights_per_vector, b.nodes_per_vector + b.weights_per_vector):
        assert torch.equal(u, v)
    assert not torch.equal(a.nodes, c.nodes)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert model.training and torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[3].weight.grad is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    gen = torch.Generator().manual_seed(4)
    d = spectral_density(model, lambda: lo(model(x)), n_iter=10, n_vectors=3, generator=gen, seed=99)
    assert torch.equal(d.nodes, a.nodes)
    assert not torch.equal(gen.get_state(), torch.Generator().manual_seed(4).get_state())


def test_gaussian_probe_and_breakdown():
    # a Hessian with 4 distinct eigenvalues: the Krylov space is invariant after 4 steps, the
    # quadrature stops there and is exact
    A = torch.diag(torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0, 5.0], dtype=torch.float64))
    model = torch.nn.Linear(6, 1, bias=False).double()
    w = model.weight
    sd = spectral_density(model, lambda: 0.5 * (w @ A @ w.T).sum(), n_iter=50, n_vectors=2,
                          probe="gaussian", hvp="exact")
    assert sd.n_hvp == 8
    for t in sd.nodes_per_vector:
        assert np.allclose(t.numpy(), [1.0, 2.0, 3.0, 5.0], atol=1e-10)
    # P q^T A q lies between P lambda_min and P lambda_max; the repeated eigenvalues' weights
    # are the squared norms of q's projections, both nonzero for a Gaussian q
    assert 6 * 1.0 < sd.trace < 6 * 5.0
    assert all(bool((w > 0).all()) for w in sd.weights_per_vector)


def test_every_raise():
    model, x, _, lo = sm.make("bn")
    f = lambda: lo(model(x))  # noqa: E731
    bad = [({"n_iter": 0}, "n_iter must be a positive int"), ({"n_iter": True}, "n_iter must be"),
           ({"n_vectors": 1.5}, "n_vectors must be a positive int"), ({"seed": "a"}, "seed must be an int"),
           ({"probe": "sphere"}, "probe must be one of"), ({"hvp": "dense"}, "hvp must be one of"),
           ({"generator": 3}, "generator must be a torch.Generator")]
    for kwargs, msg in bad:
        with pytest.raises(ValueError, match=msg):
            spectral_density(model, f, **kwargs)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        spectral_density(f, f)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        spectral_density(model, lambda: model(x), hvp="exact")
    frozen = torch.nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="has no tensor that requires grad"):
        spectral_density(frozen, lambda: frozen(torch.ones(1, 2)).sum())
    sd = spectral_density(model, f, n_iter=5, n_vectors=2)
    assert isinstance(sd, SpectralDensity)
    for sigma in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="sigma must be a positive finite float"):
            sd.density([0.0, 1.0], sigma)
    for grid in ([[0.0, 1.0]], [0.0, float("inf")]):
        with pytest.raises(ValueError, match="grid must be a 1-D array of finite values"):
            sd.density(grid, 0.1)
    for gap in (0, 1, -0.1, True):
        with pytest.raises(ValueError, match=r"gap must be a float in \(0, 1\)"):
            sd.n_outliers(gap)
