"""Smoke test of recipes/equivariance.py: one short epoch per run, the per-layer series, the
table and the figure; the circular convolutions are equivariant at float precision."""
from __future__ import annotations

import importlib.util
import os

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "equivariance.py")


def _load():
    spec = importlib.util.spec_from_file_location("recipe_equivariance", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recipe_smoke(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "eq.png"
    try:
        runs = _load().main(["--epochs", "1", "--width", "4", "--every", "10", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert set(runs) == {"no augmentation", "shift augmentation"}
    for r in runs.values():
        s = r["series"]
        assert {f"geometry/equivariance/shift1/{k}" for k in ("act1", "pool1", "act2", "output")} <= set(s)
        assert all(v < 1e-5 for _, v in s["geometry/equivariance/shift1/act1"])
        assert all(v > 1e-3 for _, v in s["geometry/equivariance/shift1/pool1"])  # stride 2 aliasing
        assert len(s["geometry/equivariance/subpixel/lie_derivative"]) == 2  # steps 10, 20 of 23
    assert "| run | act1 | pool1 | act2 | output |" in capsys.readouterr().out
    assert os.path.getsize(out) > 1000
