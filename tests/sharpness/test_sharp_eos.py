"""Edge of stability (Cohen et al. 2021): under full-batch GD the sharpness settles at ~2/lr."""
from __future__ import annotations

import importlib.util
import os

import pytest

_path = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "edge_of_stability.py")
_spec = importlib.util.spec_from_file_location("edge_of_stability_recipe", _path)
eos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eos)


@pytest.mark.parametrize("lr,steps", [(0.3, 600), (0.5, 400)])
def test_sharpness_rises_then_hovers_at_two_over_lr(lr, steps):
    run = eos.run_gd(lr, steps, n=1000, width=64, measure_every=10)
    s = run["sharpness"]
    assert s[0] < 0.6 * (2 / lr)  # starts well below the edge: progressive sharpening
    late = eos.late_median(run, frac=0.4)
    assert abs(late * lr / 2 - 1) < 0.10
    late_ratios = run["eos_ratio"][int(len(s) * 0.6):]
    assert max(abs(r - 1) for r in late_ratios) < 0.25  # hovers, does not keep growing
    assert run["loss"][-1] < 0.5 * run["loss"][0]  # and the loss still goes down
