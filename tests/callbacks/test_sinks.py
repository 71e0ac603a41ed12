"""TrainerSink against real loggers: W&B offline (read back from disk), CSV, callback_metrics."""
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
from geomonitor.callbacks.sinks import STEP_KEY, TrainerSink


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Emit(pl.Callback):
    """Sends a few things through the sink during a real fit."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sink = TrainerSink(trainer)
        step = trainer.global_step
        sink.log_metrics({"geometry/test_value": 0.5 * step}, step=step)
        if step == 2:
            sink.log_diagram("geometry/ph/lin", [np.array([[0.0, 1.0], [0.0, np.inf]]),
                                                 np.array([[0.5, 0.75]])], step=step)
            sink.log_profile("geometry/id_profile", ["a", "b"], [3.0, 2.0], step=step)
            sink.alert("Test alert", "step 2 crossed", level="WARN", wait_duration=10)


def _fit(loggers, tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(8, 2))
    trainer = pl.Trainer(max_steps=4, logger=loggers, callbacks=[_Emit()], accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(_Tiny(), torch.utils.data.DataLoader(data, batch_size=2))
    return trainer


def test_sink_reaches_wandb_csv_and_callback_metrics(tmp_path, wandb_dir):
    wb = WandbLogger(project="sink-test", save_dir=str(wandb_dir), offline=True)
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    trainer = _fit([wb, csv_logger], tmp_path)
    wb.experiment.finish()

    assert float(trainer.callback_metrics["geometry/test_value"]) == pytest.approx(0.5 * 4)  # global_step is 4 after the last batch

    run_file = wandb_offline.find_run_file(str(wandb_dir))
    rows = [r for r in wandb_offline.history(run_file) if "geometry/test_value" in r]
    assert [(r[STEP_KEY], r["geometry/test_value"]) for r in rows] == [(s, 0.5 * s) for s in range(1, 5)]
    tables = [r for r in wandb_offline.history(run_file) if "geometry/ph/lin_table/nrows" in r]
    assert len(tables) == 1 and tables[0]["geometry/ph/lin_table/nrows"] == 2  # inf bar left out
    assert tables[0][STEP_KEY] == 2
    assert any("geometry/id_profile_table/nrows" in r for r in wandb_offline.history(run_file))
    defs = wandb_offline.metric_definitions(run_file)
    assert {"name": "", "glob_name": "geometry/*", "step_metric": STEP_KEY} in defs
    assert wandb_offline.alerts(run_file) == [
        {"title": "Test alert", "text": "step 2 crossed", "level": "WARN", "wait_duration": 10000}]

    (metrics_csv,) = glob.glob(os.path.join(tmp_path, "csv", "*", "metrics.csv"))
    with open(metrics_csv) as f:
        got = {(int(r["step"]), float(r["geometry/test_value"])) for r in csv.DictReader(f)
               if r.get("geometry/test_value")}
    assert got == {(s, 0.5 * s) for s in range(1, 5)}


def test_sink_without_wandb_is_quiet_and_alert_warns(tmp_path, caplog):
    trainer = _fit([CSVLogger(str(tmp_path), name="csv")], tmp_path)
    sink = TrainerSink(trainer)
    assert sink.wandb_run() is None
    sink.log_diagram("geometry/ph/x", [np.zeros((1, 2))], step=0)  # no W&B: nothing to do
    with caplog.at_level("WARNING", logger="geomonitor"):
        sink.alert("Title", "Body")
    assert "Title: Body" in caplog.text


def test_alert_rejects_unknown_level(tmp_path):
    trainer = _fit([], tmp_path)
    with pytest.raises(ValueError, match=r"level must be one of \('INFO', 'WARN', 'ERROR'\), got 'LOUD'"):
        TrainerSink(trainer).alert("t", "x", level="LOUD")
