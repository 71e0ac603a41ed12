"""The sharded Hessian-vector product and the probe split, in one process: the probe shares
partition the samples; on a model sharded by ``fully_shard`` over a one-rank gloo group (its
parameters are DTensors, its forward and backward go through FSDP) the finite-difference
product equals the dense float64 Hessian of an unsharded copy, the top eigenvalue equals
``eigvalsh``'s, and the parameters come back bitwise; every ``raise`` is exercised."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from geomonitor.sharpness.sharded import (ShardedFiniteDifferenceHVP, is_sharded, layout,
                                          probe_share)
from geomonitor.sharpness.spectrum import choose_hvp, hessian_eigenvalues


@pytest.mark.parametrize("n,world", [(32, 2), (33, 2), (7, 3), (5, 5), (40, 4)])
def test_probe_shares_partition_the_samples(n, world):
    shares = [probe_share(n, r, world) for r in range(world)]
    covered = [i for s in shares for i in range(n)[s]]
    assert covered == list(range(n))  # contiguous, in rank order, each sample once
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_probe_share_errors():
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        probe_share(3, 0, 4)
    with pytest.raises(ValueError, match="rank must be in"):
        probe_share(8, 2, 2)
    assert probe_share(8) == slice(0, 8)  # no process group: the whole probe


@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _data():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(12, 4, generator=g, dtype=torch.float64),
            torch.randn(12, 2, generator=g, dtype=torch.float64))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _dense_hessian(x, y):
    ref = _net()
    names = [n for n, _ in ref.named_parameters()]
    shapes = [p.shape for p in ref.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])

    def loss(theta):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.mse_loss(torch.func.functional_call(ref, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def _sharded_net():
    from torch.distributed.fsdp import fully_shard

    net = _net()
    fully_shard(net[0])
    fully_shard(net[2])
    return fully_shard(net)


def test_sharded_product_and_top_eigenvalue_match_the_dense_hessian(group):
    x, y = _data()
    H = _dense_hessian(x, y)
    net = _sharded_net()
    params = list(net.parameters())
    assert all(is_sharded(p) for p in params)
    before = [p.to_local().clone() for p in params]
    op = ShardedFiniteDifferenceHVP(lambda: F.mse_loss(net(x), y), params)
    assert op.dim == op.global_dim == H.shape[0]
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(op(v), H @ v, rtol=1e-5, atol=1e-7)
    assert torch.equal(op(torch.zeros(op.dim, dtype=torch.float64)), torch.zeros(op.dim, dtype=torch.float64))
    assert all(torch.equal(p.to_local(), b) for p, b in zip(params, before))  # bitwise back
    assert all(p.grad is None for p in params)
    with pytest.raises(ValueError, match="v must have shape"):
        op(torch.zeros(3, dtype=torch.float64))
    op.release()
    with pytest.raises(RuntimeError, match="released"):
        op(v)

    assert choose_hvp(net, "auto") == "fd"  # FSDP: never the double backward
    split = layout(params, 12)
    assert split.sharded and split.weight == 1.0 and split.share == slice(0, 12)
    spec = hessian_eigenvalues(lambda: F.mse_loss(net(x), y), params, tol=1e-8, max_hvp=60,
                               hvp="fd", layout=split)
    top = float(torch.linalg.eigvalsh(H)[-1])
    assert abs(float(spec.eigenvalues[0]) - top) <= 1e-5 * abs(top)
    assert spec.eigenvectors.shape == (1, H.shape[0])
    with pytest.raises(ValueError, match="double backward does not run through FSDP"):
        hessian_eigenvalues(lambda: F.mse_loss(net(x), y), params, hvp="exact", layout=split)


def test_sharded_operator_errors(group):
    x, y = _data()
    net = _sharded_net()
    plain = _net()
    with pytest.raises(ValueError, match="needs DTensor"):
        ShardedFiniteDifferenceHVP(lambda: F.mse_loss(plain(x), y), list(plain.parameters()))
    with pytest.raises(ValueError, match="partly DTensors"):
        layout(list(net.parameters()) + list(plain.parameters()), 12)
    with pytest.raises(ValueError, match="rel_step"):
        ShardedFiniteDifferenceHVP(lambda: F.mse_loss(net(x), y), list(net.parameters()), rel_step=0.0)
    op = ShardedFiniteDifferenceHVP(lambda: F.mse_loss(net(x), y) * float("nan"), list(net.parameters()))
    with pytest.raises(ValueError, match="non-finite loss"):
        op(torch.ones(op.dim, dtype=torch.float64))
    bad = ShardedFiniteDifferenceHVP(lambda: F.mse_loss(_InfGrad.apply(net(x)), y), list(net.parameters()))
    with pytest.raises(ValueError, match="non-finite entries"):
        bad(torch.ones(bad.dim, dtype=torch.float64))


class _InfGrad(torch.autograd.Function):
    """Identity whose backward is infinite: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_sharpness_family_split_arguments(group):
    from geomonitor.monitor.families.sharpness import SharpnessFamily, batch_size
    from geomonitor.monitor.family import Context
    from geomonitor.monitor.schedule import Every

    with pytest.raises(ValueError, match="split must be True or False"):
        SharpnessFamily(Every(n_steps=1), split="yes")
    assert batch_size((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert batch_size({"ids": torch.zeros(3, 7)}) == 3 and batch_size({"n": 1}) is None
    fam = SharpnessFamily(Every(n_steps=1))
    net = _net()
    ctx = Context(net, 1, {"n": 1}, lambda: {}, loss_fn=lambda m, b: m(torch.zeros(1, 4)).sum())
    with pytest.raises(TypeError, match="no tensor to split"):
        fam.run(ctx)
