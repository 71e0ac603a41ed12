"""Zero observer effect: a seeded run with the monitor ends bitwise identical to one without.

The model has BatchNorm (running statistics), dropout (global RNG) and a transformer block
(``nn.TransformerEncoderLayer``, scaled-dot-product attention); the train loader shuffles with
the global generator. Also: no thread and no child process (giotto-ph's) outlives the Trainer,
and an interrupted fit (on_exception) cancels the background work.
"""
from __future__ import annotations

import os
import signal
import threading

import pytest
import pytorch_lightning as pl
import torch
from torch import nn


from geomonitor.callbacks import GeometryMonitor


class _Block(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.encoder = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16,
                                                  dropout=0.1, batch_first=True)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.encoder(self.embed(x)).mean(1)
        return self.head(self.drop(torch.relu(self.norm(h))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class _Record(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


class _ChildPids(pl.Callback):
    """Records the giotto-ph child process of the monitor's topology family while it runs."""

    def __init__(self, monitor) -> None:
        self.monitor, self.pids = monitor, set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for fam in self.monitor.families:
            pid = fam._ripser.pid if fam.name == "topology" and fam._ripser is not None else None
            if pid is not None:
                self.pids.add(pid)

    def all_gone(self) -> bool:
        for pid in self.pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            return False
        return True


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _rng_states(accelerator):
    cpu = torch.get_rng_state()
    return (cpu, torch.cuda.get_rng_state()) if accelerator == "gpu" else (cpu,)


def _run(tmp_path, monitor=None, max_steps=8, extra=(), accelerator="cpu"):
    pl.seed_everything(123, verbose=False)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(48, 4, 6, generator=g),
                                          torch.randint(0, 3, (48,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    model, rec = _Block(), _Record()
    callbacks = [rec] + ([monitor] if monitor is not None else []) + list(extra)
    trainer = pl.Trainer(max_steps=max_steps, accelerator=accelerator, devices=1, logger=False,
                         callbacks=callbacks, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, loader)
    return model, trainer.optimizers[0], rec.losses, _rng_states(accelerator)


def _monitor(**kw):
    return GeometryMonitor(max_overhead=None, layers=["embed", "encoder", "head"], reduce="mean", probe_size=24,
                           id_every_n_steps=2, sharpness_every_n_steps=3,
                           sharpness_max_hvp=5, topology_every_n_steps=2,
                           topology_every_n_epochs=None, np_every_n_steps=4, **kw)


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("gpu", marks=CUDA)])
def test_monitor_leaves_weights_optimizer_losses_and_rng_bitwise_unchanged(tmp_path, accelerator):
    before = set(threading.enumerate())
    ref_model, ref_opt, ref_losses, ref_rng = _run(tmp_path, accelerator=accelerator)
    mon = _monitor(strict=True)
    children = _ChildPids(mon)
    model, opt, losses, rng = _run(tmp_path, mon, extra=[children], accelerator=accelerator)

    assert mon.monitor._last == {"id": 8, "sharpness": 6, "topology": 8, "neural_persistence": 8}
    assert mon.errors == {}
    for (k, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k  # weights and BatchNorm running statistics
    for pa, pb in zip(ref_opt.param_groups[0]["params"], opt.param_groups[0]["params"]):
        assert torch.equal(ref_opt.state[pa]["momentum_buffer"], opt.state[pb]["momentum_buffer"])
    assert torch.equal(torch.stack(ref_losses), torch.stack(losses))
    assert all(torch.equal(a, b) for a, b in zip(ref_rng, rng))  # CPU and CUDA generators
    # no thread and no child process outlives the Trainer
    assert set(threading.enumerate()) <= before
    assert children.pids and children.all_gone()


class _Boom(pl.Callback):
    def __init__(self, exc):
        self.exc = exc

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 4:
            raise self.exc


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_fit_cancels_background_work(tmp_path, exc):
    before = set(threading.enumerate())
    mon = _monitor()
    children = _ChildPids(mon)
    pl.seed_everything(0, verbose=False)
    data = torch.utils.data.TensorDataset(torch.randn(48, 4, 6), torch.randint(0, 3, (48,)))
    trainer = pl.Trainer(max_steps=20, accelerator="cpu", logger=False,
                         callbacks=[mon, children, _Boom(exc)], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    if isinstance(exc, KeyboardInterrupt):
        sigint = signal.getsignal(signal.SIGINT)
        try:  # Lightning calls on_exception, ignores further Ctrl+C, then exits with status 1
            with pytest.raises(SystemExit):
                trainer.fit(_Block(), torch.utils.data.DataLoader(data, batch_size=8))
        finally:
            signal.signal(signal.SIGINT, sigint)
        assert trainer.interrupted
    else:
        with pytest.raises(RuntimeError, match="boom"):
            trainer.fit(_Block(), torch.utils.data.DataLoader(data, batch_size=8))
    assert mon.monitor._closed
    assert set(threading.enumerate()) <= before
    assert children.pids and children.all_gone()
