"""Resuming a Lightning fit from a checkpoint that holds no monitor state says so (the series
starts afresh), with both Lightning packages; a checkpoint with the state resumes silently."""
from __future__ import annotations

import importlib
import warnings

import pytest
import torch

from geomonitor.callbacks import GeometryMonitor
from geomonitor.monitor import MonitorWarning

PACKAGES = [p for p in ("pytorch_lightning", "lightning.pytorch")
            if importlib.util.find_spec(p.split(".")[0]) is not None]


def _net(pl):
    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2 = torch.nn.Linear(5, 8), torch.nn.Linear(8, 1)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self(x) - y).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Net()


def _loader():
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(3))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1]), batch_size=8)


def _monitor():
    return GeometryMonitor(max_overhead=None, layers=["fc1"], probe_size=16, id_every_n_steps=2,
                           sharpness_every_n_steps=None, topology_every_n_steps=None,
                           np_every_n_steps=None, symmetry_every_n_steps=None, strict=True)


def _fit(pl, root, callbacks, max_epochs, ckpt_path=None):
    trainer = pl.Trainer(max_epochs=max_epochs, logger=False, callbacks=callbacks, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=root)
    trainer.fit(_net(pl), _loader(), ckpt_path=ckpt_path)
    return trainer


def _resume_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, MonitorWarning)
            and "without monitor state" in str(w.message)]


@pytest.mark.parametrize("package", PACKAGES)
def test_resume_from_a_checkpoint_without_monitor_state_warns(package, tmp_path):
    pl = importlib.import_module(package)
    ckpt = str(tmp_path / "plain.ckpt")
    _fit(pl, tmp_path, [], 1).save_checkpoint(ckpt)  # written without the monitor
    mon = _monitor()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(pl, tmp_path, [mon], 2, ckpt_path=ckpt)
    (msg,) = _resume_warnings(record)
    assert msg == (f"GeometryMonitor: resumed from {ckpt} at step 4 without monitor state in the "
                   "checkpoint; the geometry series starts afresh (a new probe set is drawn)")
    assert mon.monitor.measured["id"] == 2  # steps 6 and 8: the fit itself goes on


@pytest.mark.parametrize("package", PACKAGES)
def test_resume_with_monitor_state_and_a_fresh_fit_are_silent(package, tmp_path):
    pl = importlib.import_module(package)
    ckpt = str(tmp_path / "with_state.ckpt")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(pl, tmp_path, [_monitor()], 1).save_checkpoint(ckpt)
        _fit(pl, tmp_path, [_monitor()], 2, ckpt_path=ckpt)
    assert _resume_warnings(record) == []
