"""Side effects of ``training_step`` under the sharpness measurement (a documented choice):
the default loss runs the live module's ``training_step`` on the probe batch, so a counter it
increments counts the measurement's loss evaluations too; with ``loss_fn=`` it counts the
training batches only. Counted against the batches the Trainer ran."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from geomonitor.callbacks import SharpnessMonitor


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(5, 8)
        self.fc2 = torch.nn.Linear(8, 1)
        self.calls = 0

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        self.calls += 1  # a side effect other than self.log
        x, y = batch
        return (self(x) - y).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(monitor, tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 5, generator=g)
    data = torch.utils.data.TensorDataset(x, x[:, :1] * x[:, 1:2])
    net = _Net()
    trainer = pl.Trainer(max_epochs=1, logger=False, callbacks=[monitor], accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(net, torch.utils.data.DataLoader(data, batch_size=16))
    return net, trainer


def _loss(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def test_the_default_loss_runs_training_step_again_and_loss_fn_does_not(tmp_path):
    default = SharpnessMonitor(every_n_steps=2, max_overhead=None, probe_size=16, strict=True)
    net, trainer = _fit(default, tmp_path / "a")
    batches = trainer.global_step  # 4 optimizer steps, one batch each
    assert batches == 4 and default.monitor.measured["sharpness"] == 2
    assert net.calls > batches  # the measurement's loss evaluations ran training_step too

    own = SharpnessMonitor(every_n_steps=2, max_overhead=None, probe_size=16, strict=True,
                           loss_fn=_loss)
    net, trainer = _fit(own, tmp_path / "b")
    assert own.monitor.measured["sharpness"] == 2 and net.calls == trainer.global_step == 4
