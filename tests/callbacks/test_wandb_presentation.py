"""What a W&B user sees, read back from real offline run files: the exact set of geometry keys
of a Lightning fit with per-layer keys and past ``wandb_max_layers`` (statistics over layers,
checked against the per-layer values a CSVLogger of the same fit wrote), each persistence
diagram and the ID profile logged once as a chart whose table is ``<key>_table``, the ID
profile as one line-series chart of the steps measured so far, and every ``raise`` of the
layer budget.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger

import wandb_offline
from geomonitor.callbacks import GeometryMonitor
from geomonitor.callbacks.sinks import STEP_KEY, WandbSink
from geomonitor.callbacks.wandb_layers import LayerBudget

LAYERS = ("fc1", "fc2", "fc3")
PH = [f"h{d}_{s}" for d in (0, 1) for s in ("betti", "entropy", "l2_persistence", "max_persistence",
                                             "n_bars", "total_persistence")]


class _MLP(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, wandb_dir, wandb_max_layers):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    torch.manual_seed(0)  # the test's own model init
    wb = WandbLogger(project="presentation", save_dir=str(wandb_dir), offline=True)
    mon = GeometryMonitor(layers=list(LAYERS), probe_size=32, id_every_n_steps=2,
                          sharpness_every_n_steps=4, sharpness_max_hvp=5, topology_every_n_steps=4,
                          topology_landmarks=None, np_every_n_steps=4, symmetry_every_n_steps=None,
                          max_overhead=None, strict=True, wandb_max_layers=wandb_max_layers)
    trainer = pl.Trainer(max_steps=4, logger=[wb, CSVLogger(str(tmp_path), name="csv")],
                         callbacks=[mon], accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.fit(_MLP(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16))
    wb.experiment.finish()
    return wandb_offline.find_run_file(str(wandb_dir))


def _keys(rows) -> set[str]:
    """The geometry keys of the history rows, a table's fields (``<key>_table/nrows``...) as its key."""
    out = set()
    for row in rows:
        for k in row:
            if k.startswith("geometry/"):
                out.add(k.split("_table/")[0] + "_table" if "_table/" in k else k)
    return out


def _charts(run_file) -> dict[str, dict]:
    """``_wandb.visualize`` config entries: chart key -> panel config."""
    out = {}
    for rec in wandb_offline.read_records(run_file):
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                keys = list(item.nested_key) or [item.key]
                if keys[:2] == ["_wandb", "visualize"]:
                    out[keys[2]] = json.loads(item.value_json)["panel_config"]
    return out


def _table(run_file, path) -> dict:
    with open(os.path.join(os.path.dirname(run_file), "files", path)) as f:
        return json.load(f)


def _csv(tmp_path) -> dict[int, dict[str, float]]:
    (path,) = glob.glob(os.path.join(str(tmp_path), "csv", "*", "metrics.csv"))
    out: dict[int, dict[str, float]] = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            out.setdefault(int(r["step"]), {}).update({k: float(v) for k, v in r.items()
                                                       if k.startswith("geometry/") and v})
    return out


SCALARS = {"geometry/sharpness", "geometry/eos_ratio", "geometry/n_hvp",
           "geometry/neural_persistence/mean"}


def test_per_layer_keys_and_one_chart_per_diagram_and_profile(tmp_path, wandb_dir):
    run_file = _fit(tmp_path, wandb_dir, wandb_max_layers=64)
    rows = wandb_offline.history(run_file)
    expected = SCALARS | {"geometry/id_profile_table"}
    expected |= {f"geometry/id/{layer}" for layer in LAYERS}
    expected |= {f"geometry/neural_persistence/{layer}" for layer in LAYERS}
    expected |= {f"geometry/ph/{layer}/{s}" for layer in LAYERS for s in PH}
    expected |= {f"geometry/ph/{layer}/diagram_table" for layer in LAYERS}
    assert _keys(rows) == expected

    charts = _charts(run_file)
    assert set(charts) == {"geometry/id_profile"} | {f"geometry/ph/{layer}/diagram" for layer in LAYERS}
    for layer in LAYERS:
        chart = charts[f"geometry/ph/{layer}/diagram"]
        assert chart["panelDefId"] == "wandb/scatter/v0"
        assert chart["fieldSettings"] == {"x": "birth", "y": "death"}
    profile = charts["geometry/id_profile"]
    assert profile["panelDefId"] == "wandb/lineseries/v0"
    assert profile["fieldSettings"] == {"step": "depth", "lineKey": "series", "lineVal": "value"}
    assert profile["stringSettings"]["xname"] == "depth"

    # the profile chart's table: one line per step measured so far, the CSV logger's values
    per_step = _csv(tmp_path)
    (last,) = [r for r in rows if r.get(STEP_KEY) == 4 and "geometry/id_profile_table/path" in r]
    table = _table(run_file, last["geometry/id_profile_table/path"])
    assert table["columns"] == ["depth", "layer", "step", "series", "value"]
    want = [[d, layer, s, f"step {s}", pytest.approx(per_step[s][f"geometry/id/{layer}"], rel=1e-12)]
            for s in (2, 4) for d, layer in enumerate(LAYERS)]
    assert table["data"] == want


def test_past_wandb_max_layers_statistics_over_layers_replace_per_layer_keys(tmp_path, wandb_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_file = _fit(tmp_path, wandb_dir, wandb_max_layers=2)
    budget_warnings = [w for w in caught if "past max_layers=2" in str(w.message)]
    assert len(budget_warnings) == 1
    assert "3 or more measured layers" in str(budget_warnings[0].message)

    rows = wandb_offline.history(run_file)
    expected = SCALARS | {"geometry/id_profile_table"}
    for stat in ("mean", "min", "max"):
        expected |= {f"geometry/id/{stat}_over_layers", f"geometry/neural_persistence/{stat}_over_layers"}
        expected |= {f"geometry/ph/{stat}_over_layers/{s}" for s in PH}
    # the id values came first and passed the limit: no per-layer key, no diagram
    assert _keys(rows) == expected
    assert set(_charts(run_file)) == {"geometry/id_profile"}

    # the statistics against the per-layer values the CSV logger of the same fit got
    per_step = _csv(tmp_path)
    checked = 0
    for row in rows:
        if STEP_KEY not in row:
            continue
        step = int(row[STEP_KEY])
        for key in [k for k in row if "_over_layers" in k]:
            family, stat_part, *summary = key.split("/")[1:]
            layer_keys = [f"geometry/{family}/{layer}" + "".join(f"/{s}" for s in summary)
                          for layer in LAYERS]
            values = np.array([per_step[step][k] for k in layer_keys], dtype=np.float64)
            ref = {"mean_over_layers": values.mean(), "min_over_layers": values.min(),
                   "max_over_layers": values.max()}[stat_part]
            assert row[key] == pytest.approx(ref, rel=1e-12, abs=1e-300), (key, step)
            checked += 1
    assert checked == 3 * (2 + 1 + len(PH))  # id at 2 and 4, neural persistence and ph at 4
    # the other logger kept every layer
    assert {f"geometry/id/{layer}" for layer in LAYERS} <= set(per_step[4])


# -- the sink on its own, in a plain loop ----------------------------------------------------------
def test_profile_chart_shows_at_most_eight_steps_spread_over_the_run(wandb_dir):
    import wandb

    run = wandb.init(project="profiles", dir=str(wandb_dir), mode="offline")
    sink = WandbSink(run, commit=True)
    for step in range(1, 11):
        sink.log_profile("geometry/id_profile", ["a", "b"], [float(step), 10.0 + step], step)
    run.finish()
    run_file = wandb_offline.find_run_file(str(wandb_dir))
    rows = [r for r in wandb_offline.history(run_file) if "geometry/id_profile_table/path" in r]
    assert [r["geometry/id_profile_table/nrows"] for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16, 16, 16]
    table = _table(run_file, rows[-1]["geometry/id_profile_table/path"])
    shown = [1, 2, 4, 5, 6, 7, 9, 10]  # 8 of 10: round(i * 9 / 7) for i = 0..7, first and last kept
    assert table["data"] == [[d, name, s, f"step {s}", v] for s in shown
                             for d, (name, v) in enumerate(zip("ab", (float(s), 10.0 + s)))]


def test_wandb_sink_budget_keeps_the_diagrams_of_counted_layers(wandb_dir):
    import wandb

    run = wandb.init(project="budget", dir=str(wandb_dir), mode="offline")
    sink = WandbSink(run, commit=True, max_layers=2)
    dgm = [np.array([[0.0, 1.0], [0.0, np.inf]]), np.array([[0.5, 0.75]])]
    with pytest.warns(RuntimeWarning, match=r"3 or more measured layers, past max_layers=2: .*"
                      r"persistence diagrams of the first 2 layers only"):
        for layer in ("a", "b", "c"):
            sink.log_diagram(f"geometry/ph/{layer}/diagram", dgm, 1)
    sink.log_metrics({"geometry/ph/a/h0_entropy": 1.0, "geometry/ph/b/h0_entropy": 3.0,
                      "geometry/ph/c/h0_entropy": float("nan"), "geometry/errors": 0.0}, 1)
    sink.log_diagram("geometry/ph/a/diagram", dgm, 2)  # a counted layer: still logged
    sink.log_diagram("geometry/ph/c/diagram", dgm, 2)  # past the limit: left out
    run.finish()
    run_file = wandb_offline.find_run_file(str(wandb_dir))
    rows = wandb_offline.history(run_file)
    assert _keys(rows) == {"geometry/step", "geometry/ph/a/diagram_table", "geometry/ph/b/diagram_table",
                           "geometry/errors", "geometry/ph/mean_over_layers/h0_entropy",
                           "geometry/ph/min_over_layers/h0_entropy",
                           "geometry/ph/max_over_layers/h0_entropy"}
    (stats,) = [r for r in rows if "geometry/ph/mean_over_layers/h0_entropy" in r]
    # the NaN of layer c is left out of the statistics
    assert (stats["geometry/ph/mean_over_layers/h0_entropy"], stats["geometry/ph/min_over_layers/h0_entropy"],
            stats["geometry/ph/max_over_layers/h0_entropy"]) == (2.0, 1.0, 3.0)
    assert [r["geometry/step"] for r in rows if "geometry/ph/a/diagram_table/nrows" in r] == [1, 2]
    assert [r["geometry/ph/a/diagram_table/nrows"] for r in rows
            if "geometry/ph/a/diagram_table/nrows" in r] == [2, 2]  # the infinite bar left out


def test_layer_budget_without_limit_and_on_other_keys():
    budget = LayerBudget(None)
    many = {f"geometry/id/l{i}": float(i) for i in range(500)}
    assert budget.metrics(many) == many and not budget.aggregated
    budget = LayerBudget(1)
    other = {"geometry/equivariance/rot90/output": 1.0, "geometry/skipped/topology": 2.0,
             "geometry/id_profile": 3.0, "loss": 4.0}
    assert budget.metrics(other) == other and budget.layers == {}
    with pytest.warns(RuntimeWarning, match="no persistence diagram"):
        out = budget.metrics({"geometry/id/x": float("nan"), "geometry/id/y": float("inf")})
    assert out == {}  # no finite value: no statistic written, never a NaN


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "8"])
def test_max_layers_must_be_none_or_a_positive_int(value):
    with pytest.raises(ValueError, match=rf"max_layers must be None or an int >= 1, got {value!r}"):
        LayerBudget(value)
    with pytest.raises(ValueError, match=rf"max_layers must be None or an int >= 1, got {value!r}"):
        WandbSink(max_layers=value)
    with pytest.raises(ValueError, match=rf"wandb_max_layers must be None or an int >= 1, got {value!r}"):
        GeometryMonitor(wandb_max_layers=value)


def test_the_monitors_max_layers_wins_over_a_sink_made_first(tmp_path):
    from geomonitor.callbacks.sinks import trainer_sink

    trainer = pl.Trainer(max_steps=1, logger=False, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    first = trainer_sink(trainer)  # e.g. an alerts callback, before the monitor
    assert first.budget.max_layers == 64
    assert trainer_sink(trainer, 3) is first and first.budget.max_layers == 3
    first.budget.metrics({"geometry/id/a": 1.0})
    assert trainer_sink(trainer, None).budget.max_layers == 3  # counted already: kept
