"""Monitor in a plain PyTorch loop (sklearn digits, an MLP, SGD with momentum) with
``sink=wandb.log`` under W&B offline, as in the README: the run read back from disk has every
geometry value on the step it describes (``geometry/step``), the loop's own rows are intact,
training is bitwise identical to the same loop without the monitor, and the sharpness is
the top eigenvalue of the dense float64 Hessian (Cohen et al. 2021, "Gradient Descent on
Neural Networks Typically Occurs at the Edge of Stability")."""
from __future__ import annotations

import copy
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wandb_offline

from geomonitor.monitor import Monitor

STEPS, BATCH, LR, MOMENTUM = 60, 32, 0.1, 0.9
EVERY = {"id": 10, "sharpness": 20, "topology": 20, "np": 15}
HANG = 120.0


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long)


def _model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Dropout(0.1), nn.Linear(8, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _loss_fn(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _train(model: nn.Module, X, y, *, after_step=None, save_at: int | None = None):
    """The loop; the global RNG draws the batches and the dropout masks. ``after_step(step,
    loss, opt)`` runs after each optimizer step. Returns optimizer, losses, weights at
    ``save_at``, and the global RNG state at the end."""
    torch.manual_seed(1234)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    losses, saved = [], None
    for step in range(1, STEPS + 1):
        idx = torch.randperm(len(X))[:BATCH]
        loss = F.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == save_at:
            saved = copy.deepcopy(model.state_dict())
        if after_step is not None:
            after_step(step, loss, opt)
    return opt, losses, saved, torch.get_rng_state()


def _dense_sharpness(state: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    """λ_max of the float64 Hessian of the mean cross-entropy on (x, y), dropout off."""
    model = _model().double().eval()
    params = {k: v.double() for k, v in state.items()}
    names = list(params)
    sizes = [params[k].numel() for k in names]
    flat = torch.cat([params[k].reshape(-1) for k in names])

    def loss(theta):
        chunks = dict(zip(names, (t.reshape(params[k].shape)
                                  for k, t in zip(names, theta.split(sizes)))))
        out = torch.func.functional_call(model, chunks, (x.double(),))
        return F.cross_entropy(out, y)

    H = torch.autograd.functional.hessian(loss, flat, vectorize=True)
    return float(torch.linalg.eigvalsh(H)[-1])


@pytest.fixture
def gated_ripser(monkeypatch):
    """Each call to giotto-ph's child process first takes a permit the test hands out, so
    the step at which a background value arrives is fixed by the test, not by the machine."""
    from geomonitor.topology.ripser_process import RipserProcess

    permits = threading.Semaphore(0)
    original = RipserProcess.__call__

    def gated(self, D, maxdim):
        if not permits.acquire(timeout=HANG):
            raise TimeoutError("no permit handed out")
        return original(self, D, maxdim)

    monkeypatch.setattr(RipserProcess, "__call__", gated)
    return permits


def _finish_background(monitor: Monitor, permits: threading.Semaphore, n: int) -> None:
    """Let ``n`` solver calls through and wait until the background thread is idle (this
    thread now waits on the child: it leaves nice 19 first, as at close)."""
    for fam in monitor.families:
        fam.prioritize()
    permits.release(n)
    deadline = time.monotonic() + HANG
    while monitor._worker.pending:
        assert time.monotonic() < deadline, "background job did not finish"
        time.sleep(0.005)


def test_plain_loop_with_wandb_log(wandb_dir, gated_ripser):
    import wandb

    X, y = _digits()
    wandb.init(project="plain-loop", dir=str(wandb_dir), mode="offline")
    model = _model()
    monitor = Monitor(model, probe=(X, y), sink=wandb.log, loss_fn=_loss_fn, probe_size=128,
                      id_every_n_steps=EVERY["id"], sharpness_every_n_steps=EVERY["sharpness"],
                      sharpness_max_hvp=200, sharpness_tol=1e-7,
                      topology_every_n_steps=EVERY["topology"], np_every_n_steps=EVERY["np"],
                      symmetry_every_n_steps=None, max_overhead=None, strict=True)

    def after_step(step, loss, opt):
        if step in (30, 41):
            # the topology job of step 20 finishes before step 30 is reported (a step with
            # other measurements); the one of step 40 before step 41 (a step without)
            _finish_background(monitor, gated_ripser, len(monitor.modules))  # a call per layer
        wandb.log({"loss": loss.item()}, step=step)
        monitor.step(step, optimizer=opt)

    opt, losses, _, rng = _train(model, X, y, after_step=after_step)
    gated_ripser.release(len(monitor.modules))  # the job of step 60, finished by close()
    monitor.close()
    wandb.finish()

    # -- training is bitwise the same without the monitor
    plain = _model()
    plain_opt, plain_losses, weights_at_40, plain_rng = _train(plain, X, y, save_at=40)
    assert losses == plain_losses
    for (k, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), k
    for a, b in zip(opt.state_dict()["state"].values(), plain_opt.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert torch.equal(rng, plain_rng)
    assert model.training  # the measurements left the model in train mode

    # -- the run, read back from disk
    rows = wandb_offline.history(wandb_offline.find_run_file(str(wandb_dir)))
    loss_rows = [r for r in rows if "loss" in r]
    assert [r["_step"] for r in loss_rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in loss_rows] == losses
    layers = sorted(monitor.modules)
    assert layers == ["0", "3"]
    expected = {  # key -> the steps it describes
        **{f"geometry/id/{l}": range(10, 61, 10) for l in layers},
        "geometry/sharpness": (20, 40, 60), "geometry/eos_ratio": (20, 40, 60),
        **{f"geometry/ph/{l}/h1_n_bars": (20, 40, 60) for l in layers},
        **{f"geometry/ph/{l}/h0_total_persistence": (20, 40, 60) for l in layers},
        "geometry/neural_persistence/mean": (15, 30, 45, 60),
        **{f"geometry/neural_persistence/{l}": (15, 30, 45, 60) for l in layers},
    }
    for key, steps in expected.items():
        got = sorted(r["geometry/step"] for r in rows if key in r)
        assert got == list(steps), (key, got)
    described = {r["geometry/step"] for r in rows if "geometry/step" in r}
    assert described == {10, 15, 20, 30, 40, 45, 50, 60}
    # every geometry value (numbers, diagram and profile tables) sits on a step its family's
    # schedule has
    every = {"id": 10, "id_profile": 10, "sharpness": 20, "eos_ratio": 20, "n_hvp": 20,
             "ph": 20, "neural_persistence": 15}
    seen = set()
    for r in rows:
        for key in r:
            if key.startswith("geometry/") and key != "geometry/step":
                family = key.split("/")[1].removesuffix("_table")  # geometry/id_profile_table/...
                seen.add(family)
                assert r["geometry/step"] % every[family] == 0, (key, r["geometry/step"])
    assert seen == set(every)

    # -- one number checked independently: the sharpness at step 40
    idx = monitor.probe.indices[:32]  # the sharpness slice: the probe set's first 32 samples
    lam = _dense_sharpness(weights_at_40, X[idx], y[idx])
    (row,) = [r for r in rows if r.get("geometry/step") == 40 and "geometry/sharpness" in r]
    assert row["geometry/sharpness"] == pytest.approx(lam, rel=1e-4)
    assert row["geometry/eos_ratio"] == pytest.approx(lam / ((2 + 2 * MOMENTUM) / LR), rel=1e-4)
