"""recipes/id_profile.py: the summary on known profile shapes, and a two-epoch smoke run whose
logged intrinsic dimensions are checked for a fixed probe set and against scikit-dimension."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "id_profile.py")


def _load():
    spec = importlib.util.spec_from_file_location("recipe_id_profile", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _series(mod, profiles, acc):
    s = {f"geometry/id/{k}": [] for k in mod.LAYERS}
    for step, vals in profiles.items():
        for k, v in zip(mod.LAYERS, vals):
            s[f"geometry/id/{k}"].append((step, v))
    s["val/acc"] = list(zip(profiles, acc))
    return s


def test_summary_names_a_hunchback_and_its_peak():
    m = _load()
    hunch = {10: [12.0, 20.0, 25.0, 18.0, 9.0, 5.0], 20: [12.0, 22.0, 30.0, 16.0, 8.0, 4.0],
             30: [12.0, 22.0, 31.0, 15.0, 7.0, 3.0]}
    text = m.summarize(_series(m, hunch, [0.5, 0.7, 0.9]), [12.0] * 6, [12.0] * 6,
                       steps_per_epoch=10)
    assert "peaks at 'h2' (31.00)" in text and "rise-then-fall (hunchback)" in text
    # h4 falls 9 -> 8 -> 7 while accuracy rises: a perfect negative correlation
    assert "corr(ID of h4, val accuracy) = -1.00" in text


def test_summary_says_when_there_is_no_hunchback():
    m = _load()
    flat = {10: [30.0, 20.0, 15.0, 10.0, 6.0, 4.0], 20: [30.0, 19.0, 14.0, 9.0, 5.0, 3.0]}
    text = m.summarize(_series(m, flat, [0.5, 0.6]), [1.0] * 6, [1.0] * 6, steps_per_epoch=10)
    assert "peaks at 'inp'" in text and "no interior peak (no hunchback)" in text
    assert "corr(" not in text  # fewer than three epochs: no correlation claimed


def test_representations_follow_the_layers():
    m = _load()
    torch.manual_seed(0)
    model = m.DeepMLP()
    x = torch.rand(5, 64)
    reps = model.representations(x)
    assert list(reps) == m.LAYERS
    assert [r.shape[1] for r in reps.values()] == list(m.WIDTHS)
    assert torch.equal(reps["inp"], x) and all((reps[f"h{i}"] >= 0).all() for i in range(1, 5))
    torch.testing.assert_close(reps["out"], model(x))


def test_id_profile_smoke_csv(tmp_path):
    m = _load()
    out = tmp_path / "id_profile.png"
    res = m.main(["--max-epochs", "2", "--probe-size", "200", "--logger", "csv",
                  "--save-dir", str(tmp_path), "--out", str(out)])
    assert out.stat().st_size > 20_000
    assert res["errors"] == {}
    s = res["series"]
    steps_per_epoch = 23  # ceil(1437 / 64)
    for layer, width in zip(m.LAYERS, m.WIDTHS):
        vals = s[f"geometry/id/{layer}"]
        assert [st for st, _ in vals] == [steps_per_epoch, 2 * steps_per_epoch], layer
        assert all(np.isfinite(v) and 0.5 < v < width + 5 for _, v in vals), (layer, vals)
    # the probe set is fixed: the input's ID is the same number at every measurement
    inp = [v for _, v in s["geometry/id/inp"]]
    assert inp[0] == inp[1]
    # ... which is the recipe's probe (the initial profile's points), measured by skdim too
    import skdim

    assert res["probe"].shape == (200, 64)
    assert res["initial"][0] == pytest.approx(inp[0], rel=1e-6)
    assert inp[0] == pytest.approx(skdim.id.TwoNN(discard_fraction=0.1).fit(
        res["probe"].double().numpy()).dimension_, rel=1e-3)
    # the held-out profile's input ID against scikit-dimension's TwoNN on the same images
    from sklearn.datasets import load_digits

    X, _ = load_digits(return_X_y=True)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    held = np.unique(X[perm[int(0.8 * len(X)):].numpy()] / 16.0, axis=0)
    ref = skdim.id.TwoNN(discard_fraction=0.1).fit(held).dimension_
    assert res["held_out"][0] == pytest.approx(ref, rel=1e-3)  # same estimator as skdim
    assert "ID profile (TwoNN)" in res["summary"]
    # what reached the CSV logger's file
    assert "CSVLogger output in" in res["message"]
    import csv

    path = res["message"].split("CSVLogger output in ")[1].strip()
    with open(os.path.join(path, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    for layer in m.LAYERS:
        logged = [float(r[f"geometry/id/{layer}"]) for r in rows if r.get(f"geometry/id/{layer}")]
        assert logged == pytest.approx([v for _, v in s[f"geometry/id/{layer}"]]), layer


@pytest.mark.slow
def test_id_profile_default_run_compresses(tmp_path, wandb_dir):
    """The default recipe: after training, the last hidden layer's ID is well below the
    input's (Ansuini et al. 2019, Fig. 1) and below its own value at initialisation."""
    m = _load()
    res = m.main(["--save-dir", str(tmp_path), "--out", str(tmp_path / "p.png")])
    final = [res["series"][f"geometry/id/{k}"][-1][1] for k in m.LAYERS]
    assert final[4] < 0.8 * final[0]
    assert final[4] < res["initial"][4]
