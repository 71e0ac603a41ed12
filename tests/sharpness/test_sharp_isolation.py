"""A measurement leaves the model, its gradients, buffers, modes and every RNG as it found them."""
from __future__ import annotations

import copy
import importlib.util
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor.sharpness import SharpnessEstimator, isolated, unwrap

_spec = importlib.util.spec_from_file_location("sharp_models", os.path.join(os.path.dirname(__file__), "sharp_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)


def _net():
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # test helper only: nn.Module init uses the global stream
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3))
    torch.random.set_rng_state(torch_state)
    return m.train()


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)


def test_measurement_has_no_side_effects_and_matches_dense_batch_stats():
    model, (x, y) = _net(), _data()
    model[0].bias.requires_grad_(False)  # frozen: excluded
    model[4].weight.grad = torch.ones_like(model[4].weight)
    model[1].eval()
    model[1].train()  # BN in train mode: batch statistics
    before_params = [p.detach().clone() for p in model.parameters()]
    before_buffers = [b.clone() for b in model.buffers()]
    before_modes = [m.training for m in model.modules()]
    rng = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    lo = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    est = SharpnessEstimator(seed=0)
    r1 = est.measure(model, lo)
    r2 = SharpnessEstimator(seed=0).measure(model, lo)
    assert r1.sharpness == r2.sharpness  # dropout is off: deterministic
    for p, q in zip(model.parameters(), before_params):
        assert torch.equal(p, q)
    for b, c in zip(model.buffers(), before_buffers):
        assert torch.equal(b, c)  # running stats and num_batches_tracked untouched
    assert [m.training for m in model.modules()] == before_modes
    assert model[0].weight.grad is None and model[1].weight.grad is None
    assert torch.equal(model[4].weight.grad, torch.ones_like(model[4].weight))
    assert torch.equal(torch.random.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1]) and random.getstate() == rng[2]
    # dense reference: batch statistics, dropout off, frozen bias excluded
    ref_model = copy.deepcopy(model)
    ref_model[1].track_running_stats = False
    ref_model[1].running_mean = ref_model[1].running_var = None
    ref_model[3].eval()
    ref = torch.linalg.eigvalsh(sm.dense_hessian(ref_model, lambda out: nn.functional.cross_entropy(out, y), x))[-1]
    assert r1.sharpness == pytest.approx(ref.item(), rel=1e-2)


def test_grad_mode_autocast_and_inference_mode_callers():
    model, (x, y) = _net(), _data()
    model.eval()
    lo = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    ref = SharpnessEstimator().measure(model, lo).sharpness
    with torch.no_grad():
        assert SharpnessEstimator().measure(model, lo).sharpness == pytest.approx(ref, rel=1e-3)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        assert SharpnessEstimator().measure(model, lo).sharpness == pytest.approx(ref, rel=1e-3)
        assert torch.is_inference_mode_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = SharpnessEstimator().measure(model, lo)
        assert torch.is_autocast_cpu_enabled()
    assert r.sharpness == pytest.approx(ref, rel=1e-3)  # measured in float32, not bfloat16


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        q, k, v = self.qkv(x.view(-1, 4, 8)).chunk(3, dim=-1)
        return self.out(nn.functional.scaled_dot_product_attention(q, k, v).mean(1))


def _attn_case(device):
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = _Attn().to(device)
    torch.random.set_rng_state(torch_state)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 32, generator=g).to(device), torch.randint(0, 3, (16,), generator=g).to(device)
    return model, x, y


def test_sdpa_model_matches_dense_on_cpu():
    model, x, y = _attn_case("cpu")
    r = SharpnessEstimator().measure(model, lambda: nn.functional.cross_entropy(model(x), y))
    ref = torch.linalg.eigvalsh(sm.dense_hessian(model, lambda out: nn.functional.cross_entropy(out, y), x))[-1]
    assert r.converged and r.sharpness == pytest.approx(ref.item(), rel=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused SDPA kernels need CUDA")
def test_sdpa_model_on_cuda_uses_the_math_kernel():
    model, x, y = _attn_case("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        r = SharpnessEstimator().measure(model, lambda: nn.functional.cross_entropy(model(x), y))
    cpu_model, xc, yc = _attn_case("cpu")
    ref = SharpnessEstimator().measure(cpu_model, lambda: nn.functional.cross_entropy(cpu_model(xc), yc))
    assert r.sharpness == pytest.approx(ref.sharpness, rel=1e-2)


def test_ddp_wrapper_is_unwrapped(tmp_path):
    import torch.distributed as dist

    model, (x, y) = _net(), _data()
    model.eval()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap(ddp) is model
        r = SharpnessEstimator().measure(ddp, lambda: nn.functional.cross_entropy(ddp(x), y))
    finally:
        dist.destroy_process_group()
    ref = SharpnessEstimator().measure(model, lambda: nn.functional.cross_entropy(model(x), y))
    assert r.sharpness == pytest.approx(ref.sharpness, rel=1e-3)


def test_loss_fn_that_updates_the_model_is_reported():
    model, (x, y) = _net(), _data()

    def bad_loss():
        with torch.no_grad():
            model[0].weight.add_(1.0)
        return nn.functional.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match="modified parameter values in place"):
        SharpnessEstimator().measure(model, bad_loss)
    with pytest.raises(RuntimeError, match="modified parameter values"):
        with isolated(model), torch.no_grad():
            model[4].bias.mul_(2.0)
