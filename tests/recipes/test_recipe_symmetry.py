"""Smoke test of recipes/symmetry.py: two weight decays, a few steps, the figure written, and the
logged imbalance checked against the per-unit norms of the trained weights."""
from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "symmetry.py")


def _load():
    spec = importlib.util.spec_from_file_location("recipe_symmetry", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_symmetry_recipe_smoke(tmp_path):
    m = _load()
    out = tmp_path / "symmetry.png"
    res = m.main(["--steps", "40", "--every", "20", "--weight-decays", "0", "0.5",
                  "--out", str(out)])
    assert out.stat().st_size > 20_000
    runs = res["runs"]
    assert [r["wd"] for r in runs] == [0.0, 0.5]
    for r in runs:
        assert sorted(r["history"]) == [0, 20, 40]
        first = r["history"][0]
        assert all(math.isfinite(v) for v in first.values())
        assert first["geometry/neural_collapse/fc3/nc1"] > 0
        assert 0.0 <= first["geometry/symmetry/fc1/dead_fraction"] <= 1.0
    # the same seed gives the same initialisation: step 0 is identical across weight decays
    assert runs[0]["history"][0] == runs[1]["history"][0]
    # with weight decay 0.5 and lr 0.05 the imbalance shrinks by about (1 - 0.025)^2 per step
    key = "geometry/symmetry/fc1/imbalance"
    ratio = runs[1]["history"][40][key] / runs[1]["history"][0][key]
    assert ratio == pytest.approx(0.975 ** 80, rel=0.5)
    assert "weight decay" in res["summary"] and len(res["summary"].splitlines()) == 3


def test_initial_imbalance_matches_the_weights():
    m = _load()
    torch.manual_seed(0)
    model = m.MLP()
    w1, b1, w2 = (model.fc1.weight.detach().double().numpy(), model.fc1.bias.detach().double().numpy(),
                  model.fc2.weight.detach().double().numpy())
    d = (w1 ** 2).sum(1) + b1 ** 2 - (w2 ** 2).sum(0)
    data = m.digits(0)
    run = m.train_one(0.0, data, steps=1, every=1, lr=0.05, seed=0, probe_size=64)
    assert run["history"][0]["geometry/symmetry/fc1/imbalance"] == pytest.approx(np.linalg.norm(d), rel=1e-6)
