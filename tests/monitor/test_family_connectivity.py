"""ConnectivityFamily: the trajectory barrier on a closed form, the first measurement, the
instability analysis against a hand-built pair of children, the observer effect (bitwise),
state_dict round trips and every raise."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.connectivity import loss_barrier
from geomonitor.monitor.families.connectivity import ConnectivityFamily, copy_optimizer, take
from geomonitor.monitor.family import Context
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every

BARRIER = metric_key("connectivity", summary="barrier")
ALPHA = metric_key("connectivity", summary="barrier_alpha")
DIST = metric_key("connectivity", summary="distance")
INST = metric_key("connectivity", summary="instability_barrier")


def ctx(model, step, batch, *, optimizer=None, loss_fn=None):
    return Context(model, step, batch, lambda: {}, optimizer=optimizer, loss_fn=loss_fn)


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))


def double_well(m, batch):
    return (m.theta ** 2 - 1) ** 2


def test_first_measurement_stores_then_barrier_of_the_segment():
    fam = ConnectivityFamily(Every(n_steps=1), n_alpha=11)
    model = Scalar()
    assert fam.setup(model) is None
    first = fam.run(ctx(model, 1, None, loss_fn=double_well))
    assert first.metrics == {} and not first.errors and fam.snapshot_bytes == 8
    with torch.no_grad():
        model.theta.fill_(1.0)
    m = fam.run(ctx(model, 2, None, loss_fn=double_well)).metrics
    assert m[BARRIER] == pytest.approx(1.0) and m[ALPHA] == 0.5 and m[DIST] == pytest.approx(2.0)
    assert metric_key("connectivity", summary="barrier_error") not in m
    # the next segment starts at theta = 1: no movement, no barrier
    m = fam.run(ctx(model, 3, None, loss_fn=double_well)).metrics
    assert m[BARRIER] == 0.0 and m[DIST] == 0.0


def test_error_pairs_and_family_loss_fn_take_precedence():
    def pair(m, batch):
        return (m.theta ** 2 - 1) ** 2, torch.tensor(float(m.theta.abs() < 0.5))

    fam = ConnectivityFamily(Every(n_steps=1), n_alpha=5, loss_fn=pair)
    model = Scalar()
    fam.run(ctx(model, 1, None, loss_fn=lambda m, b: 1 / 0))
    with torch.no_grad():
        model.theta.fill_(1.0)
    m = fam.run(ctx(model, 2, None, loss_fn=lambda m, b: 1 / 0)).metrics
    # alpha = 1/2: theta = 0, error 1 above a chord of 0
    assert m[metric_key("connectivity", summary="barrier_error")] == 1.0


def test_disabled_without_a_loss_function():
    fam = ConnectivityFamily(Every(n_steps=1))
    model = Scalar()
    assert "connectivity needs the training loss" in fam.setup(model, loss_fn=None)
    assert fam.setup(model) is None  # unknown at set-up: decided at the first measurement
    out = fam.run(ctx(model, 1, None))
    assert not fam.enabled and out.metrics == {}
    assert "ctx.loss_fn is None" in str(out.errors[0])
    assert fam.setup(nn.ReLU()) == "connectivity needs floating-point parameters; the model has none"


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 3))


def _data(n=48):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _snapshot(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            copy.deepcopy(opt.state_dict()),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [m.training for m in model.modules()],
            torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())


def _assert_same(a, b):
    sa, oa, ga, ma, ta, na, pa = a
    sb, ob, gb, mb, tb, nb, pb = b
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][i][k]))
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(ga, gb))
    assert ma == mb and torch.equal(ta, tb) and (na == nb).all() and pa == pb


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_observer_effect_is_nil(opt_cls):
    """run() leaves model, BatchNorm stats, grads, modes, optimizer and every RNG bitwise as
    they were, and a training run with the family is bitwise the run without it."""
    x, y = _data()

    def train(with_family: bool):
        torch.manual_seed(123)
        model = _net().train()
        opt = opt_cls(model.parameters(), lr=0.05, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
        fam = ConnectivityFamily(Every(n_steps=1), n_alpha=3, instability_at=2, instability_steps=2)
        for step in range(1, 5):
            opt.zero_grad()
            ce(model, (x[:16], y[:16])).backward()
            opt.step()
            if with_family:
                before = _snapshot(model, opt)
                out = fam.run(ctx(model, step, (x, y), optimizer=opt, loss_fn=ce))
                assert not out.errors
                _assert_same(before, _snapshot(model, opt))
                if step == 2:
                    assert INST in out.metrics
        return model.state_dict(), torch.rand(3)

    (s1, r1), (s2, r2) = train(True), train(False)
    assert all(torch.equal(s1[k], s2[k]) for k in s1) and torch.equal(r1, r2)


def test_instability_matches_hand_built_children():
    x, y = _data()
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad(); ce(model, (x, y)).backward(); opt.step()
    fam = ConnectivityFamily(Every(n_steps=1), n_alpha=5, instability_at=0, instability_steps=3,
                             instability_batch_size=8, seed=5)
    got = fam.run(ctx(model, 3, (x, y), optimizer=opt, loss_fn=ce)).metrics[INST]
    gen = torch.Generator().manual_seed(5)
    children = []
    for _ in range(2):  # documented: each child draws its batches in turn from the family's generator
        child = copy.deepcopy(model)
        copt = torch.optim.SGD(child.parameters(), lr=0.5, momentum=0.9)
        copt.load_state_dict(copy.deepcopy(opt.state_dict()))
        for _ in range(3):
            idx = torch.randperm(48, generator=gen)[:8]
            copt.zero_grad(); ce(child, (x[idx], y[idx])).backward(); copt.step()
        children.append(child)
    ref = loss_barrier(model, children[0], children[1], lambda m: ce(m, (x, y)), n_alpha=5).barrier
    assert got == pytest.approx(ref, abs=1e-7)
    assert fam.run(ctx(model, 4, (x, y), optimizer=opt, loss_fn=ce)).metrics.get(INST) is None  # once


def test_instability_convex_and_full_batch():
    x, y = _data()
    model = nn.Linear(5, 3).double()
    xd = x.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    fam = ConnectivityFamily(Every(n_steps=1), instability_at=0, instability_steps=5, instability_batch_size=4)
    got = fam.run(ctx(model, 1, (xd, y), optimizer=opt, loss_fn=ce)).metrics[INST]
    assert got <= 1e-12  # a convex loss has no barrier between any two points
    net = _net().eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    fam = ConnectivityFamily(Every(n_steps=1), instability_at=0, instability_steps=3, instability_batch_size=48)
    # full batches and no dropout: both children follow the same path exactly
    net2 = copy.deepcopy(net)
    net2[3].p = 0.0
    out = fam.run(ctx(net2, 1, (x, y), optimizer=opt.__class__(net2.parameters(), lr=0.5), loss_fn=ce))
    assert out.metrics[INST] == 0.0


def test_instability_errors_are_reported():
    x, y = _data()
    model = _net()
    fam = ConnectivityFamily(Every(n_steps=1), instability_at=1)
    out = fam.run(ctx(model, 1, (x, y), loss_fn=ce))
    assert "needs the training optimizer (ctx.optimizer is None)" in str(out.errors[0])
    fam = ConnectivityFamily(Every(n_steps=1), instability_at=1)
    foreign = torch.optim.SGD(list(model.parameters()) + [nn.Parameter(torch.zeros(2))], lr=0.1)
    out = fam.run(ctx(model, 1, (x, y), optimizer=foreign, loss_fn=ce))
    assert "holds parameters that are not the model's" in str(out.errors[0])


def test_copy_optimizer_shares_nothing():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": 1e-2},
                            {"params": model[1].parameters(), "lr": 1e-3, "weight_decay": 0.1}])
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    child = copy.deepcopy(model)
    new = copy_optimizer(opt, model, child)
    assert type(new) is torch.optim.Adam
    assert [g["lr"] for g in new.param_groups] == [1e-2, 1e-3] and new.param_groups[1]["weight_decay"] == 0.1
    assert new.param_groups[0]["params"][0] is child[0].weight
    before = copy.deepcopy(opt.state_dict())
    child(torch.randn(4, 3)).sum().backward()
    new.step()
    after = opt.state_dict()
    assert all(torch.equal(before["state"][i]["exp_avg"], after["state"][i]["exp_avg"]) for i in before["state"])


def test_take():
    x, y = torch.arange(10.0), torch.arange(10)
    idx = torch.tensor([3, 1])
    assert torch.equal(take(x, idx), x[idx])
    tx, ty, extra = take((x, y, "meta"), idx)
    assert torch.equal(ty, y[idx]) and extra == "meta"
    d = take({"input_ids": x.view(10, 1), "scale": torch.tensor(2.0)}, idx)
    assert torch.equal(d["input_ids"], x.view(10, 1)[idx]) and float(d["scale"]) == 2.0
    with pytest.raises(TypeError, match="the probe batch must be a tensor, or a tuple/list/mapping holding tensors, got str"):
        take("abc", idx)


def test_state_dict_round_trip():
    x, y = _data()
    model = _net().eval()
    fam = ConnectivityFamily(Every(n_steps=1), n_alpha=3, instability_at=5, instability_steps=2, seed=3)
    fam.run(ctx(model, 1, (x, y), loss_fn=ce))
    state = fam.state_dict()
    other = ConnectivityFamily(Every(n_steps=1), n_alpha=3, instability_at=5, instability_steps=2, seed=99)
    other.load_state_dict(state)
    assert other.snapshot_bytes == fam.snapshot_bytes
    assert torch.equal(other._gen.get_state(), fam._gen.get_state())
    with torch.no_grad():
        model[0].weight.add_(0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a = fam.run(ctx(model, 6, (x, y), optimizer=opt, loss_fn=ce)).metrics
    b = other.run(ctx(model, 6, (x, y), optimizer=opt, loss_fn=ce)).metrics
    assert a == b and BARRIER in a and INST in a
    empty = ConnectivityFamily(Every(n_steps=1))
    empty.load_state_dict(ConnectivityFamily(Every(n_steps=1)).state_dict())
    assert empty.snapshot_bytes == 0
    with pytest.raises(ValueError, match=r"connectivity state is missing \['generator'\]"):
        empty.load_state_dict({"snapshot": None, "snapshot_step": None, "instability_done": False})
    with pytest.raises(ValueError, match="snapshot must be None or a mapping of tensors"):
        empty.load_state_dict(dict(state, snapshot=[1]))


@pytest.mark.parametrize("kwargs, msg", [
    ({"n_alpha": 1}, "n_alpha must be an int >= 2, got 1"),
    ({"n_alpha": "3"}, "n_alpha must be a positive int, got '3'"),
    ({"reset_bn": None}, "reset_bn must be a bool, got None"),
    ({"loss_fn": 3}, "loss_fn must be callable\\(model, batch\\) or None, got 3"),
    ({"instability_at": -1}, "instability_at must be a non-negative int or None, got -1"),
    ({"instability_at": True}, "instability_at must be a non-negative int or None, got True"),
    ({"instability_steps": 0}, "instability_steps must be a positive int, got 0"),
    ({"instability_batch_size": 0}, "instability_batch_size must be a positive int or None, got 0"),
    ({"seed": 1.5}, "seed must be an int, got 1.5"),
])
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ConnectivityFamily(Every(n_steps=1), **kwargs)
    with pytest.raises(ValueError, match="schedule must be an Every"):
        ConnectivityFamily(10)
