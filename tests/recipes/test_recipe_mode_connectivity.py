"""Smoke test of recipes/mode_connectivity.py: tiny MLPs, one epoch, the table, the figure,
and the barriers' ordering where it is already visible."""
from __future__ import annotations

import importlib.util
import os

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "mode_connectivity.py")


def _load():
    spec = importlib.util.spec_from_file_location("recipe_mode_connectivity", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recipe_smoke(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "lmc.png"
    try:
        res = _load().main(["--hidden", "16", "--epochs", "2", "--n-alpha", "5", "--every", "10",
                            "--instability-at", "10", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    b = res["barriers"]
    assert set(b) == {"same init (A, A')", "different init, naive", "after weight matching"}
    assert all(len(r.losses) == 5 and r.barrier >= 0 for r in b.values())
    assert b["different init, naive"].barrier > b["after weight matching"].barrier
    keys = {k for _, m in res["logged"] for k in m}
    assert {"geometry/connectivity/barrier", "geometry/connectivity/instability_barrier"} <= keys
    text = capsys.readouterr().out
    assert "| path | loss barrier | error barrier | reference figure |" in text
    assert os.path.getsize(out) > 1000
