"""MLflow, W&B and CSV loggers in one fit with GeometryMonitor and NeuralPersistenceEarlyStopping.

Every geometry key (including ``geometry/neural_persistence/mean`` next to the per-layer
``geometry/neural_persistence/<layer>``: no key is both a leaf and a prefix, which MLflow's
file store cannot hold) arrives in all three, read back from each one's storage: MLflow
through ``MlflowClient``, CSV from ``metrics.csv``, W&B from the offline run file. A logger
that raises on the geometry keys is warned about once and takes nothing down.
"""
from __future__ import annotations

import csv
import functools
import glob
import os
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, WandbLogger

mlflow = pytest.importorskip("mlflow")

import wandb_offline  # noqa: E402

from geomonitor.callbacks import GeometryMonitor, NeuralPersistenceEarlyStopping  # noqa: E402
from geomonitor.callbacks.early_stopping import NP_KEY  # noqa: E402
from geomonitor.callbacks.sinks import STEP_KEY  # noqa: E402

_FAST = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
             enable_checkpointing=False, log_every_n_steps=1)
_EXPECTED = {"geometry/id/fc1", "geometry/id/fc2", "geometry/sharpness", "geometry/eos_ratio",
             "geometry/ph/fc1/h1_n_bars", "geometry/ph/fc2/h0_total_persistence",
             "geometry/neural_persistence/mean", "geometry/neural_persistence/fc1",
             "geometry/neural_persistence/fc2", "geometry/neural_persistence/fc3"}


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
        self.fc2 = torch.nn.Linear(32, 16)
        self.fc3 = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _monitor() -> GeometryMonitor:
    return GeometryMonitor(layers=["fc1", "fc2"], max_overhead=None, probe_size=64,
                           id_every_n_steps=4, sharpness_every_n_steps=4, sharpness_max_hvp=10,
                           topology_every_n_epochs=1, topology_landmarks=32,
                           np_every_n_epochs=1, strict=True)


def _fit(loggers, root, epochs=2):
    mon, es = _monitor(), NeuralPersistenceEarlyStopping(patience=50)
    trainer = pl.Trainer(**_FAST, max_epochs=epochs, logger=loggers, callbacks=[mon, es],
                         default_root_dir=str(root))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_digits()), batch_size=64)
    trainer.fit(_Digits(), loader)  # 4 steps per epoch
    return trainer, mon, es


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    # MLflow >= 3.x refuses its file store unless asked; it is the store in which a name that is
    # both a leaf and a prefix ("a/b" next to "a/b/c") fails, so it is the one to test against
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _mlflow(tmp_path) -> tuple[MLFlowLogger, str]:
    uri = (tmp_path / "mlruns").as_uri()  # file:///...
    return MLFlowLogger(experiment_name="geometry", tracking_uri=uri), uri


def _mlflow_history(logger: MLFlowLogger, uri: str, key: str) -> dict[int, float]:
    client = mlflow.tracking.MlflowClient(uri)
    return {m.step: m.value for m in client.get_metric_history(logger.run_id, key)}


def _csv_history(root, key: str) -> dict[int, float]:
    (path,) = glob.glob(os.path.join(str(root), "csv", "*", "metrics.csv"))
    with open(path) as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def _geometry_keys(trainer) -> set[str]:
    return {k for k in trainer.callback_metrics if k.startswith("geometry/")}


def test_mlflow_wandb_and_csv_each_get_every_geometry_key(tmp_path, wandb_dir):
    ml, uri = _mlflow(tmp_path)
    wb = WandbLogger(project="loggers-together", save_dir=str(wandb_dir), offline=True)
    cs = CSVLogger(str(tmp_path), name="csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, mon, es = _fit([ml, wb, cs], tmp_path)
    wb.experiment.finish()
    assert trainer.current_epoch == 2 and mon.errors == {}
    assert not [str(w.message) for w in caught if "failed to log" in str(w.message)]  # none failed

    keys = _geometry_keys(trainer)
    assert _EXPECTED <= keys, sorted(_EXPECTED - keys)
    assert "geometry/neural_persistence" not in keys  # the network mean is .../mean
    rows = wandb_offline.history(wandb_offline.find_run_file(str(wandb_dir)))
    for key in sorted(keys):
        latest = float(trainer.callback_metrics[key])
        wb_steps = {r[STEP_KEY]: r[key] for r in rows if key in r}
        ml_steps = _mlflow_history(ml, uri, key)
        csv_steps = _csv_history(tmp_path, key)
        assert wb_steps and set(wb_steps) == set(ml_steps) == set(csv_steps), (key, wb_steps, ml_steps, csv_steps)
        last = max(wb_steps)
        for got in (wb_steps[last], ml_steps[last], csv_steps[last]):
            assert got == pytest.approx(latest, rel=1e-12), key
    # the family and the early stopping wrote one definition of neural persistence
    assert set(_mlflow_history(ml, uri, NP_KEY)) == {4, 8}
    assert _mlflow_history(ml, uri, NP_KEY)[8] == pytest.approx(es.history[-1], rel=1e-12)


class _Rejecting(CSVLogger):
    """A logger whose storage refuses the geometry names (as a file store would refuse ``a/b``
    next to ``a/b/c``): it raises for them and logs everything else."""

    calls = 0

    def log_metrics(self, metrics, step=None):
        if any(k.startswith("geometry/") for k in metrics):
            type(self).calls += 1
            raise NotADirectoryError(20, "Not a directory", "geometry/neural_persistence")
        super().log_metrics(metrics, step)


def test_a_failing_logger_is_warned_once_and_the_others_get_every_key(tmp_path):
    ml, uri = _mlflow(tmp_path)
    cs = CSVLogger(str(tmp_path), name="csv")
    bad = _Rejecting(str(tmp_path), name="rejecting")
    _Rejecting.calls = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, mon, es = _fit([bad, ml, cs], tmp_path, epochs=3)
    assert trainer.current_epoch == 3 and trainer.global_step == 12  # training finished

    failed = [w for w in caught if issubclass(w.category, RuntimeWarning)
              and "_Rejecting failed to log geometry metrics" in str(w.message)]
    assert _Rejecting.calls > 3  # it failed at every geometry step (monitor and early stopping)
    assert failed and all("Not a directory" in str(w.message) for w in failed)

    keys = _geometry_keys(trainer)
    assert _EXPECTED <= keys
    for key in sorted(keys):
        ml_steps, csv_steps = _mlflow_history(ml, uri, key), _csv_history(tmp_path, key)
        assert ml_steps and set(ml_steps) == set(csv_steps), key
        assert ml_steps[max(ml_steps)] == pytest.approx(float(trainer.callback_metrics[key]), rel=1e-12)
    assert len(es.history) == 3
    # the rejecting logger still logged the rest
    (path,) = glob.glob(os.path.join(str(tmp_path), "rejecting", "*", "metrics.csv"))
    with open(path) as f:
        table = list(csv.DictReader(f))
    assert sum(bool(r.get("train_loss")) for r in table) == 12
    assert not any(k.startswith("geometry/") for k in table[0])
    # once per logger and fit, whichever callback (monitor, early stopping) hit the failure
    assert len(failed) == 1, [str(w.message) for w in failed]
