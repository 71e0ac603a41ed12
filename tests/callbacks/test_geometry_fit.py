"""GeometryMonitor in a real CPU fit: W&B offline (read back from disk), CSV, callback_metrics,
progress bar; values checked against independent references (dense float64 Hessian,
scikit-dimension TwoNN, giotto-ph)."""
from __future__ import annotations

import csv
import glob
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger

import wandb_offline

from geomonitor.callbacks import GeometryMonitor
from geomonitor.callbacks.sinks import STEP_KEY

LR = 0.2


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(5, 8)
        self.fc2 = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = (self(x) - y).pow(2).mean()
        self.log("train_loss", loss)
        return {"loss": loss}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g)
    return torch.utils.data.TensorDataset(x, torch.sin(x.sum(1, keepdim=True)))


def _monitor(**kw):
    args = dict(layers=["fc1", "fc2"], probe_size=48, sharpness_every_n_steps=3,
                id_every_n_steps=3, topology_every_n_epochs=1, topology_landmarks=None,
                np_every_n_epochs=1, sharpness_max_hvp=200, sharpness_tol=1e-7,
                sharpness_probe_size=None, strict=True,
                max_overhead=None)
    args.update(kw)
    return GeometryMonitor(**args)


def _fit(monitor, loggers, root, max_steps=6, accelerator="cpu"):
    model = _Net()
    trainer = pl.Trainer(max_steps=max_steps, logger=loggers, callbacks=[monitor],
                         accelerator=accelerator, devices=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=root, log_every_n_steps=1)
    trainer.fit(model, torch.utils.data.DataLoader(_data(), batch_size=16))
    return trainer, model


def _dense_sharpness(model, x, y):
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    names = list(params)
    shapes = [params[k].shape for k in names]
    flat = torch.cat([params[k].reshape(-1) for k in names])

    def loss(theta):
        chunks, i = {}, 0
        for k, s in zip(names, shapes):
            n = int(np.prod(s))
            chunks[k] = theta[i:i + n].reshape(s)
            i += n
        out = torch.func.functional_call(model.double(), chunks, (x.double(),))
        return (out - y.double()).pow(2).mean()

    H = torch.autograd.functional.hessian(loss, flat)
    model.float()
    return float(torch.linalg.eigvalsh(H)[-1])


@pytest.mark.parametrize("accelerator", [
    "cpu", pytest.param("gpu", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                        reason="needs CUDA"))])
def test_fit_logs_every_family_to_wandb_csv_and_callback_metrics(tmp_path, wandb_dir, accelerator):
    wb = WandbLogger(project="geometry-test", save_dir=str(wandb_dir), offline=True)
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    monitor = _monitor(prog_bar=["eos_ratio", "id/fc1"])
    trainer, model = _fit(monitor, [wb, csv_logger], tmp_path, accelerator=accelerator)
    wb.experiment.finish()
    model.cpu()

    # the probe set is drawn by index from the dataset: recompute everything independently
    x, y = _data()[monitor.probe.indices]
    lam = _dense_sharpness(model, x, y)
    got = float(trainer.callback_metrics["geometry/sharpness"])
    assert got == pytest.approx(lam, rel=1e-4)
    assert float(trainer.callback_metrics["geometry/eos_ratio"]) == pytest.approx(lam * LR / 2, rel=1e-4)
    assert float(trainer.progress_bar_metrics["eos_ratio"]) == pytest.approx(lam * LR / 2, rel=1e-4)

    import skdim
    with torch.no_grad():
        h = model.fc1(x)
    ref_id = skdim.id.TwoNN().fit(h.double().numpy()).dimension_
    assert float(trainer.callback_metrics["geometry/id/fc1"]) == pytest.approx(ref_id, rel=0.1)
    assert float(trainer.progress_bar_metrics["id/fc1"]) == float(trainer.callback_metrics["geometry/id/fc1"])

    from gph import ripser_parallel
    dgm1 = ripser_parallel(h.double().numpy(), maxdim=1)["dgms"][1]
    assert float(trainer.callback_metrics["geometry/ph/fc1/h1_n_bars"]) == len(dgm1)
    assert "geometry/neural_persistence/mean" in trainer.callback_metrics
    assert "geometry/neural_persistence/fc1" in trainer.callback_metrics
    assert monitor.errors == {}

    run_file = wandb_offline.find_run_file(str(wandb_dir))
    rows = wandb_offline.history(run_file)
    assert [r[STEP_KEY] for r in rows if "geometry/sharpness" in r] == [3, 6]
    assert [r[STEP_KEY] for r in rows if "geometry/id/fc2" in r] == [3, 6]
    assert sorted(r[STEP_KEY] for r in rows if "geometry/neural_persistence/mean" in r) == [4, 6]
    assert sorted(r[STEP_KEY] for r in rows if "geometry/ph/fc2/h1_n_bars" in r) == [4, 6]
    (last,) = [r for r in rows if r.get(STEP_KEY) == 6 and "geometry/sharpness" in r]
    assert last["geometry/sharpness"] == pytest.approx(lam, rel=1e-4)
    profiles = [r for r in rows if "geometry/id_profile_table/nrows" in r]
    assert [r["geometry/id_profile_table/nrows"] for r in profiles] == [2, 4]  # 2 layers x 1, 2 steps
    assert any("geometry/ph/fc1/diagram_table/nrows" in r for r in rows)
    assert not any(k.endswith(("/table/nrows", "/plot_table/nrows")) for r in rows for k in r)
    assert {"name": "", "glob_name": "geometry/*", "step_metric": STEP_KEY} in \
        wandb_offline.metric_definitions(run_file)

    (metrics_csv,) = glob.glob(os.path.join(tmp_path, "csv", "*", "metrics.csv"))
    with open(metrics_csv) as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table if r.get("geometry/sharpness")] == [3, 6]
    assert all(not r.get("eos_ratio") for r in table)  # progress-bar copy is not logged
    losses = [r for r in table if r.get("train_loss")]
    assert len(losses) == 6  # the probe-set training_step logged nothing


def test_unknown_layer_pattern_fails_at_setup_listing_names(tmp_path):
    with pytest.raises(ValueError, match=r"fc9.*fc1"):
        _fit(_monitor(layers=["fc9"]), [], tmp_path)


def test_a_failing_measurement_is_counted_warned_once_and_training_goes_on(tmp_path):
    mon = GeometryMonitor(max_overhead=None, layers=["fc1"], probe_size=16, sharpness_every_n_steps=2,
                          id_every_n_steps=None, topology_every_n_steps=None, topology_every_n_epochs=None,
                          np_every_n_steps=None, np_every_n_epochs=None,
                          loss_fn=lambda m, b: "not a tensor")
    with pytest.warns(RuntimeWarning, match=r"sharpness measurement failed at step 2: "
                      r"TypeError\(.*must return a scalar loss tensor") as record:
        trainer, _ = _fit(mon, [], tmp_path, max_steps=6)
    assert sum("measurement failed" in str(w.message) for w in record) == 1  # once per kind
    assert trainer.global_step == 6  # training went on
    assert mon.errors == {"sharpness": 3}
    assert float(trainer.callback_metrics["geometry/errors"]) == 3.0


def test_strict_reraises_the_measurement_error(tmp_path):
    mon = _monitor(loss_fn=lambda m, b: "not a tensor")
    with pytest.raises(TypeError, match="must return a scalar loss tensor"):
        _fit(mon, [], tmp_path)
    assert mon.monitor._closed  # closed by on_exception


def test_the_progress_bar_shows_the_chosen_metrics(tmp_path):
    monitor = _monitor(prog_bar=["eos_ratio"], id_every_n_steps=None,
                       topology_every_n_steps=None, topology_every_n_epochs=None, np_every_n_steps=None, np_every_n_epochs=None)
    model = _Net()
    trainer = pl.Trainer(max_steps=6, logger=False, callbacks=[monitor], accelerator="cpu",
                         enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(_data(), batch_size=16))
    shown = trainer.progress_bar_callback.get_metrics(trainer, model)
    assert "eos_ratio" in shown and "sharpness" not in shown
    assert shown["eos_ratio"] == float(trainer.callback_metrics["geometry/eos_ratio"])
    x, y = _data()[monitor.probe.indices]
    assert shown["eos_ratio"] == pytest.approx(_dense_sharpness(model, x, y) * LR / 2, rel=1e-4)


@pytest.mark.parametrize("max_steps, horizon", [(6, 6), (-1, 12)])
def test_the_cost_cap_plans_over_the_fit_lightning_knows(tmp_path, max_steps, horizon):
    # Lightning's estimated_stepping_batches is the horizon: max_steps, or the epochs' steps
    # (64 samples / 16 per batch = 4 steps per epoch, max_epochs=3 when max_steps=-1)
    monitor = _monitor(max_overhead=0.05)
    model = _Net()
    trainer = pl.Trainer(max_steps=max_steps, max_epochs=3, logger=False, callbacks=[monitor],
                         accelerator="cpu", devices=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(_data(), batch_size=16))
    assert monitor.monitor.cap.horizon == horizon
    assert monitor.monitor.summary()["steps"] == trainer.global_step
