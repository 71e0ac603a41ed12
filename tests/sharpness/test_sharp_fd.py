"""The finite-difference Hessian-vector product and the backend choice, against the dense
float64 Hessian (torch.func.hessian) and the double-backward operator."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch import nn

from geomonitor.sharpness import SharpnessEstimator, hessian_eigenvalues
from geomonitor.sharpness.fd_hvp import FiniteDifferenceHVP, default_rel_step
from geomonitor.sharpness.lanczos import lanczos_top
from geomonitor.sharpness.spectrum import choose_hvp, kinked_modules

_spec = importlib.util.spec_from_file_location("sharp_models", os.path.join(os.path.dirname(__file__), "sharp_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-7), (torch.float32, 1e-2)])
@pytest.mark.parametrize("name", ["tanh", "cnn", "bn"])
def test_products_match_the_dense_hessian(name, dtype, tol):
    model, x, _, lo = sm.make(name)
    H = sm.dense_hessian(model, lo, x)
    model = model.to(dtype)
    xd = x.to(dtype)
    op = FiniteDifferenceHVP(lambda: lo(model(xd)), list(model.parameters()))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
        hv = op(v.to(dtype)).double()
        ref = H @ v
        assert (hv - ref).norm() / ref.norm() < tol
    assert op.n_hvp == 3 and op.dtype == dtype
    assert abs(float(op.loss) - float(lo(model(xd)))) < 1e-4   # L(theta) + O(eps^2)


def test_parameters_are_restored_bit_for_bit_and_versions_do_not_move():
    model, x, _, lo = sm.make("tanh")
    before = [p.detach().clone() for p in model.parameters()]
    versions = [p._version for p in model.parameters()]
    op = FiniteDifferenceHVP(lambda: lo(model(x)), list(model.parameters()))
    op(torch.randn(op.dim, generator=torch.Generator().manual_seed(1)))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert [p._version for p in model.parameters()] == versions
    assert all(p.grad is None for p in model.parameters())


def test_a_loss_that_raises_leaves_the_parameters_restored():
    model, x, _, lo = sm.make("tanh")
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def loss():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return lo(model(x))

    op = FiniteDifferenceHVP(loss, list(model.parameters()))
    with pytest.raises(RuntimeError, match="boom"):
        op(torch.ones(op.dim))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_the_step_is_relative_to_the_parameter_norm():
    assert default_rel_step(torch.float32) == pytest.approx((2.0**-24) ** (1 / 3) / 100)
    assert default_rel_step(torch.float64) == pytest.approx((2.0**-53) ** (1 / 3) / 100)
    p = nn.Parameter(torch.full((4,), 3.0, dtype=torch.float64))   # ||theta|| = 6
    op = FiniteDifferenceHVP(lambda: (p**3).sum(), [p], rel_step=1e-3)
    assert op.epsilon == pytest.approx(6e-3)
    # x^3: H = diag(6 x); the central difference is exact for a cubic (no 4th derivative)
    v = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(op(v), torch.tensor([18.0, 0, 0, 0], dtype=torch.float64), atol=1e-9)
    assert torch.equal(op(torch.zeros(4, dtype=torch.float64)), torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("name", ["tanh", "cnn"])
def test_lanczos_on_differences_finds_the_dense_top_eigenvalue(name):
    model, x, _, lo = sm.make(name)
    ref = torch.linalg.eigvalsh(sm.dense_hessian(model, lo, x))[-1].item()
    spec = hessian_eigenvalues(lambda: lo(model(x)), model, 1, hvp="fd", tol=1e-3,
                               generator=torch.Generator().manual_seed(0))
    assert spec.converged
    assert abs(spec.eigenvalues[0].item() / ref - 1) < 1e-3


def test_on_a_relu_network_the_differences_and_the_exact_product_may_differ_and_auto_is_exact():
    relu, _, _, _ = sm.make("relu")
    tanh, _, _, _ = sm.make("tanh")
    assert kinked_modules(relu) == ["1", "3"] and kinked_modules(tanh) == []
    assert choose_hvp(relu) == "exact" and choose_hvp(tanh) == "fd"
    assert choose_hvp(relu, "fd") == "fd"
    enc = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)             # relu by default
    gelu = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, activation="gelu")
    assert choose_hvp(enc) == "exact" and choose_hvp(gelu) == "fd"
    assert choose_hvp(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2))) == "exact"


def test_the_estimator_records_the_backend_and_both_agree_on_a_smooth_model():
    model, x, y, lo = sm.make("tanh")
    ref = torch.linalg.eigvalsh(sm.dense_hessian(model, lo, x))[-1].item()
    got = {}
    for hvp in ("fd", "exact", "auto"):
        est = SharpnessEstimator(tol=1e-3, seed=0, hvp=hvp)
        r = est.measure(model, lambda: lo(model(x)))
        got[hvp] = r
        assert abs(r.sharpness / ref - 1) < 1e-3, hvp
    assert (got["fd"].hvp, got["exact"].hvp, got["auto"].hvp) == ("fd", "exact", "fd")


def test_min_cold_lets_a_cold_start_stop_earlier():
    A = torch.diag(torch.linspace(0.0, 1.0, 200, dtype=torch.float64))
    A[0, 0] = 10.0   # an isolated top eigenvalue: found at once
    res = lanczos_top(lambda v: A @ v, 200, 1, tol=1e-2, dtype=torch.float64, min_cold=3,
                      generator=torch.Generator().manual_seed(0))
    default = lanczos_top(lambda v: A @ v, 200, 1, tol=1e-2, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0))
    assert res.converged and res.n_matvec < default.n_matvec == 12
    assert abs(res.eigenvalues[0].item() - 10.0) < 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"hvp": "double"}, r"hvp must be one of \('auto', 'fd', 'exact'\); got 'double'"),
    ({"min_cold": 1}, r"min_cold must be None or an int >= k \+ 1 = 2; got 1"),
    ({"min_cold": True}, r"min_cold must be None or an int >= k \+ 1 = 2; got True"),
])
def test_bad_estimator_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SharpnessEstimator(**kwargs)


def test_bad_backend_and_arguments_raise():
    model, x, _, lo = sm.make("tanh")
    with pytest.raises(ValueError, match=r"hvp must be 'fd' or 'exact' here; got 'auto'"):
        hessian_eigenvalues(lambda: lo(model(x)), model, hvp="auto")
    with pytest.raises(ValueError, match=r"hvp must be one of"):
        choose_hvp(model, "fast")
    with pytest.raises(ValueError, match=r"min_cold must be an int >= k \+ 1 = 2; got 0"):
        lanczos_top(lambda v: v, 5, 1, min_cold=0)
    with pytest.raises(ValueError, match=r"rel_step must be a positive finite float or None; got 0"):
        FiniteDifferenceHVP(lambda: lo(model(x)), list(model.parameters()), rel_step=0)
    op = FiniteDifferenceHVP(lambda: lo(model(x)), list(model.parameters()))
    with pytest.raises(ValueError, match=r"v must have shape"):
        op(torch.ones(3))
    op.release()
    with pytest.raises(RuntimeError, match="released"):
        op(torch.ones(op.dim))


@pytest.mark.parametrize("loss, match", [
    (lambda p: torch.ones(2) * p.sum(), r"loss_fn must return a scalar tensor; got \(2,\)"),
    (lambda p: p.sum() * float("inf"), r"non-finite loss"),
    (lambda p: torch.tensor(1.0), r"does not depend on params \(it does not require grad\)"),
])
def test_bad_losses_raise_at_the_first_product(loss, match):
    p = nn.Parameter(torch.ones(3))
    op = FiniteDifferenceHVP(lambda: loss(p), [p])
    with pytest.raises(ValueError, match=match):
        op(torch.ones(3))
    assert torch.equal(p.detach(), torch.ones(3))


def test_an_unused_parameter_raises_when_no_gradient_reaches_any():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    op = FiniteDifferenceHVP(lambda: (p * 0).sum() + (q.detach() ** 2).sum() + torch.zeros((), requires_grad=True),
                             [q])
    with pytest.raises(ValueError, match=r"every gradient is None"):
        op(torch.ones(2))


class _FunctionalDropout(nn.Module):
    """Dropout that no module switch turns off (as in attention kernels): F.dropout(training=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(nn.functional.dropout(torch.tanh(self.fc1(x)), 0.5, training=True))


def test_every_difference_sees_the_same_dropout_masks_as_the_exact_operator():
    from geomonitor.sharpness import HVPOperator

    torch.manual_seed(0)  # test set-up only: module init
    model = _FunctionalDropout().double()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    loss = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    params = list(model.parameters())
    torch.manual_seed(5)
    exact = HVPOperator(loss, params)          # its one forward draws the masks of seed 5
    torch.manual_seed(5)
    fd = FiniteDifferenceHVP(loss, params)     # every forward replays the state of seed 5
    state = torch.get_rng_state()
    v = torch.randn(fd.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = exact(v)
    assert (fd(v) - ref).norm() / ref.norm() < 1e-7
    assert (fd(v) - ref).norm() / ref.norm() < 1e-7     # and again: the same masks every time
    assert torch.equal(torch.get_rng_state(), state)     # the caller's stream is not consumed
    torch.manual_seed(6)
    other = HVPOperator(loss, params)          # other masks: another matrix (the test can fail)
    assert (other(v) - ref).norm() / ref.norm() > 1e-2


def test_a_gpt2_with_attention_dropout_gets_the_exact_top_eigenvalue_from_differences():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=16)
    torch.manual_seed(0)  # test set-up only: module init
    model = transformers.GPT2LMHeadModel(cfg)   # dropout 0.1, also inside attention
    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    loss = lambda: model(input_ids=ids, labels=ids).loss  # noqa: E731
    assert choose_hvp(model) == "fd"            # gelu_new: smooth
    got = {h: SharpnessEstimator(tol=1e-4, max_hvp=60, hvp=h, seed=0).measure(model, loss)
           for h in ("fd", "exact")}
    assert got["fd"].converged and got["exact"].converged
    assert abs(got["fd"].sharpness / got["exact"].sharpness - 1) < 1e-3
