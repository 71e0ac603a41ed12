"""instability(): against a hand-written Frankle loop (fresh optimizer and scheduler built by
hand, state dicts loaded, seeds from numpy's SeedSequence as documented) and a numpy
brute-force barrier; isolation of the caller's objects and RNG streams; every error."""
from __future__ import annotations

import copy
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from geomonitor.connectivity import instability

def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    Xv = torch.randn(20, 5, generator=g, dtype=torch.float64)
    yv = (Xv[:, 0] + Xv[:, 1] > 0).long()
    return X, y, Xv, yv


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)).double()


def _opt(params):
    return torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=1e-3)


def _sched(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + 0.3 * t))


def loss_fn(m, b):
    return F.cross_entropy(m(b[0]), b[1])


def eval_fn(m, d):
    out = m(d[0])
    return F.cross_entropy(out, d[1]), (out.argmax(1) != d[1]).double().mean()


def _seed(*entropy):
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def _setup():
    X, y, Xv, yv = _data()
    ds = TensorDataset(X, y)
    model = _net()
    opt = _opt(model.parameters())
    return model, opt, _sched(opt), ds, (X, y), (Xv, yv)


def _reference_children(k, total, seed, ds):
    """Frankle's loop written out: the parent to k, then two children to ``total``."""
    def run(model, opt, sched, g, n, noise_seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(noise_seed)
            done = 0
            while done < n:
                for b in DataLoader(ds, batch_size=8, shuffle=True, generator=g):
                    if done == n:
                        break
                    model.train()
                    opt.zero_grad(set_to_none=True)
                    loss_fn(model, b).backward()
                    opt.step()
                    sched.step()
                    done += 1

    parent = _net()
    p_opt = _opt(parent.parameters())
    p_sched = _sched(p_opt)
    run(parent, p_opt, p_sched, torch.Generator().manual_seed(_seed(seed)), k, _seed(seed))
    children = []
    for j in (0, 1):
        child = _net()
        child.load_state_dict(parent.state_dict())
        c_opt = _opt(child.parameters())
        c_sched = _sched(c_opt)  # built first: its constructor resets the lr to lr_lambda(0)
        c_opt.load_state_dict(copy.deepcopy(p_opt.state_dict()))
        c_sched.load_state_dict(p_sched.state_dict())
        s = _seed(seed, k, j)
        run(child, c_opt, c_sched, torch.Generator().manual_seed(s), total - k, s)
        children.append({n: t.detach().clone() for n, t in child.state_dict().items()})
    return children


def _np_curve(sa, sb, X, y, n_alpha=11):
    Xn, yn = X.numpy(), y.numpy()
    losses, errors = [], []
    for t in np.linspace(0, 1, n_alpha):
        p = {k: ((1 - t) * sa[k] + t * sb[k]).numpy() for k in sa}
        h = np.maximum(Xn @ p["0.weight"].T + p["0.bias"], 0)
        z = h @ p["3.weight"].T + p["3.bias"]
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        losses.append(-logp[np.arange(len(yn)), yn].mean())
        errors.append((z.argmax(1) != yn).mean())
    return np.array(losses), np.array(errors)


def _frankle(v):
    return v.max() - 0.5 * (v[0] + v[-1])


def _chord(v):
    a = np.linspace(0, 1, len(v))
    return (v - ((1 - a) * v[0] + a * v[-1])).max()


def test_matches_a_hand_written_frankle_loop_and_a_numpy_barrier():
    model, opt, sched, ds, train, held = _setup()
    make = lambda g: DataLoader(ds, batch_size=8, shuffle=True, generator=g)  # noqa: E731
    res = instability(model, opt, loss_fn, make, ks=[0, 3, 7], total_steps=12, scheduler=sched,
                      eval_fn=eval_fn, train_data=train, heldout_data=held, seed=5, keep_states=True)
    assert [p.k for p in res] == [0, 3, 7]
    for p in res:
        ref = _reference_children(p.k, 12, 5, ds)
        for mine, theirs in zip(p.states, ref):
            assert mine.keys() == theirs.keys()
            for name in mine:
                torch.testing.assert_close(mine[name], theirs[name], rtol=1e-12, atol=1e-12)
        assert not torch.equal(p.states[0]["0.weight"], p.states[1]["0.weight"])  # they differ
        for barrier, (X, y) in ((p.train, train), (p.heldout, held)):
            L, E = _np_curve(*p.states, X, y)
            assert barrier.definition == "frankle"
            assert np.allclose(barrier.losses, L, rtol=1e-10, atol=1e-12)
            assert barrier.barrier == pytest.approx(_frankle(L), abs=1e-10)
            assert barrier.error_barrier == pytest.approx(_frankle(E), abs=1e-12)


def test_chord_definition_and_ks_independence():
    model, opt, sched, ds, train, held = _setup()
    make = lambda g: DataLoader(ds, batch_size=8, shuffle=True, generator=g)  # noqa: E731
    kw = dict(scheduler=sched, eval_fn=eval_fn, train_data=train, seed=1, keep_states=True)
    both = instability(model, opt, loss_fn, make, ks=[0, 4], total_steps=9, definition="chord", **kw)
    alone = instability(model, opt, loss_fn, make, ks=[4], total_steps=9, definition="chord", **kw)
    assert both[1].heldout is None
    for name, t in both[1].states[0].items():  # the parent's path does not depend on ks
        assert torch.equal(t, alone[0].states[0][name])
    L, _ = _np_curve(*both[0].states, *train)
    assert both[0].train.definition == "chord"
    assert both[0].train.barrier == pytest.approx(_chord(L), abs=1e-10)


def test_callers_objects_and_rng_streams_untouched_and_no_scheduler_warning():
    model, opt, sched, ds, train, held = _setup()
    for _ in range(2):  # some optimizer state and schedule position to protect
        opt.zero_grad()
        loss_fn(model, (train[0], train[1])).backward()
        opt.step()
        sched.step()
    params = {n: t.clone() for n, t in model.state_dict().items()}
    opt_state = copy.deepcopy(opt.state_dict())
    sched_state = copy.deepcopy(sched.state_dict())
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the scheduler's "optimizer.step() overridden"
        instability(model, opt, loss_fn, lambda g: DataLoader(ds, batch_size=8, shuffle=True, generator=g),
                    ks=[0, 2], total_steps=4, scheduler=sched, train_data=train)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    assert not model.training
    for n, t in model.state_dict().items():
        assert torch.equal(t, params[n])
    assert sched.state_dict() == sched_state and opt.param_groups[0]["lr"] == sched.get_last_lr()[0]
    buf = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt_state["state"][0]["momentum_buffer"])


def _call(**over):
    model, opt, sched, ds, train, held = _setup()
    kw = dict(model=model, optimizer=opt, loss_fn=loss_fn,
              batches=lambda g: DataLoader(ds, batch_size=8, shuffle=True, generator=g),
              ks=[1, 2], total_steps=4, train_data=train)
    kw.update(over)
    if kw.pop("foreign_scheduler", False):
        kw["scheduler"] = _sched(_opt(_net().parameters()))
    return instability(**kw)


@pytest.mark.parametrize("over, err, match", [
    ({"model": "net"}, TypeError, r"model must be an nn.Module, got str"),
    ({"optimizer": None}, TypeError, r"optimizer must be a torch.optim.Optimizer, got NoneType"),
    ({"optimizer": torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)}, ValueError,
     r"the optimizer holds parameters that are not the model's"),
    ({"foreign_scheduler": True}, ValueError, r"scheduler must be a learning-rate scheduler of optimizer"),
    ({"total_steps": 0}, ValueError, r"total_steps must be a positive int, got 0"),
    ({"ks": []}, ValueError, r"ks must be a non-empty list of steps, got \[\]"),
    ({"ks": "0"}, ValueError, r"ks must be a non-empty list of steps, got '0'"),
    ({"ks": [0, 5]}, ValueError, r"ks must hold ints in \[0, total_steps=4\], got 5"),
    ({"ks": [-1]}, ValueError, r"ks must hold ints in \[0, total_steps=4\], got -1"),
    ({"ks": [1.0]}, ValueError, r"ks must hold ints in \[0, total_steps=4\], got 1.0"),
    ({"ks": [2, 2]}, ValueError, r"ks must be strictly increasing, got \[2, 2\]"),
    ({"ks": [3, 1]}, ValueError, r"ks must be strictly increasing, got \[3, 1\]"),
    ({"definition": "mean"}, ValueError, r"definition must be one of \('chord', 'frankle'\), got 'mean'"),
    ({"loss_fn": 3}, TypeError, r"loss_fn and batches must be callable"),
    ({"eval_fn": 3}, TypeError, r"eval_fn must be callable or None, got int"),
    ({"seed": -1}, ValueError, r"seed must be an int >= 0, got -1"),
    ({"keep_states": 1}, TypeError, r"keep_states must be a bool, got 1"),
    ({"n_alpha": 1}, ValueError, r"n_alpha must be an int >= 2 \(both ends of the segment\), got 1"),
    ({"n_alpha": 0}, ValueError, r"n_alpha must be a positive int, got 0"),
    ({"reset_bn": "yes"}, TypeError, r"reset_bn must be a bool, got 'yes'"),
    ({"train_data": None}, ValueError, r"train_data is required"),
    ({"batches": lambda g: []}, ValueError, r"batches\(generator\) yielded no batch \(parent\)"),
    ({"ks": [0], "batches": lambda g: []}, ValueError,
     r"batches\(generator\) yielded no batch \(child 0 spawned at k=0\)"),
    ({"loss_fn": lambda m, b: m(b[0]).sum(1)}, ValueError,
     r"loss_fn must return a scalar tensor, got \(8,\) \(parent\)"),
    ({"loss_fn": lambda m, b: 1.0}, ValueError, r"loss_fn must return a scalar tensor, got float"),
    ({"loss_fn": lambda m, b: m(b[0]).sum() * float("nan")}, ValueError,
     r"training loss is nan at step 0 \(parent\)"),
])
def test_every_error(over, err, match):
    with pytest.raises(err, match=match):
        _call(**over)


def test_argument_errors_come_before_any_training():
    def batches(g):
        raise AssertionError("no data may be drawn before the arguments are checked")

    for over in ({"n_alpha": 1}, {"reset_bn": None}, {"train_data": None}, {"definition": "x"}):
        with pytest.raises((ValueError, TypeError)):
            _call(batches=batches, **over)
