"""One contract, every estimator: devices, dtypes, bad input, state round trip.

Each point-cloud estimator is registered once in ``POINT_ESTIMATORS`` as a function
``X -> float``; every check below runs on all of them. References are independent of the
code under test: the same estimator on a float64 copy of the *same rounded values* (dtype
checks), the CPU result (device checks), the clean cloud (NaN rows), and a fresh instance
restored from a ``torch.load(weights_only=True)`` state (round trips).
"""
from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from geomonitor import (
    IntrinsicDimension,
    SharpnessEstimator,
    intrinsic_dimension,
    neural_persistence,
    persistence_diagrams,
    summarize,
)


def _ph(X) -> float:
    g = torch.Generator().manual_seed(0)
    return summarize(persistence_diagrams(X, maxdim=1, n_landmarks=40, generator=g))["h1_max_persistence"]


def _h0(X) -> float:
    return summarize(persistence_diagrams(X, maxdim=0))["h0_total_persistence"]


POINT_ESTIMATORS = {
    "id_twonn": lambda X: intrinsic_dimension(X, "twonn"),
    "id_mle": lambda X: intrinsic_dimension(X, "mle", k=10),
    "id_pca": lambda X: intrinsic_dimension(X, "pca"),
    "ph_h0_total": _h0,
    "ph_h1_max": _ph,
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cloud(n: int = 120, seed: int = 0) -> torch.Tensor:
    """A noisy circle in R^8: intrinsic dimension ~1-2, one clear H1 bar."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 2 * math.pi
    X = torch.zeros(n, 8, dtype=torch.float64)
    X[:, 0], X[:, 1] = torch.cos(t), torch.sin(t)
    return X + 0.05 * torch.randn(n, 8, generator=g, dtype=torch.float64)


def _quiet(fn, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(X)


@pytest.fixture(params=sorted(POINT_ESTIMATORS))
def estimator(request):
    return POINT_ESTIMATORS[request.param]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_dtype_gives_a_finite_float_equal_to_float64_on_the_same_values(estimator, dtype):
    X = _cloud().to(dtype)
    got = _quiet(estimator, X)
    ref = _quiet(estimator, X.to(torch.float64))  # the same rounded values, in float64
    assert isinstance(got, float) and math.isfinite(got)
    assert got == pytest.approx(ref, rel=1e-3, abs=1e-4)


def test_numpy_and_torch_inputs_agree(estimator):
    X = _cloud()
    assert _quiet(estimator, X.numpy()) == pytest.approx(_quiet(estimator, X), rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_device_result_matches_cpu(estimator, device):
    X = _cloud()
    assert _quiet(estimator, X.to(device)) == pytest.approx(_quiet(estimator, X), rel=1e-6, abs=1e-8)


def test_input_is_not_modified(estimator):
    X = _cloud()
    before = X.clone()
    _quiet(estimator, X)
    assert torch.equal(X, before)


def test_nan_rows_are_dropped_never_propagated(estimator):
    X = _cloud()
    dirty = torch.cat([X, torch.full((3, 8), float("nan")), torch.full((1, 8), float("inf"))])
    assert _quiet(estimator, dirty) == pytest.approx(_quiet(estimator, X), rel=1e-9)


@pytest.mark.parametrize("bad", ["one_point", "all_nan", "rank_1", "rank_3"])
def test_bad_input_raises_a_clear_error(estimator, bad):
    X = {"one_point": torch.randn(1, 8), "all_nan": torch.full((10, 8), float("nan")),
         "rank_1": torch.randn(10), "rank_3": torch.randn(4, 5, 6)}[bad]
    with pytest.raises(ValueError, match=r"X|points|shape"):
        _quiet(estimator, X)


def test_constant_cloud_is_an_error_or_a_finite_documented_value(estimator):
    """A constant cloud has no geometry: ID estimators raise; diagrams are empty (all zeros)."""
    X = torch.ones(20, 8)
    try:
        got = _quiet(estimator, X)
    except ValueError as err:
        assert "constant" in str(err) or "distinct" in str(err) or "degenerate" in str(err)
    else:
        assert got == 0.0


# -- state round trips ------------------------------------------------------------------------
def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("method,options", [("twonn", {"discard_fraction": 0.2}), ("mle", {"k": 7}),
                                            ("pca", {})])
def test_intrinsic_dimension_state_round_trip(method, options):
    X = _cloud()
    est = IntrinsicDimension(method, **options)
    fresh = IntrinsicDimension()  # default config, overwritten by the loaded state
    fresh.load_state_dict(_roundtrip(est.state_dict()))
    assert fresh(X) == est(X) == pytest.approx(intrinsic_dimension(X, method, **options), rel=1e-12)


def test_sharpness_estimator_state_round_trip_continues_the_same_series():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(32, 1, generator=torch.Generator().manual_seed(2))

    def loss():
        return torch.nn.functional.mse_loss(model(x), y)

    a = SharpnessEstimator(seed=3)
    a.measure(model, loss, lr=0.1)
    b = SharpnessEstimator(seed=99)
    b.load_state_dict(_roundtrip(a.state_dict()))
    ra, rb = a.measure(model, loss, lr=0.1), b.measure(model, loss, lr=0.1)
    assert (ra.sharpness, ra.n_hvp, ra.eos_ratio) == (rb.sharpness, rb.n_hvp, rb.eos_ratio)
    H = torch.autograd.functional.hessian(
        lambda *ps: torch.nn.functional.mse_loss(torch.func.functional_call(
            model, dict(zip([n for n, _ in model.named_parameters()], ps)), (x,)), y),
        tuple(p.detach() for p in model.parameters()))
    n = sum(p.numel() for p in model.parameters())
    sizes = [p.numel() for p in model.parameters()]
    dense = torch.cat([torch.cat([H[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1)
                       for i in range(len(sizes))], 0)
    assert dense.shape == (n, n)
    assert ra.sharpness == pytest.approx(float(torch.linalg.eigvalsh(dense.double())[-1]), rel=1e-2)


def test_neural_persistence_contract_dtypes_and_bad_input():
    W = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = neural_persistence(W)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        Wd = W.to(dtype)
        assert neural_persistence(Wd) == pytest.approx(neural_persistence(Wd.to(torch.float64)), rel=1e-6)
    assert neural_persistence(W.numpy()) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="NaN or Inf"):
        neural_persistence(torch.tensor([[1.0, float("nan")], [0.5, 0.2]]))
    with pytest.raises(ValueError, match="all"):
        neural_persistence(torch.zeros(3, 3))



# -- model- and weight-level estimators on every device ----------------------------------------
def _sharpness_case(device: str):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(32, 1, generator=torch.Generator().manual_seed(2))
    model, x, y = model.double().to(device), x.double().to(device), y.double().to(device)
    return model, lambda: torch.nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("device", DEVICES)
def test_sharpness_on_device_matches_cpu(device, optimizer):
    results = []
    for dev in ("cpu", device):
        model, loss = _sharpness_case(dev)
        opt = (torch.optim.SGD(model.parameters(), lr=0.1) if optimizer == "sgd"
               else torch.optim.Adam(model.parameters(), lr=0.01))
        if optimizer == "adam":  # Adam's preconditioner needs a second-moment estimate
            loss().backward()
            opt.step()
            opt.zero_grad()
        est = SharpnessEstimator(k=2, tol=1e-8, max_hvp=300, seed=3)
        first = est.measure(model, loss, optimizer=opt)
        warm = est.measure(model, loss, optimizer=opt)  # warm start from the stored vectors
        assert first.converged and warm.converged
        state = _roundtrip(est.state_dict())
        assert state["eigenvectors"].device.type == "cpu"  # a checkpoint loads on any machine
        fresh = SharpnessEstimator()
        fresh.load_state_dict(state)
        again, cont = fresh.measure(model, loss, optimizer=opt), est.measure(model, loss, optimizer=opt)
        assert (again.sharpness, again.n_hvp) == (cont.sharpness, cont.n_hvp)
        results.append((first, warm))
    (cpu_first, cpu_warm), (dev_first, dev_warm) = results
    assert dev_first.sharpness == pytest.approx(cpu_first.sharpness, rel=1e-6)
    assert dev_warm.sharpness == pytest.approx(cpu_warm.sharpness, rel=1e-6)
    assert dev_warm.eos_ratio == pytest.approx(cpu_warm.eos_ratio, rel=1e-6)
    assert dev_first.preconditioned == (optimizer == "adam")


@pytest.mark.parametrize("device", DEVICES)
def test_sharpness_stopped_early_pads_missing_ritz_values_with_nan_on_device(device):
    model, loss = _sharpness_case(device)
    res = SharpnessEstimator(k=3, max_hvp=2).measure(model, loss, lr=0.1)
    assert not res.converged and "only 2 of k=3" in res.reason
    assert res.eigenvalues.device.type == device and bool(torch.isnan(res.eigenvalues[2]))


@pytest.mark.parametrize("device", DEVICES)
def test_neural_persistence_on_device_matches_cpu(device):
    W = torch.randn(16, 9, generator=torch.Generator().manual_seed(0))
    assert neural_persistence(W.to(device)) == pytest.approx(neural_persistence(W), rel=1e-6)
