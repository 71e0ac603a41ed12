"""The unified ``lightning`` package (``import lightning as L``) next to ``pytorch_lightning``.

One public class serves both packages: ``L.Trainer`` with ``lightning.pytorch``'s
``WandbLogger`` gets the W&B extras (``define_metric``, persistence diagrams, ID profile; read
back from the offline run on disk and checked against giotto-ph, a scipy minimum spanning
tree and scikit-dimension), ``NeuralPersistenceEarlyStopping`` is both packages'
``EarlyStopping`` and stops an ``L.Trainer`` at the epoch Rieck et al.'s Algorithm 2 gives on
an independently computed neural-persistence history, and ``lightning.pytorch.cli.LightningCLI``
builds ``GeometryMonitor`` from the README's YAML and describes every schedule argument in
``--help``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

L = pytest.importorskip("lightning")
pl = pytest.importorskip("pytorch_lightning")

import wandb_offline  # noqa: E402

from geomonitor.callbacks import GeometryMonitor, NeuralPersistenceEarlyStopping  # noqa: E402
from geomonitor.callbacks.early_stopping import NP_KEY  # noqa: E402
from geomonitor.callbacks.sinks import STEP_KEY, TrainerSink  # noqa: E402

PACKAGES = ["pytorch_lightning", "lightning.pytorch"]
_FAST = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
             enable_checkpointing=False)


@functools.lru_cache(maxsize=1)
def _digits(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


def _loader(batch_size: int = 64) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_digits()),
                                       batch_size=batch_size)


class _DigitsMLP:
    """64 -> 32 -> 16 -> 10 ReLU MLP on sklearn's digits (mixed into either LightningModule)."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lr = lr
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
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return _loader()


class LDigits(_DigitsMLP, L.LightningModule):
    pass


class PLDigits(_DigitsMLP, pl.LightningModule):
    pass


MODELS = {"lightning.pytorch": LDigits, "pytorch_lightning": PLDigits}


def _pkg(name: str):
    return importlib.import_module(name)


# -- independent references ------------------------------------------------------------------
def _np_reference(model: torch.nn.Module) -> float:
    """Mean normalised neural persistence (Rieck et al. 2019, Definitions 2-4, Algorithm 1) of
    the Linear layers, from scipy's minimum spanning tree: weights |w| / max|w| over the whole
    network; the 0-dim diagram of the descending filtration has one point (1, w'_e) per edge of a
    maximum spanning tree of the complete bipartite graph; NP = ||1 - w'_e||_2 / sqrt(|V| - 1)."""
    mats = [m.weight.detach().double().abs().numpy() for m in model.modules()
            if isinstance(m, torch.nn.Linear)]
    w_max = max(a.max() for a in mats)
    values = []
    for a in mats:
        out, inp = a.shape
        n = out + inp
        graph = np.zeros((n, n))
        graph[:out, out:] = 2.0 - a / w_max  # > 0, so no edge is read as missing
        tree = minimum_spanning_tree(graph).toarray()
        kept = tree[tree > 0] - 1.0  # = 1 - w'_e on the maximum spanning tree
        assert kept.size == n - 1
        values.append(np.sqrt((kept ** 2).sum()) / np.sqrt(n - 1))
    return float(np.mean(values))


def _algorithm2(values: list[float], g: int, delta_min: float) -> int | None:
    """Rieck et al. 2019, Algorithm 2 (P <- 0, G <- 0): the 0-based epoch training stops at."""
    best, count = 0.0, 0
    for epoch, p in enumerate(values):
        if p > best + delta_min:
            best, count = p, 0
        else:
            count += 1
        if count >= g:
            return epoch
    return None


def _recorder(pkg: str):
    """A callback of ``pkg`` that records the reference neural persistence at each epoch end."""

    class Record(_pkg(pkg).Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.values.append(_np_reference(pl_module))

    return Record()


# -- one class, both packages ----------------------------------------------------------------
def test_the_callbacks_are_callbacks_of_both_packages():
    import lightning.pytorch.callbacks as lcb
    import pytorch_lightning.callbacks as pcb

    for cb in (GeometryMonitor(), NeuralPersistenceEarlyStopping()):
        assert isinstance(cb, lcb.Callback) and isinstance(cb, pcb.Callback)
    es = NeuralPersistenceEarlyStopping(patience=2)
    assert isinstance(es, lcb.EarlyStopping) and isinstance(es, pcb.EarlyStopping)
    # the state is the first base's, set once: both packages read the same attributes
    assert (es.monitor, es.mode, es.patience) == (NP_KEY, "max", 2)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_np_early_stopping_stops_a_fit_at_algorithm_2s_epoch(pkg):
    lp = _pkg(pkg)
    g, delta, epochs = 2, 0.02, 6  # at lr 0.05 NP gains < 0.02 per epoch: it must stop early
    es = NeuralPersistenceEarlyStopping(patience=g, min_delta=delta)
    rec = _recorder(pkg)
    trainer = lp.Trainer(**_FAST, max_epochs=epochs, logger=False, callbacks=[rec, es])
    assert trainer.early_stopping_callback is es
    trainer.fit(MODELS[pkg](lr=0.05), _loader())

    expected = _algorithm2(rec.values, g, delta)
    assert expected is not None and expected < epochs - 1, rec.values  # stopped early
    # the first value clears Algorithm 2's P = 0 + delta, so Lightning's best = -inf start agrees
    assert rec.values[0] > delta
    assert es.history == pytest.approx(rec.values, rel=1e-9)
    assert es.stopped_epoch == expected
    assert trainer.current_epoch == expected + 1 and trainer.should_stop
    assert float(trainer.callback_metrics[NP_KEY]) == pytest.approx(rec.values[-1], rel=1e-9)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_np_early_stopping_stopping_threshold_stops_the_fit(pkg):
    lp = _pkg(pkg)
    first = _np_reference(MODELS[pkg]())  # NP of the initial weights: every epoch's NP exceeds 0
    es = NeuralPersistenceEarlyStopping(patience=50, stopping_threshold=0.5 * first)
    rec = _recorder(pkg)
    trainer = lp.Trainer(**_FAST, max_epochs=5, logger=False, callbacks=[rec, es])
    trainer.fit(MODELS[pkg](), _loader())
    # Lightning's rule: stop at the first epoch whose value exceeds the threshold
    expected = next(i for i, v in enumerate(rec.values) if v > 0.5 * first)
    assert es.stopped_epoch == expected == 0 and trainer.current_epoch == 1


# -- W&B extras with lightning.pytorch's WandbLogger -------------------------------------------
def _table(run_file: str, path: str) -> dict:
    """A ``wandb.Table`` as W&B wrote it next to the run file (``files/<path>``)."""
    with open(os.path.join(os.path.dirname(run_file), "files", path)) as f:
        return json.load(f)


def test_lightning_trainer_with_its_wandb_logger_gets_the_wandb_extras(tmp_path, wandb_dir):
    from lightning.pytorch.loggers import WandbLogger

    wb = WandbLogger(project="lightning-pkg", save_dir=str(wandb_dir), offline=True)
    mon = GeometryMonitor(layers=["fc1", "fc2"], max_overhead=None, probe_size=64,
                          id_every_n_steps=4, sharpness_every_n_steps=None,
                          topology_every_n_epochs=1, topology_landmarks=None,
                          np_every_n_epochs=1, strict=True)
    es = NeuralPersistenceEarlyStopping(patience=50)
    trainer = L.Trainer(**_FAST, max_epochs=2, logger=wb, callbacks=[mon, es],
                        default_root_dir=str(tmp_path), log_every_n_steps=1)
    assert trainer.early_stopping_callback is es
    model = LDigits()
    trainer.fit(model, _loader())  # 4 steps per epoch: measured at steps 4 and 8
    sink = TrainerSink(trainer)
    assert sink.wandb_run() is wb.experiment  # alerts reach lightning.pytorch's WandbLogger too
    sink.alert("probe alert", "sent through the trainer's sink", level="INFO", wait_duration=0)
    wb.experiment.finish()
    assert mon.errors == {}

    run_file = wandb_offline.find_run_file(str(wandb_dir))
    rows = wandb_offline.history(run_file)
    assert {"name": "", "glob_name": "geometry/*", "step_metric": STEP_KEY} in \
        wandb_offline.metric_definitions(run_file)
    assert [(a["title"], a["text"]) for a in wandb_offline.alerts(run_file)] == [
        ("probe alert", "sent through the trainer's sink")]

    # every geometry key, at its step
    keys = {"geometry/id/fc1", "geometry/id/fc2", "geometry/neural_persistence/mean",
            "geometry/neural_persistence/fc1", "geometry/neural_persistence/fc3",
            "geometry/ph/fc1/h1_n_bars", "geometry/ph/fc2/h0_total_persistence"}
    for key in keys:
        assert sorted({r[STEP_KEY] for r in rows if key in r}) == [4, 8], key
    assert "geometry/neural_persistence" not in {k for r in rows for k in r}  # no leaf-and-prefix

    # the ID profile: one row per layer, the values logged as geometry/id/<layer> at that step
    # (one line-series chart: each row re-logs the steps measured so far, one line per step)
    profiles = {r[STEP_KEY]: r for r in rows if "geometry/id_profile_table/path" in r}
    assert sorted(profiles) == [4, 8]
    for step, row in profiles.items():
        table = _table(run_file, row["geometry/id_profile_table/path"])
        assert table["columns"] == ["depth", "layer", "step", "series", "value"]
        expected = []
        for s in [t for t in (4, 8) if t <= step]:
            (ids,) = [r for r in rows if r.get(STEP_KEY) == s and "geometry/id/fc1" in r]
            expected += [[0, "fc1", s, f"step {s}", pytest.approx(ids["geometry/id/fc1"])],
                         [1, "fc2", s, f"step {s}", pytest.approx(ids["geometry/id/fc2"])]]
        assert table["data"] == expected

    # the last measurement against independent references on the final weights
    x = _digits()[0][mon.probe.indices]
    with torch.no_grad():
        acts = {"fc1": model.fc1(x), "fc2": model.fc2(torch.relu(model.fc1(x)))}
    import skdim
    from gph import ripser_parallel

    ref_id = skdim.id.TwoNN().fit(acts["fc1"].double().numpy()).dimension_
    assert float(trainer.callback_metrics["geometry/id/fc1"]) == pytest.approx(ref_id, rel=0.1)
    for layer, h in acts.items():
        (row,) = [r for r in rows if r.get(STEP_KEY) == 8 and f"geometry/ph/{layer}/diagram_table/path" in r]
        table = _table(run_file, row[f"geometry/ph/{layer}/diagram_table/path"])
        assert table["columns"] == ["dim", "birth", "death"]
        got = np.array(table["data"], dtype=float)
        pts = h.double().numpy()
        # H0 of a Rips filtration: births 0, deaths = the Euclidean minimum spanning tree's edges
        mst = minimum_spanning_tree(squareform(pdist(pts))).data
        h0 = got[got[:, 0] == 0]
        assert np.all(h0[:, 1] == 0)
        np.testing.assert_allclose(np.sort(h0[:, 2]), np.sort(mst), rtol=1e-4, atol=1e-5)
        ref_h1 = ripser_parallel(pts, maxdim=1)["dgms"][1]
        h1 = got[got[:, 0] == 1]
        assert len(h1) == len(ref_h1)
        np.testing.assert_allclose(np.sort(h1[:, 2] - h1[:, 1]), np.sort(ref_h1[:, 1] - ref_h1[:, 0]),
                                   rtol=1e-3, atol=1e-5)

    # neural persistence: both the monitor and the early stopping wrote the same definition
    nps = [r["geometry/neural_persistence/mean"] for r in rows if "geometry/neural_persistence/mean" in r]
    assert nps[-1] == pytest.approx(_np_reference(model), rel=1e-9)
    assert es.history[-1] == pytest.approx(_np_reference(model), rel=1e-9)


# -- LightningCLI --------------------------------------------------------------------------------
README_YAML = """\
trainer:
  callbacks:
    - class_path: geomonitor.callbacks.GeometryMonitor
      init_args: {layers: [fc1, fc2], sharpness_every_n_steps: 25, prog_bar: [eos_ratio]}
"""


def test_the_readme_yaml_is_the_one_tested():
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    with open(readme) as f:
        text = f.read()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert README_YAML in blocks


@pytest.mark.parametrize("pkg", PACKAGES)
def test_lightning_cli_builds_the_monitor_from_the_readme_yaml_and_fits(pkg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI's default logger writes below the working directory
    cli_mod = _pkg(f"{pkg}.cli")
    config = tmp_path / "config.yaml"
    config.write_text(README_YAML)
    cli = cli_mod.LightningCLI(MODELS[pkg], run=False, save_config_callback=None,
                               seed_everything_default=False,
                               args=["--config", str(config), "--trainer.max_epochs=3", "--trainer.max_steps=10",
                                     "--trainer.enable_progress_bar=false",
                                     "--trainer.enable_model_summary=false",
                                     "--trainer.accelerator=cpu"])
    assert isinstance(cli.trainer, _pkg(pkg).Trainer)
    (mon,) = [c for c in cli.trainer.callbacks if isinstance(c, GeometryMonitor)]
    assert mon.prog_bar == ["eos_ratio"]
    (sharp,) = [f for f in mon.families if f.name == "sharpness"]
    assert sharp.schedule.due_step(25) and not sharp.schedule.due_step(26)
    cli.trainer.fit(cli.model)  # 10 steps: every default family measured at step 10, the last
    assert list(mon.monitor.modules) == ["fc1", "fc2"]
    metrics = cli.trainer.callback_metrics
    assert {"geometry/neural_persistence/mean", "geometry/ph/fc1/h1_n_bars",
            "geometry/ph/fc2/h0_n_bars"} <= set(metrics)
    assert float(metrics["geometry/neural_persistence/mean"]) == pytest.approx(
        _np_reference(cli.model), rel=1e-9)


def _cli_help(pkg: str, target: str) -> str:
    cli_mod = _pkg(f"{pkg}.cli")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        cli_mod.LightningCLI(MODELS[pkg], run=False, save_config_callback=None,
                             seed_everything_default=False,
                             args=[f"--trainer.callbacks+={target}", "--trainer.callbacks.help", target])
    assert stop.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("pkg", PACKAGES)
def test_lightning_cli_help_describes_every_schedule_argument(pkg):
    text = _cli_help(pkg, "geomonitor.callbacks.GeometryMonitor")
    names = [n for n in inspect.signature(GeometryMonitor).parameters
             if re.fullmatch(r"\w+_every_n_(steps|epochs)", n)]
    from geomonitor.monitor.families import DEFAULTS

    assert set(names) <= set(DEFAULTS)  # schedules the engine's defaults declare
    assert len(names) == 16  # id, sharpness, topology, np, symmetry, connectivity, spectrum, attention
    for name in names:
        # "  --trainer.callbacks.<name> <METAVAR>\n    <description> (type: ..., default: ...)"
        m = re.search(rf"^\s+--trainer\.callbacks\.{name} \S+\n(.*?)\(type:", text, flags=re.S | re.M)
        assert m is not None, f"{name} missing from --help"
        description = " ".join(m.group(1).split())
        assert description, f"{name} has no description in --help"
        assert "every n" in description and "(None: off)" in description, (name, description)
