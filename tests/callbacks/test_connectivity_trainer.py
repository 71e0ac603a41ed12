"""Connectivity under a real Lightning Trainer whose ``training_step`` reads ``self.trainer``:
the loss runs on a working copy of the module, which must still see the trainer. The barrier
is checked against a hand-written interpolation of the recorded weights (plain ``F.linear``)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from geomonitor._copy import working_copy
from geomonitor.callbacks import GeometryMonitor
from geomonitor.callbacks._adapter import training_loss
from geomonitor.monitor.families.connectivity import ConnectivityFamily
from geomonitor.monitor.family import Context
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(5, 8)
        self.fc2 = torch.nn.Linear(8, 1)
        self.seen_steps: list[int] = []

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        self.seen_steps.append(self.trainer.global_step)  # raises when not attached
        x, y = batch
        return (self(x) - y).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 5, generator=g)
    data = torch.utils.data.TensorDataset(x, x[:, :1] * x[:, 1:2])
    return torch.utils.data.DataLoader(data, batch_size=16)


class _Weights(pl.Callback):
    """The weights after every optimizer step (listed before the monitor, so it sees them first)."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.at[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _trainer(callbacks, root):
    return pl.Trainer(max_epochs=1, logger=False, callbacks=callbacks, accelerator="cpu",
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=root)


def _reference_barrier(a, b, x, y, n_alpha=11):
    def loss(w):
        h = torch.tanh(F.linear(x, w["fc1.weight"], w["fc1.bias"]))
        return float((F.linear(h, w["fc2.weight"], w["fc2.bias"]) - y).pow(2).mean())

    ts = [i / (n_alpha - 1) for i in range(n_alpha)]
    values = [loss({k: (1 - t) * a[k] + t * b[k] for k in a}) for t in ts]
    return max(v - ((1 - t) * values[0] + t * values[-1]) for t, v in zip(ts, values))


def test_barrier_under_a_trainer_whose_training_step_reads_the_trainer(tmp_path):
    weights = _Weights()
    mon = GeometryMonitor(max_overhead=None, layers=["fc1"], probe_size=32, id_every_n_steps=None,
                          sharpness_every_n_steps=None, topology_every_n_steps=None,
                          np_every_n_steps=None, symmetry_every_n_steps=None,
                          connectivity_every_n_steps=2, strict=True)
    net = _Net()
    _trainer([weights, mon], tmp_path).fit(net, _loader())
    assert mon.errors == {} and mon.monitor.measured["connectivity"] == 2
    x, y = mon.probe.batch
    want = _reference_barrier(weights.at[2], weights.at[4], x, y)
    got = mon.monitor.latest[metric_key("connectivity", summary="barrier")]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_instability_children_see_the_trainer(tmp_path):
    fam = ConnectivityFamily(Every(n_steps=1), instability_at=2, instability_steps=2)
    out = {}

    class _Run(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                ctx = Context(pl_module, 2, batch, lambda: {}, optimizer=trainer.optimizers[0],
                              loss_fn=training_loss)
                out["m"] = fam.run(ctx)

    _trainer([_Run()], tmp_path).fit(_Net(), _loader())
    assert out["m"].errors == []
    assert metric_key("connectivity", summary="instability_barrier") in out["m"].metrics


def test_working_copy_owns_its_tensors_and_shares_the_dropped_references(tmp_path):
    net = _Net()
    trainer = _trainer([], tmp_path)
    trainer.fit(net, _loader())
    copy = working_copy(net)
    assert copy.trainer is trainer
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(net.parameters(), copy.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), copy.parameters()))
    with torch.no_grad():
        copy.fc1.weight.add_(1.0)
    assert not torch.equal(net.fc1.weight, copy.fc1.weight)
    assert copy.seen_steps is not net.seen_steps  # everything else is copied
