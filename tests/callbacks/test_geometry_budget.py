"""The overhead budget in a real fit: deferred measurements, schedule kept without a budget."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from geomonitor.callbacks import GeometryMonitor


class _Recorder(Logger):
    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def experiment(self):
        return None

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(4, 16), torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(max_overhead):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    mon = GeometryMonitor(layers=["fc1"], probe_size=32, sharpness_every_n_steps=1,
                          id_every_n_steps=None, topology_every_n_epochs=None,
                          np_every_n_epochs=None, prog_bar=None, strict=True,
                          max_overhead=max_overhead)
    rec = _Recorder()
    torch.manual_seed(0)
    trainer = pl.Trainer(max_steps=40, logger=rec, callbacks=[mon], accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.fit(_Net(), torch.utils.data.DataLoader(data, batch_size=4))
    steps = [s for s, m in rec.rows if "geometry/sharpness" in m]
    return mon, steps


def test_without_a_budget_every_scheduled_step_is_measured():
    mon, steps = _fit(None)
    assert steps == list(range(1, 41)) and mon.budget.deferred == {}


def test_a_tight_budget_defers_measurements_and_never_measures_off_step():
    mon, steps = _fit(0.001)
    assert steps[0] == 1  # the first measurement always runs (its cost is unknown)
    assert len(steps) < 40 and mon.budget.deferred["sharpness"] > 0
    assert steps == sorted(set(steps)) and all(1 <= s <= 40 for s in steps)


def test_bad_max_overhead_is_rejected_at_construction():
    with pytest.raises(ValueError, match=r"max_overhead must be a number in \(0, 1\] or None, got 2"):
        GeometryMonitor(max_overhead=2)
