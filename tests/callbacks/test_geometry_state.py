"""Checkpoint state: weights_only round trip, bad version, and a resumed fit that continues the
same series as an uninterrupted one (probe set, sharpness warm start, counters)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger


from geomonitor.callbacks import GeometryMonitor, SharpnessMonitor
from geomonitor.monitor.engine import MonitorWarning


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
        return (self(x) - y).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Memory(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    name = "memory"
    version = 0

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows += [(step, k, v) for k, v in metrics.items() if k.startswith("geometry/")]


def _loader():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 5, generator=g)
    data = torch.utils.data.TensorDataset(x, x[:, :1] * x[:, 1:2])
    return torch.utils.data.DataLoader(data, batch_size=16)  # 4 steps per epoch, no shuffle


def _monitor():
    # few HVPs: the values depend on the warm-start vector, so a lost state would show
    return GeometryMonitor(max_overhead=None, layers=["fc1"], probe_size=32, sharpness_every_n_steps=2,
                           sharpness_max_hvp=2, id_every_n_steps=2,
                           topology_every_n_steps=None, topology_every_n_epochs=None, np_every_n_epochs=1, strict=True)


def _trainer(monitor, logger, root, max_epochs):
    return pl.Trainer(max_epochs=max_epochs, logger=logger, callbacks=[monitor], accelerator="cpu",
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=root, log_every_n_steps=1)


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_state_dict_round_trips_through_weights_only_load(tmp_path):
    mon = _monitor()
    _trainer(mon, False, tmp_path, 1).fit(_Net(), _loader())
    state = mon.state_dict()
    assert state["probe"]["indices"].shape == (32,)
    assert state["last"] == {"id": 4, "sharpness": 4, "neural_persistence": 4}
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh = _monitor()
    fresh.load_state_dict(loaded)
    assert _equal(fresh.state_dict(), state)


def test_load_state_dict_rejects_an_unknown_version():
    with pytest.raises(ValueError, match=r"state_dict version must be 2, got 7"):
        SharpnessMonitor().load_state_dict({"version": 7})


def test_resumed_fit_continues_the_same_series(tmp_path):
    full = _Memory()
    _trainer(_monitor(), full, tmp_path / "a", 2).fit(_Net(), _loader())

    first, second = _Memory(), _Memory()
    trainer = _trainer(_monitor(), first, tmp_path / "b", 1)
    trainer.fit(_Net(), _loader())
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = _monitor()
    _trainer(resumed, second, tmp_path / "c", 2).fit(_Net(), _loader(), ckpt_path=ckpt)

    def series(rows, key):
        return [(s, v) for s, k, v in rows if k == key]

    for key in ("geometry/sharpness", "geometry/id/fc1", "geometry/neural_persistence/mean"):
        want = series(full.rows, key)
        got = series(first.rows, key) + series(second.rows, key)
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5), key
    assert resumed.monitor._last["sharpness"] == 8


def _switched_monitor():
    # the same sharpness, ID and symmetry as _monitor(); neural persistence off, connectivity on
    return GeometryMonitor(max_overhead=None, layers=["fc1"], probe_size=32, sharpness_every_n_steps=2,
                           sharpness_max_hvp=2, id_every_n_steps=2,
                           topology_every_n_steps=None, topology_every_n_epochs=None,
                           np_every_n_steps=None, np_every_n_epochs=None,
                           connectivity_every_n_steps=2, strict=True)


def test_turning_a_family_on_or_off_at_resume_keeps_the_others_state(tmp_path, capsys):
    full = _Memory()
    _trainer(_monitor(), full, tmp_path / "a", 2).fit(_Net(), _loader())
    first, second = _Memory(), _Memory()
    trainer = _trainer(_monitor(), first, tmp_path / "b", 1)
    trainer.fit(_Net(), _loader())
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    capsys.readouterr()
    resumed = _switched_monitor()
    with pytest.warns(MonitorWarning, match=r"connectivity start fresh.*neural_persistence not running now"):
        _trainer(resumed, second, tmp_path / "c", 2).fit(_Net(), _loader(), ckpt_path=ckpt)
    assert "Please add the following callbacks" not in capsys.readouterr().err

    def series(rows, key):
        return [(s, v) for s, k, v in rows if k == key]

    for key in ("geometry/sharpness", "geometry/id/fc1"):  # the warm start and probe set survive
        want = series(full.rows, key)
        got = series(first.rows, key) + series(second.rows, key)
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5), key
    assert resumed.monitor._last["sharpness"] == 8 and resumed.monitor.measured["sharpness"] == 4
    assert [s for s, k, _ in second.rows if k == "geometry/connectivity/barrier"] == [8]
    # the family turned off keeps its entry: turned on again later, it resumes from it
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["GeometryMonitor"]["families"]
    state = resumed.state_dict()["families"]
    assert set(state) == {"id", "sharpness", "neural_persistence", "symmetry", "connectivity"}
    assert _equal(state["neural_persistence"], saved["neural_persistence"])


def test_a_checkpoint_keyed_by_the_family_list_still_resumes(tmp_path):
    trainer = _trainer(_monitor(), False, tmp_path / "b", 1)
    trainer.fit(_Net(), _loader())
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    data = torch.load(ckpt, weights_only=False)
    old_key = "GeometryMonitor{'families': ['id', 'sharpness', 'neural_persistence']}"
    data["callbacks"] = {old_key: data["callbacks"].pop("GeometryMonitor")}
    torch.save(data, tmp_path / "old.ckpt")
    resumed = _monitor()
    _trainer(resumed, False, tmp_path / "c", 2).fit(_Net(), _loader(), ckpt_path=tmp_path / "old.ckpt")
    assert resumed.monitor.measured["sharpness"] == 4 and resumed.monitor._last["sharpness"] == 8
