"""Smoke test of recipes/np_early_stopping.py: two short runs, table, figure, W&B offline runs."""
from __future__ import annotations

import glob
import importlib.util
import os


import wandb_offline

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "np_early_stopping.py")


def _load():
    spec = importlib.util.spec_from_file_location("np_early_stopping_recipe", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recipe_smoke(tmp_path, wandb_dir, capsys):
    rows = _load().main(["--seeds", "1", "--max-epochs", "2", "--out", str(tmp_path)])
    assert [r["method"] for r in rows] == ["neural persistence", "validation loss"]
    for r in rows:
        assert 1 <= r["epochs"] <= 2 and r["saved"] == 2 - r["epochs"]
        assert 0.3 < r["test_acc"] <= 1.0  # well above chance (0.1) after two Adam epochs on digits
    out = capsys.readouterr().out
    assert "| seed | method | epochs trained (of 2) | epochs saved | test accuracy |" in out
    assert os.path.getsize(tmp_path / "np_early_stopping.png") > 1000
    runs = [f for f in glob.glob(str(tmp_path / "**" / "run-*.wandb"), recursive=True) if "latest-run" not in f]
    assert len(runs) == 2
    np_rows = [h for f in runs for h in wandb_offline.history(f) if "geometry/neural_persistence/mean" in h]
    assert np_rows and all(0.0 <= h["geometry/neural_persistence/mean"] <= 1.0 for h in np_rows)


def _brute_stop(values, patience, sign):
    """Epochs trained under 'no improvement for `patience` values' on sign * values (max)."""
    best, wait = -float("inf"), 0
    for e, v in enumerate(values):
        if sign * v > best:
            best, wait = sign * v, 0
        else:
            wait += 1
            if wait >= patience:
                return e + 1
    return len(values)


def test_sweep_smoke_and_stop_epochs(tmp_path, capsys):
    mod = _load()
    assert mod.main(["--sweep", "--seeds", "1", "--max-epochs", "3", "--patience", "1", "2",
                     "--out", str(tmp_path)]) == []
    out = capsys.readouterr().out
    assert "| patience | NP: epochs trained (of 3) |" in out and "\n| 1 | " in out and "\n| 2 | " in out
    assert (tmp_path / "np_early_stopping_sweep.md").read_text().strip() == out.strip()
    run = mod.record(0, 3)
    assert all(len(v) == 3 for v in run.values()) and all(0 < v < 1 for v in run["np"])
    for values in ([0.1, 0.3, 0.2, 0.25, 0.4], [0.5, 0.4, 0.3], [1.0, 1.0, 2.0, 0.5, 0.5]):
        for pat in (1, 2, 3):
            assert mod.stop_epochs(values, pat, "max") == _brute_stop(values, pat, 1.0)
            assert mod.stop_epochs(values, pat, "min") == _brute_stop(values, pat, -1.0)
