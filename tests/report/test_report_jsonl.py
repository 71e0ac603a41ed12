"""JsonlSink and read_run on a real plain training loop, the report made from it, and that
report rendered by a real headless Chromium (skipped where there is none)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from report_fits import FAMILY_OPTIONS, digits, mlp  # noqa: E402

from geomonitor import read_run  # noqa: E402
from geomonitor.monitor import Monitor  # noqa: E402
from geomonitor.report import render_report, write_report  # noqa: E402
from geomonitor.runs import Row, Table, run_kind  # noqa: E402
from geomonitor.sinks import JsonlSink  # noqa: E402


class _Recorder:
    """What the monitor handed its sinks, as it handed it."""

    def __init__(self) -> None:
        self.metrics: dict[tuple[int, str], float] = {}
        self.diagrams: dict[tuple[int, str], list] = {}
        self.profiles: dict[tuple[int, str], tuple] = {}

    def log_metrics(self, metrics, step):
        self.metrics.update({(step, k): v for k, v in metrics.items()})

    def log_diagram(self, key, diagrams, step):
        self.diagrams[(step, key)] = [np.array(d, dtype=float) for d in diagrams]

    def log_profile(self, key, names, values, step):
        self.profiles[(step, key)] = (list(names), list(values))


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    path = root / "run.jsonl"
    X, y = digits()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink, rec = JsonlSink(path), _Recorder()
    monitor = Monitor(model, probe=(X[:64], y[:64]), sink=[sink, rec], layers=["0", "2"],
                      loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                      verbose=False, **FAMILY_OPTIONS)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 17):
        idx = torch.randint(0, len(X), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sink.log_metrics({"train/loss": loss.item()}, step)
        rec.log_metrics({"train/loss": loss.item()}, step)
        monitor.step(step, optimizer=opt)
    monitor.close()
    sink.close()
    return path, rec


def test_jsonl_sink_writes_a_step_together_and_late_values_with_their_step(tmp_path):
    path = tmp_path / "s.jsonl"
    sink = JsonlSink(path, mode="w")
    sink.log_metrics({"a": 1.0}, 1)
    sink.log_metrics({"b": 2.0}, 1)
    sink.log_metrics({"a": 3.0}, 3)
    sink.log_diagram("d", [np.array([[0.0, 1.0], [0.0, np.inf]]), np.array([[0.2, 0.5]])], 2)
    sink.log_metrics({"a": 4.0}, 4)
    sink.log_metrics({"late": 5.0}, 2)  # a background value after later steps were written
    sink.alert("t", "x")
    sink.close()
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert lines == [
        {"step": 1, "metrics": {"a": 1.0, "b": 2.0}},
        {"step": 2, "tables": {"d": {"columns": ["dim", "birth", "death"],
                                     "data": [[0, 0.0, 1.0], [1, 0.2, 0.5]]}}},
        {"step": 3, "metrics": {"a": 3.0}},
        {"step": 2, "metrics": {"late": 5.0}},
        {"step": 4, "metrics": {"a": 4.0}, "alerts": [{"title": "t", "text": "x", "level": "WARN"}]},
    ]
    rows = read_run(path)
    assert [(r.step, r.key) for r in rows] == [(1, "a"), (1, "b"), (2, "d"), (2, "late"),
                                               (3, "a"), (4, "a")]


def test_jsonl_sink_and_reader_raise_on_bad_input(tmp_path):
    with pytest.raises(ValueError, match="path must be"):
        JsonlSink("")
    with pytest.raises(ValueError, match="mode must be"):
        JsonlSink(tmp_path / "x", mode="r")
    with pytest.raises(ValueError, match="step must be an int"):
        JsonlSink(tmp_path / "x").log_metrics({"a": 1.0}, 1.5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\n{"no_step": 2}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not a JsonlSink line"):
        read_run(bad)
    with pytest.raises(FileNotFoundError, match="no run at"):
        read_run(tmp_path / "absent")
    with pytest.raises(ValueError, match="is not a run geomonitor reads"):
        read_run(tmp_path)
    with pytest.raises(ValueError, match="kind must be one of"):
        read_run(bad, kind="parquet")


def test_read_run_gives_what_the_monitor_logged(loop_run):
    path, rec = loop_run
    assert run_kind(path) == ("jsonl", str(path))
    rows = read_run(path)
    scalars = {(r.step, r.key): r.value for r in rows if not isinstance(r.value, Table)}
    assert scalars == rec.metrics
    assert {k for _, k in rec.metrics} >= {"geometry/sharpness", "geometry/id/0",
                                           "geometry/ph/2/h1_entropy", "geometry/symmetry/0/imbalance",
                                           "geometry/neural_persistence/mean"}
    tables = {(r.step, r.key): r.value for r in rows if isinstance(r.value, Table)}
    assert set(tables) == set(rec.diagrams) | set(rec.profiles) and rec.diagrams
    for k, dgms in rec.diagrams.items():
        want = [[dim, b, d] for dim, a in enumerate(dgms) for b, d in a.reshape(-1, 2) if math.isfinite(d)]
        assert tables[k].data == want
    for k, (names, values) in rec.profiles.items():
        assert tables[k].data == [[i, n, v] for i, (n, v) in enumerate(zip(names, values))]


def test_read_run_is_a_data_frame_with_pandas(loop_run):
    pd = pytest.importorskip("pandas")
    path, rec = loop_run
    df = pd.DataFrame(read_run(path))
    assert list(df.columns) == ["step", "key", "value"]
    loss = df[df.key == "train/loss"]
    assert list(loss.step) == list(range(1, 17))
    assert list(loss.value) == [rec.metrics[(s, "train/loss")] for s in range(1, 17)]


def test_report_holds_the_panels_of_the_run(loop_run, tmp_path):
    path, _ = loop_run
    out = write_report(path, tmp_path / "r.html")
    page = open(out).read()
    for title in ("Loss and sharpness", "Intrinsic dimension", "Persistence diagrams",
                  "Persistence summaries over time", "Neural persistence", "Symmetry",
                  "Neural collapse"):
        assert f"<h2>{title}</h2>" in page, title
    assert "Mode connectivity" not in page and "panel failed" not in page
    assert page.count("data:image/png;base64,") == 7
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_report_panels_for_alerts_connectivity_equivariance_and_bookkeeping():
    rows = [Row(s, k, float(s)) for s in (1, 2, 3) for k in (
        "geometry/connectivity/barrier", "geometry/equivariance/rot90/output",
        "geometry/skipped/topology", "geometry/errors", "geometry/sharpness",
        "geometry/eos_ratio", "geometry/neural_collapse/fc2/nc1")] + [Row(2, "alerts/eos", 1.0)]
    page = render_report(rows)
    for title in ("Loss and sharpness", "Mode connectivity", "Equivariance", "Neural collapse",
                  "Skipped, dropped and errors"):
        assert f"<h2>{title}</h2>" in page, title
    assert "Red lines: alerts (eos)" in page
    assert "no values geomonitor plots" in render_report([])
    # a profile table of other columns (a line-series chart's) is left for the per-layer values
    other = [Row(s, f"geometry/id/{n}", float(s + i)) for s in (1, 2) for i, n in enumerate("ab")]
    other.append(Row(2, "geometry/id_profile", Table(["lineKey", "step", "lineVal"], [["a", 2, 3.0]])))
    page = render_report(other)
    assert "<h2>Intrinsic dimension</h2>" in page and "panel failed" not in page


def test_readme_jsonl_example_runs_as_written(tmp_path, monkeypatch):
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme.split("**Plain loops and Fabric: `JsonlSink`.**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    X, y = digits()
    model = mlp()
    monkeypatch.chdir(tmp_path)
    ns = {"model": model, "X_probe": X[:64], "y_probe": y[:64], "F": torch.nn.functional,
          "opt": torch.optim.SGD(model.parameters(), lr=0.1),
          "loader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y),
                                                batch_size=8)}  # 32 steps
    exec(code, ns)  # noqa: S102 - the README's example
    keys = {r.key for r in read_run(tmp_path / "runs" / "run.jsonl")}
    assert "train/loss" in keys and any(k.startswith("geometry/id/") for k in keys), keys


def test_command_line_report_and_help(loop_run, tmp_path):
    path, _ = loop_run
    out = tmp_path / "cli.html"
    done = subprocess.run([sys.executable, "-m", "geomonitor", "report", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"report: {out}" and out.read_text().startswith("<!DOCTYPE html>")
    helped = subprocess.run([sys.executable, "-m", "geomonitor", "report", "--help"],
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "JsonlSink file" in helped.stdout
    bad = subprocess.run([sys.executable, "-m", "geomonitor", "report", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no run at" in bad.stderr
    script = os.path.join(os.path.dirname(sys.executable), "geomonitor")
    if os.path.exists(script):  # the console script of an installed geomonitor
        installed = subprocess.run([script, "report", "--help"], capture_output=True, text=True,
                                   timeout=300)
        assert installed.returncode == 0 and "JsonlSink file" in installed.stdout
    import tomllib

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["geomonitor"] == "geomonitor.cli:main"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine")
def test_report_renders_in_headless_chromium(loop_run, tmp_path):
    from PIL import Image

    path, _ = loop_run
    page = write_report(path, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
           f"--screenshot={shot}", f"file://{os.path.abspath(page)}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2400, 1200)
    assert img.std() > 20  # not a blank page
    # the panels are laid out: white cards on the grey page, several of them tall enough
    # for a figure, and coloured pixels (only the figures' lines and points have colour) in
    # at least three of them
    gap = (np.abs(img - 247) <= 3).mean(axis=1) > 0.97
    cards, start = [], None
    for i, g in enumerate(np.append(gap, True)):
        if not g and start is None:
            start = i
        elif g and start is not None:
            cards.append((start, i))
            start = None
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    colour = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    drawn = [(a, b) for a, b in cards if b - a >= 150 and colour[a:b].mean() > 1e-3]
    assert len(drawn) >= 3, cards
    if os.environ.get("GEOMONITOR_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["GEOMONITOR_KEEP_SCREENSHOT"])
