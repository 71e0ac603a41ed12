"""Smoke test of recipes/quickstart.py: a few steps, CSV and W&B offline, figure written."""
from __future__ import annotations

import importlib.util
import os

import pytest



def _load():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "quickstart.py")
    spec = importlib.util.spec_from_file_location("recipe_quickstart", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("logger", ["wandb"])
def test_quickstart_runs_and_draws_the_figure(tmp_path, wandb_dir, logger):
    out = tmp_path / "quickstart.png"
    res = _load().main(["--max-steps", "20", "--max-epochs", "2", "--logger", logger,
                        "--save-dir", str(tmp_path), "--out", str(out),
                        "--report", str(tmp_path / "quickstart.html")])
    assert out.stat().st_size > 10_000
    assert [s for s, _ in res["series"]["geometry/sharpness"]] == [10, 20]
    assert [s for s, _ in res["series"]["geometry/id/fc2"]] == [20]
    assert res["errors"] == {}
    page = open(res["report"]).read()
    assert res["report"] == str(tmp_path / "quickstart.html")
    for title in ("Loss and sharpness", "Intrinsic dimension", "Neural persistence"):
        assert f"<h2>{title}</h2>" in page, title
    if logger == "wandb":
        assert "wandb sync" in res["message"]
    else:
        assert "CSVLogger output in" in res["message"]
