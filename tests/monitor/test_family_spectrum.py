"""SpectrumFamily: trace and outliers against the dense float64 Hessian and Hutchinson's
estimator, the state_dict round trip, every raise, the opt-in option, and a plain loop with
``sink=wandb.log`` under W&B offline read back from disk (bitwise-unchanged training, the
histogram and table on the steps they describe, the top node against the dense Hessian)."""
from __future__ import annotations

import copy
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from torch import nn

import wandb_offline

from geomonitor.monitor import Monitor
from geomonitor.monitor.families import DEFAULTS, SpectrumFamily, build_families
from geomonitor.monitor.family import Context
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every
from geomonitor.sharpness import hessian_trace

_spec = importlib.util.spec_from_file_location(
    "sharp_models", os.path.join(os.path.dirname(__file__), "..", "sharpness", "sharp_models.py"))
sm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sm)

TRACE, OUTLIERS, SPECTRUM = (metric_key("hessian_trace"), metric_key("hessian_outliers"),
                             metric_key("hessian_spectrum"))


def test_keys_spelled_out():
    assert (TRACE, OUTLIERS, SPECTRUM) == ("geometry/hessian_trace", "geometry/hessian_outliers",
                                           "geometry/hessian_spectrum")


def _ctx(model, batch, loss_fn, step=1):
    return Context(model, step, batch, lambda: {}, loss_fn=loss_fn)


def _case():
    model, x, y, lo = sm.make("bn")
    return model, (x, y), lambda m, b: F.cross_entropy(m(b[0]), b[1])


def test_run_against_dense_hessian_and_hutchinson():
    model, batch, loss_fn = _case()
    ev = torch.linalg.eigvalsh(sm.dense_hessian(model, lambda out: F.cross_entropy(out, batch[1]), batch[0])).numpy()
    fam = SpectrumFamily(Every(n_steps=1), n_iter=40, n_vectors=4, seed=3, probe_size=None, hvp="exact")
    out = fam.run(_ctx(model, batch, loss_fn))
    assert set(out.metrics) == {TRACE, OUTLIERS} and set(out.spectra) == {SPECTRUM}
    nodes, weights = out.spectra[SPECTRUM]
    assert nodes.shape == weights.shape == (160,) and abs(weights.sum() - 1) < 1e-12
    span = ev[-1] - ev[0]
    assert wasserstein_distance(nodes, ev, u_weights=weights) < 0.02 * span
    assert abs(nodes.max() - ev[-1]) < 0.01 * ev[-1]
    # the quadrature's trace is Hutchinson's estimator on the same Rademacher probes
    hut = hessian_trace(lambda: loss_fn(model, batch), model, n_samples=4,
                        generator=torch.Generator().manual_seed(3))
    assert out.metrics[TRACE] == pytest.approx(hut.estimate, rel=1e-6)
    desc = np.sort(ev)[::-1]  # the outlier rule on the true eigenvalues, written out
    expected = max([n for n in range(1, desc.size) if desc[n - 1] - desc[n] >= 0.05 * span
                    and desc[n] >= np.median(ev)], default=0)
    assert out.metrics[OUTLIERS] == expected > 0
    quiet = SpectrumFamily(Every(n_steps=1), n_iter=5, n_vectors=1, log_spectrum=False)
    assert quiet.run(_ctx(model, batch, loss_fn)).spectra == {}


def test_probe_size_takes_the_head_of_the_batch():
    model, batch, loss_fn = _case()
    fam = SpectrumFamily(Every(n_steps=1), n_iter=3, n_vectors=2, seed=0, probe_size=16, hvp="exact")
    got = fam.run(_ctx(model, batch, loss_fn)).metrics[TRACE]
    hut = [hessian_trace(lambda: loss_fn(model, (batch[0][:n], batch[1][:n])), model, n_samples=2,
                         generator=torch.Generator().manual_seed(0)).estimate for n in (16, 64)]
    assert got == pytest.approx(hut[0], rel=1e-6) and got != pytest.approx(hut[1], rel=1e-2)


def test_state_dict_round_trip():
    model, batch, loss_fn = _case()
    a = SpectrumFamily(Every(n_steps=1), n_iter=4, n_vectors=2, seed=1)
    a.run(_ctx(model, batch, loss_fn))
    state = copy.deepcopy(a.state_dict())
    first = a.run(_ctx(model, batch, loss_fn, step=2))
    b = SpectrumFamily(Every(n_steps=1), n_iter=4, n_vectors=2, seed=1)
    b.load_state_dict(state)
    second = b.run(_ctx(model, batch, loss_fn, step=2))
    assert first.metrics == second.metrics
    assert np.array_equal(first.spectra[SPECTRUM][0], second.spectra[SPECTRUM][0])
    fresh = SpectrumFamily(Every(n_steps=1), n_iter=4, n_vectors=2, seed=1).run(_ctx(model, batch, loss_fn))
    assert fresh.metrics != first.metrics  # the generator moved on: the round trip mattered
    b.load_state_dict({})  # an older checkpoint without the family's state: nothing to restore


def test_every_raise_and_the_option():
    e = Every(n_steps=1)
    for kwargs, msg in [({"n_iter": 0}, "n_iter must be a positive int"),
                        ({"n_vectors": True}, "n_vectors must be a positive int"),
                        ({"gap": 1.0}, r"gap must be a float in \(0, 1\)"),
                        ({"seed": 1.5}, "seed must be an int"),
                        ({"hvp": "dense"}, "hvp must be one of"),
                        ({"log_spectrum": 1}, "log_spectrum must be a bool"),
                        ({"probe_size": 0}, "probe_size must be a positive int or None")]:
        with pytest.raises(ValueError, match=msg):
            SpectrumFamily(e, **kwargs)
    model, batch, _ = _case()
    with pytest.raises(ValueError, match="spectrum needs the training loss"):
        SpectrumFamily(e).run(_ctx(model, batch, None))
    assert DEFAULTS["spectrum_every_n_steps"] is None and DEFAULTS["spectrum_every_n_epochs"] is None
    assert "spectrum" not in [f.name for f in build_families()]
    fams = build_families(spectrum_every_n_steps=7, spectrum_n_iter=9, spectrum_n_vectors=3)
    spec = [f for f in fams if f.name == "spectrum"][0]
    assert (spec.schedule.n_steps, spec.n_iter, spec.n_vectors, spec.probe_size) == (7, 9, 3, 32)
    with pytest.raises(ValueError, match="n_iter must be a positive int"):
        build_families(spectrum_every_n_steps=7, spectrum_n_iter=0)


STEPS = 10


def _net() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _train(model, X, y, after_step=None, stop_at=None):
    torch.manual_seed(99)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for step in range(1, STEPS + 1):
        idx = torch.randperm(len(X))[:32]
        loss = F.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(step, loss, opt)
        if step == stop_at:
            break
    return losses, torch.get_rng_state()


def test_plain_loop_wandb_offline(wandb_dir):
    import wandb
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    probe = (X[:32], y[:32])
    wandb.init(project="spectrum", dir=str(wandb_dir), mode="offline")
    model = _net()
    loss_fn = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    monitor = Monitor(model, probe=probe, sink=wandb.log, loss_fn=loss_fn, probe_size=32,
                      id_every_n_steps=None, sharpness_every_n_steps=None, topology_every_n_steps=None,
                      np_every_n_steps=None, symmetry_every_n_steps=None, spectrum_every_n_steps=5,
                      spectrum_n_iter=30, spectrum_n_vectors=2, max_overhead=None, strict=True)

    def after_step(step, loss, opt):
        wandb.log({"loss": loss.item()}, step=step)
        monitor.step(step, optimizer=opt)

    losses, rng = _train(model, X, y, after_step)
    monitor.close()
    wandb.finish()
    plain = _net()
    plain_losses, plain_rng = _train(plain, X, y)
    assert losses == plain_losses and torch.equal(rng, plain_rng)
    for (k, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), k

    run_file = wandb_offline.find_run_file(str(wandb_dir))
    rows = wandb_offline.history(run_file)
    # W&B stores media as nested keys: <key>/histogram/values, <key>/table/path, ...
    for key in (TRACE, OUTLIERS, f"{SPECTRUM}/histogram/values", f"{SPECTRUM}/table/path"):
        assert sorted(r["geometry/step"] for r in rows if key in r) == [5, 10], key
    row = [r for r in rows if r.get("geometry/step") == 5][0]
    hist = {k: row[f"{SPECTRUM}/histogram/{k}"] for k in ("_type", "values", "bins")}
    assert hist["_type"] == "histogram" and len(hist["values"]) == 64 and len(hist["bins"]) == 65
    assert sum(hist["values"]) == pytest.approx(1.0, abs=1e-9)
    # the weights at step 5 against the dense Hessian of the same weights (a replayed copy)
    replay = _net()
    _train(replay, X, y, stop_at=5)
    ev = torch.linalg.eigvalsh(sm.dense_hessian(replay, lambda out: F.cross_entropy(out, probe[1]),
                                                probe[0])).numpy()
    assert hist["bins"][-1] == pytest.approx(ev[-1], rel=0.01)
    path = os.path.join(os.path.dirname(run_file), "files", row[f"{SPECTRUM}/table/path"])
    with open(path) as f:
        data = json.load(f)
    assert data["columns"] == ["node", "weight"] and len(data["data"]) == 60
    nodes = np.array([r[0] for r in data["data"]])
    weights = np.array([r[1] for r in data["data"]])
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert wasserstein_distance(nodes, ev, u_weights=weights) < 0.03 * (ev[-1] - ev[0])


class _LitNet(__import__("pytorch_lightning").LightningModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return (self(x) - y).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def test_lightning_geometry_monitor_opt_in(tmp_path, wandb_dir):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from geomonitor.callbacks import GeometryMonitor
    from geomonitor.callbacks.sinks import STEP_KEY

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=g)
    data = torch.utils.data.TensorDataset(x, torch.sin(x.sum(1, keepdim=True)))
    monitor = GeometryMonitor(layers=["fc1"], probe_size=48, id_every_n_steps=None,
                              sharpness_every_n_steps=None, topology_every_n_steps=None,
                              np_every_n_steps=None, symmetry_every_n_steps=None,
                              spectrum_every_n_steps=3, sharpness_probe_size=None,
                              prog_bar=None, strict=True, max_overhead=None)
    wb = WandbLogger(project="spectrum-test", save_dir=str(wandb_dir), offline=True)
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    model = _LitNet()
    trainer = pl.Trainer(max_steps=6, logger=[wb, csv_logger], callbacks=[monitor], accelerator="cpu",
                         devices=1, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path, log_every_n_steps=1)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=16))
    wb.experiment.finish()
    assert monitor.errors == {}
    px, py = data[monitor.probe.indices]
    ev = torch.linalg.eigvalsh(sm.dense_hessian(model, lambda out: (out - py.double()).pow(2).mean(), px)).numpy()
    rows = wandb_offline.history(wandb_offline.find_run_file(str(wandb_dir)))
    for key in (TRACE, OUTLIERS, f"{SPECTRUM}/histogram/values", f"{SPECTRUM}/table/nrows"):
        assert sorted(r[STEP_KEY] for r in rows if key in r) == [3, 6], key
    (last,) = [r for r in rows if r.get(STEP_KEY) == 6 and f"{SPECTRUM}/histogram/bins" in r]
    assert last[f"{SPECTRUM}/histogram/bins"][-1] == pytest.approx(ev[-1], rel=0.01)
    assert last[f"{SPECTRUM}/histogram/bins"][0] == pytest.approx(ev[0], abs=0.01 * (ev[-1] - ev[0]))
    assert sum(last[f"{SPECTRUM}/histogram/values"]) == pytest.approx(1.0, abs=1e-9)
    assert last[f"{SPECTRUM}/table/nrows"] == 40  # 2 vectors x 20 Lanczos steps
    assert "geometry/hessian_trace" in trainer.callback_metrics
    with open(os.path.join(csv_logger.log_dir, "metrics.csv")) as f:
        header = f.readline().strip().split(",")
    assert TRACE in header and OUTLIERS in header
    assert not any(h.startswith(SPECTRUM) for h in header)  # media go to W&B only
