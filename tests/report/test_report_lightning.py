"""``read_run`` and ``geomonitor report`` on one real Lightning fit logged to CSV, TensorBoard,
MLflow and W&B offline at once: every logger's values, read back by ``read_run``, equal the
CSV file read with the csv module; W&B's diagram tables agree with the logged bar counts."""
from __future__ import annotations

import os
import sys

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

import wandb_offline  # noqa: E402
sys.path.insert(0, os.path.dirname(__file__))
from report_fits import FAMILY_OPTIONS, csv_values, digits  # noqa: E402

from geomonitor import read_run  # noqa: E402
from geomonitor.callbacks import GeometryMonitor  # noqa: E402
from geomonitor.cli import main  # noqa: E402
from geomonitor.runs import Table, run_kind  # noqa: E402


class _Digits(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = (torch.nn.Linear(64, 32), torch.nn.Linear(32, 16),
                                        torch.nn.Linear(16, 10))

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    mp = pytest.MonkeyPatch()
    import wandb

    wandb.teardown()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root))
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store, which read_run reads
    loggers = [CSVLogger(str(root / "csv")), TensorBoardLogger(str(root / "tb")),
               MLFlowLogger(experiment_name="report", tracking_uri=f"file:{root / 'mlruns'}"),
               WandbLogger(project="report", save_dir=str(root), offline=True)]
    monitor = GeometryMonitor(layers=["fc1", "fc2"], strict=True, **FAMILY_OPTIONS)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, logger=loggers, callbacks=[monitor],
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, log_every_n_steps=1,
                         default_root_dir=str(root))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*digits()), batch_size=64)
    trainer.fit(_Digits(), loader)  # 4 steps per epoch, 12 in all
    loggers[3].experiment.finish()
    mlf = loggers[2]
    runs = {"csv": loggers[0].log_dir, "tensorboard": loggers[1].log_dir,
            "mlflow": str(root / "mlruns" / mlf.experiment_id / mlf.run_id),
            "wandb": os.path.dirname(wandb_offline.find_run_file(str(root)))}
    yield runs, csv_values(os.path.join(loggers[0].log_dir, "metrics.csv"))
    mp.undo()


def _scalars(rows):
    return {(r.step, r.key): r.value for r in rows if not isinstance(r.value, Table)}


@pytest.mark.parametrize("kind", ["csv", "tensorboard", "mlflow", "wandb"])
def test_read_run_gives_what_the_logger_wrote(fit, kind):
    runs, reference = fit
    assert run_kind(runs[kind])[0] == kind
    got = _scalars(read_run(runs[kind]))
    geometry = {k: v for k, v in reference.items() if k[1].startswith("geometry/")}
    assert {k for _, k in geometry} >= {"geometry/sharpness", "geometry/id/fc1",
                                         "geometry/ph/fc2/h1_n_bars", "geometry/neural_persistence/mean",
                                         "geometry/symmetry/fc1/imbalance"}
    wanted = {**geometry, **{k: v for k, v in reference.items() if k[1] == "train/loss"}}
    missing = sorted(set(wanted) - set(got))
    assert not missing, missing[:5]
    tol = 1e-6 if kind == "tensorboard" else 1e-12  # TensorBoard stores float32
    bad = [(k, wanted[k], got[k]) for k in wanted
           if abs(got[k] - wanted[k]) > tol * max(1.0, abs(wanted[k]))]
    assert not bad, bad[:5]


def test_wandb_tables_are_the_diagrams_and_profile(fit):
    runs, reference = fit
    rows = read_run(runs["wandb"])
    tables = [r for r in rows if isinstance(r.value, Table)]
    diagrams = [r for r in tables if r.key == "geometry/ph/fc2/diagram"]
    assert [r.step for r in diagrams] == sorted({s for s, k in reference if k == "geometry/ph/fc2/h1_n_bars"})
    for r in diagrams:  # one table per step though W&B holds it twice (table and plot)
        col = r.value.columns.index("dim")
        h1 = [d for d in r.value.data if d[col] == 1 and d[2] > d[1]]
        assert len(h1) == reference[(r.step, "geometry/ph/fc2/h1_n_bars")]
    profiles = [r for r in tables if r.key == "geometry/id_profile"]
    assert profiles
    for r in profiles:  # the line-series table: the rows of every step so far, this one's too
        col = {c: i for i, c in enumerate(r.value.columns)}
        now = [d for d in r.value.data if d[col["step"]] == r.step]
        assert [d[col["layer"]] for d in now] == ["fc1", "fc2"]
        assert [d[col["value"]] for d in now] == pytest.approx(
            [reference[(r.step, f"geometry/id/{n}")] for n in ("fc1", "fc2")], rel=1e-12)


@pytest.mark.parametrize("kind", ["csv", "tensorboard", "mlflow", "wandb"])
def test_report_of_each_logger(fit, kind, tmp_path):
    runs, _ = fit
    out = tmp_path / "report.html"
    assert main(["report", runs[kind], "-o", str(out)]) == 0
    page = out.read_text()
    for title in ("Loss and sharpness", "Intrinsic dimension", "Persistence summaries over time",
                  "Neural persistence", "Symmetry"):
        assert f"<h2>{title}</h2>" in page, title
    assert ("<h2>Persistence diagrams</h2>" in page) == (kind == "wandb")
    assert "panel failed" not in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_wandb_tables_are_read_under_either_name_once(wandb_dir):
    """A table logged as ``<key>/table``, as a plot (``<key>/plot_table``) or both (earlier
    versions), or as a chart under ``<key>`` (``<key>_table``) is one row."""
    import wandb

    run = wandb.init(project="tables", dir=str(wandb_dir), mode="offline")
    data = [[0, 0.0, 0.5], [1, 0.25, 0.75]]
    ways = {"fc1": ("table",), "fc2": ("plot",), "fc3": ("table", "plot"), "fc4": ("chart",)}
    for step in (3, 7):
        row = {"geometry/step": step, "geometry/ph/fc1/h1_n_bars": 1.0}
        for layer, logged_as in ways.items():
            table = wandb.Table(columns=["dim", "birth", "death"],
                                data=[[d, b, x + step] for d, b, x in data])
            if "table" in logged_as:
                row[f"geometry/ph/{layer}/diagram/table"] = table
            if "plot" in logged_as:
                row[f"geometry/ph/{layer}/diagram/plot"] = wandb.plot.scatter(table, "birth", "death")
            if "chart" in logged_as:
                row[f"geometry/ph/{layer}/diagram"] = wandb.plot.scatter(table, "birth", "death")
        run.log(row)
    run.finish()
    rows = read_run(os.path.dirname(wandb_offline.find_run_file(str(wandb_dir))))
    tables = sorted((r.step, r.key, r.value.data) for r in rows if isinstance(r.value, Table))
    assert tables == [(s, f"geometry/ph/{layer}/diagram", [[d, b, x + s] for d, b, x in data])
                      for s in (3, 7) for layer in ways]
    assert [(r.step, r.value) for r in rows if r.key == "geometry/ph/fc1/h1_n_bars"] == [(3, 1.0), (7, 1.0)]
