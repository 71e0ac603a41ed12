"""recipes/transformer.py: the data pipeline, the model's causality, and a few-step smoke run
whose selected layers are the blocks and the head and whose last ID profile is checked against
scikit-dimension on block outputs recomputed by hand."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

import wandb_offline

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "transformer.py")


def _load():
    spec = importlib.util.spec_from_file_location("recipe_transformer", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vocabulary_windows_and_probe():
    r = _load()
    text = r.corpus()
    assert "class ArgumentParser" in text and len(text) > 50_000
    vocab = r.Vocabulary(text)
    ids = vocab.encode(text[:500])
    assert vocab.decode(ids) == text[:500] and vocab.chars == sorted(set(text))
    ds = r.RandomWindows(ids, context=16, n=20, seed=0)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == y.shape == (16,) and torch.equal(x[1:], y[:-1])  # next characters
        s = int(ds.starts[i])
        assert vocab.decode(x) == text[s: s + 16]
    x, y = r.evenly_spaced_windows(ids, 16, 7)
    assert x.shape == y.shape == (7, 16) and vocab.decode(x[0]) == text[:16]
    assert vocab.decode(y[-1]) == text[500 - 16:500]


def test_bad_arguments_raise():
    r = _load()
    with pytest.raises(ValueError, match=r"text must be a non-empty string"):
        r.Vocabulary("")
    with pytest.raises(ValueError, match=r"text of 10 characters is too short for context 16"):
        r.RandomWindows(torch.zeros(10, dtype=torch.long), 16, 4, seed=0)
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        r.CharTransformer(10, d_model=30, n_heads=4)


def test_model_is_causal():
    """Changing the characters after position t leaves the logits up to t unchanged."""
    r = _load()
    torch.manual_seed(0)
    m = r.CharTransformer(12, d_model=16, n_layers=2, n_heads=2, context=10).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 12, (3, 10), generator=g)
    x2 = x.clone()
    x2[:, 6:] = torch.randint(0, 12, (3, 4), generator=g)
    with torch.no_grad():
        a, b = m(x), m(x2)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_transformer_smoke_wandb_offline(tmp_path, wandb_dir):
    r = _load()
    out = tmp_path / "transformer.png"
    res = r.main(["--max-steps", "10", "--every", "5", "--sharpness-every", "10",
                  "--epoch-steps", "5", "--layers", "2", "--d-model", "32", "--heads", "2",
                  "--context", "16", "--batch-size", "8", "--probe-size", "48",
                  "--logger", "wandb", "--save-dir", str(tmp_path), "--out", str(out)])
    assert out.stat().st_size > 20_000
    assert res["errors"] == {}
    assert res["layers"] == ["blocks.layers.0", "blocks.layers.1", "head"]  # layers="auto"
    s = res["series"]
    for layer in res["layers"]:
        assert [st for st, _ in s[f"geometry/id/{layer}"]] == [5, 10]
    assert [st for st, _ in s["geometry/eos_ratio"]] == [10]
    assert all(np.isfinite(v) and v > 0 for key in ("geometry/sharpness", "geometry/eos_ratio")
               for _, v in s[key])

    # The step-10 ID saw the final weights: block outputs on the probe, mean over tokens, by hand
    import skdim

    m, (x, _) = res["model"].eval(), res["probe"]
    with torch.no_grad():
        h = m.embed(x) + m.pos[: x.shape[1]]
        mask = m.causal[: x.shape[1], : x.shape[1]]
        reps = {}
        for i, block in enumerate(m.blocks.layers):
            h = block(h, src_mask=mask, is_causal=True)
            reps[f"blocks.layers.{i}"] = h.mean(1)
        reps["head"] = m.head(m.norm(h)).mean(1)
    for layer, rep in reps.items():
        ref = skdim.id.TwoNN(discard_fraction=0.1).fit(rep.double().numpy()).dimension_
        assert s[f"geometry/id/{layer}"][-1][1] == pytest.approx(ref, rel=1e-3), layer

    assert "wandb sync" in res["message"]
    rows = wandb_offline.history(wandb_offline.find_run_file(str(tmp_path)))
    for key in ("geometry/eos_ratio", "geometry/id/blocks.layers.1", "geometry/id/head"):
        assert [row[key] for row in rows if key in row] == pytest.approx([v for _, v in s[key]]), key
