"""Every public callback deep-copies and pickles, before and after a fit (its checkpoint state
survives the copy), and a ``strategy="ddp_spawn"`` fit with two CPU processes -- which pickles
the callbacks into the workers -- completes with the default ``GeometryMonitor()``."""
from __future__ import annotations

import copy
import functools
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from geomonitor.callbacks import (GeometryAlerts, GeometryMonitor, IntrinsicDimensionMonitor,
                                  NeuralPersistenceEarlyStopping, NeuralPersistenceMonitor,
                                  SharpnessMonitor, TopologyMonitor)


def _callbacks() -> dict[str, pl.Callback]:
    return {"GeometryMonitor": GeometryMonitor(),
            "IntrinsicDimensionMonitor": IntrinsicDimensionMonitor(layers=["fc1"], every_n_steps=2,
                                                                   probe_size=64),
            "SharpnessMonitor": SharpnessMonitor(every_n_steps=2, probe_size=64),
            "TopologyMonitor": TopologyMonitor(layers=["fc2"], n_landmarks=32, probe_size=64),
            "NeuralPersistenceMonitor": NeuralPersistenceMonitor(),
            "GeometryAlerts": GeometryAlerts(),
            "NeuralPersistenceEarlyStopping": NeuralPersistenceEarlyStopping(patience=5)}


@functools.lru_cache(maxsize=1)
def _digits(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


class _Digits(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _same(a, b) -> bool:
    """Recursive equality of state dicts (tensors and arrays compared exactly)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def _state(cb) -> dict:
    """The callback's checkpoint state, less the cost cap's training time: read off the wall
    clock at each call, it is the one entry two calls never agree on."""
    state = copy.deepcopy(cb.state_dict())
    state.get("cost", {}).pop("training", None)
    return state


def _check_copies(cb) -> None:
    for clone in (copy.deepcopy(cb), pickle.loads(pickle.dumps(cb))):
        assert type(clone) is type(cb) and clone is not cb
        assert clone.state_key == cb.state_key
        assert _same(_state(clone), _state(cb)), type(cb).__name__


@pytest.mark.parametrize("name", list(_callbacks()))
def test_every_public_callback_copies_and_pickles_before_a_fit(name):
    cb = _callbacks()[name]
    _check_copies(cb)


def test_every_public_callback_copies_and_pickles_after_a_fit(tmp_path):
    cbs = _callbacks()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=str(tmp_path),
                         callbacks=list(cbs.values()))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_digits()), batch_size=16)
    trainer.fit(_Digits(), loader)  # 32 steps: every family measured at least once (first at 10)
    assert {"geometry/id/fc1", "geometry/sharpness", "geometry/ph/fc2/h1_n_bars",
            "geometry/neural_persistence/mean"} <= set(trainer.callback_metrics)
    assert len(cbs["NeuralPersistenceEarlyStopping"].history) == 2
    failures = {}
    for name, cb in cbs.items():
        try:
            _check_copies(cb)
        except Exception as exc:  # noqa: BLE001 - collect every callback's failure, then report
            failures[name] = repr(exc)
    assert not failures, failures
    # a copy resumes where the original stopped: the monitor state travels with it
    clone = copy.deepcopy(cbs["GeometryMonitor"])
    assert clone.state_dict()["last"] == cbs["GeometryMonitor"].state_dict()["last"] != {}


_SPAWN_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import pytorch_lightning as pl
    import torch
    from geomonitor.callbacks import GeometryMonitor

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2 = torch.nn.Linear(64, 32), torch.nn.Linear(32, 10)
        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Dump(pl.Callback):
        def on_fit_end(self, trainer, pl_module):
            vals = {k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith("geometry/")}
            with open(os.path.join(OUT, f"rank{trainer.global_rank}.json"), "w") as f:
                json.dump(vals, f)

    OUT = sys.argv[1]
    if __name__ == "__main__":
        torch.set_num_threads(1)
        from sklearn.datasets import load_digits
        X, y = load_digits(return_X_y=True)
        data = torch.utils.data.TensorDataset(torch.tensor(X[:256] / 16.0, dtype=torch.float32),
                                              torch.tensor(y[:256]))
        mon = GeometryMonitor()  # the defaults: topology (a giotto-ph child process) on
        model = Net()
        trainer = pl.Trainer(strategy="ddp_spawn", devices=2, accelerator="cpu", max_epochs=1, max_steps=10,
                             logger=False, callbacks=[mon, Dump()], enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False,
                             default_root_dir=OUT)
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))  # 10 of 16 steps
        main = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("geometry/")}
        weights = {k: v.tolist() for k, v in model.state_dict().items()}
        with open(os.path.join(OUT, "main.json"), "w") as f:
            json.dump({"metrics": main, "weights": weights}, f)
''')


def _np_reference(weights: list[np.ndarray]) -> float:
    """Mean normalised neural persistence (Rieck et al. 2019, Definitions 2-4, Algorithm 1) from
    scipy's minimum spanning tree on 2 - |w|/max|w| (a maximum spanning tree of |w|)."""
    from scipy.sparse.csgraph import minimum_spanning_tree

    mats = [np.abs(w) for w in weights]
    w_max = max(a.max() for a in mats)
    values = []
    for a in mats:
        out, inp = a.shape
        graph = np.zeros((out + inp, out + inp))
        graph[:out, out:] = 2.0 - a / w_max
        pers = minimum_spanning_tree(graph).data - 1.0
        values.append(np.sqrt((pers ** 2).sum() / (out + inp - 1)))
    return float(np.mean(values))


def test_ddp_spawn_two_cpu_processes_with_the_default_monitor(tmp_path):
    script = tmp_path / "spawn_fit.py"
    script.write_text(_SPAWN_SCRIPT)
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, timeout=600,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]

    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1  # same probe set, same weights: the same numbers on both ranks
    assert {"geometry/neural_persistence/mean", "geometry/neural_persistence/fc1",
            "geometry/ph/fc1/h1_n_bars", "geometry/ph/fc2/h0_total_persistence"} <= set(r0)
    main = json.loads((tmp_path / "main.json").read_text())
    # the main process gets rank 0's callback_metrics back (its own callback object never ran:
    # each worker ran an unpickled copy) ...
    assert main["metrics"] == r0
    # ... and rank 0's trained weights: their neural persistence is the logged one
    w = main["weights"]
    ref = _np_reference([np.array(w["fc1.weight"]), np.array(w["fc2.weight"])])
    assert main["metrics"]["geometry/neural_persistence/mean"] == pytest.approx(ref, rel=1e-9)
