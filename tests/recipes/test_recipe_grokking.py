"""recipes/grokking.py: the data, the model against a plain transformer, the Fourier view on a
known circle, and a few-step smoke run whose logged geometry is checked against giotto-ph and
scikit-dimension on the final embedding matrix."""
from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

import wandb_offline

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "grokking.py")


def _load():
    spec = importlib.util.spec_from_file_location("recipe_grokking", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_modular_addition_split_covers_every_pair_once():
    g = _load()
    xtr, ytr, xte, yte = g.modular_addition(11, 0.3, seed=1)
    assert len(xtr) == round(0.3 * 121) and len(xtr) + len(xte) == 121
    pairs = {tuple(r[:2].tolist()) for r in torch.cat([xtr, xte])}
    assert pairs == {(a, b) for a in range(11) for b in range(11)}
    for x, y in ((xtr, ytr), (xte, yte)):
        assert all(int(r[2]) == 11 and int(t) == (int(r[0]) + int(r[1])) % 11 for r, t in zip(x, y))


@pytest.mark.parametrize("frac", [0.0, 1.0, 1.5])
def test_modular_addition_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match=r"train_frac must be in \(0, 1\), got"):
        _load().modular_addition(7, frac, seed=0)


def test_model_rejects_heads_not_dividing_width():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        _load().ModAddTransformer(7, d_model=30, n_heads=4)


def test_model_matches_a_plain_full_sequence_transformer():
    """The (token, position) table and last-query-only attention equal the textbook block
    computed on every position with the same weights, read out at '='."""
    g = _load()
    torch.manual_seed(0)
    m = g.ModAddTransformer(13, d_model=16, n_heads=4).double()
    x, _, _, _ = g.modular_addition(13, 0.5, seed=0)
    h = m.embed(x) + m.pos  # (B, 3, d)
    B, d, H = h.shape[0], 16, 4
    q, k, v = (t.reshape(B, 3, H, d // H).transpose(1, 2) for t in m.qkv(h).chunk(3, -1))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // H), -1) @ v  # all positions
    z = h + m.o(att.transpose(1, 2).reshape(B, 3, d))
    ref = m.unembed(z + m.mlp(z))[:, -1]
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_fourier_circle_finds_the_planted_frequency():
    """Rows on a circle at frequency k (rotated into 10 dims, plus small noise): the helper
    returns k, nearly all the energy, and a projection with (almost) constant radius."""
    g = _load()
    p, k = 31, 7
    a = torch.arange(p, dtype=torch.float64)
    base = torch.zeros(p, 10, dtype=torch.float64)
    base[:, 0], base[:, 1] = torch.cos(2 * math.pi * k * a / p), torch.sin(2 * math.pi * k * a / p)
    rot, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(0)))
    W = base @ rot + 1e-3 * torch.randn(p, 10, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(1))
    found, xy, share = g.fourier_circle(W)
    assert found == k and share > 0.99
    r = xy.double().norm(dim=1)
    assert float(r.std() / r.mean()) < 0.01


def test_first_step_threshold():
    g = _load()
    s = [(10, 0.2), (20, 0.96), (30, 0.5), (40, 0.99)]
    assert g.first_step(s, 0.95) == 20 and g.first_step(s, 0.995) is None


def test_grokking_smoke_wandb_offline(tmp_path, wandb_dir):
    g = _load()
    out = tmp_path / "grokking.png"
    res = g.main(["--p", "23", "--max-steps", "10", "--every", "5", "--sharpness-every", "10",
                  "--logger", "wandb", "--save-dir", str(tmp_path), "--out", str(out)])
    assert out.stat().st_size > 20_000
    assert res["errors"] == {}
    s = res["series"]
    assert [st for st, _ in s["geometry/id/embed"]] == [5, 10]
    assert [st for st, _ in s["geometry/eos_ratio"]] == [10]
    assert len(s["test/acc"]) == 2  # one test evaluation every 5 steps
    for key in ("geometry/id/embed", "geometry/ph/embed/h1_max_persistence",
                "geometry/ph/embed/h1_n_bars", "geometry/sharpness", "geometry/eos_ratio",
                "train/acc", "test/acc"):
        assert s[key] and all(np.isfinite(v) for _, v in s[key]), key
    assert all(v > 0 for _, v in s["geometry/eos_ratio"])

    # The step-10 measurement saw the final W_E (no step after it): check it independently.
    W = res["embedding"].double().numpy()
    assert W.shape == (23, 64)
    from gph import ripser_parallel

    h1 = ripser_parallel(W, maxdim=1)["dgms"][1]
    life = h1[:, 1] - h1[:, 0]
    assert s["geometry/ph/embed/h1_n_bars"][-1][1] == int((life > 0).sum())
    assert s["geometry/ph/embed/h1_max_persistence"][-1][1] == pytest.approx(
        float(life.max()) if life.size else 0.0, rel=1e-4, abs=1e-6)
    import skdim

    ref = skdim.id.TwoNN(discard_fraction=0.1).fit(W).dimension_
    assert s["geometry/id/embed"][-1][1] == pytest.approx(ref, rel=1e-3)  # same estimator

    # what reached the W&B offline run file
    assert "wandb sync" in res["message"]
    rows = wandb_offline.history(wandb_offline.find_run_file(str(tmp_path)))
    for key in ("geometry/eos_ratio", "geometry/id/embed", "geometry/ph/embed/h1_max_persistence"):
        logged = [r[key] for r in rows if key in r]
        assert logged == pytest.approx([v for _, v in s[key]]), key
    assert any("test/acc" in r and np.isfinite(r["test/acc"]) for r in rows)


@pytest.mark.slow
def test_grokking_default_run_groks(tmp_path, wandb_dir):
    """The default recipe (a few minutes): memorises first, generalises later (Power et al.
    2022), and ends with the tokens on a Fourier circle (Nanda et al. 2023)."""
    res = _load().main(["--save-dir", str(tmp_path), "--out", str(tmp_path / "g.png")])
    summary = res["summary"]
    assert summary["memorised"] is not None and summary["grokked"] is not None
    assert summary["grokked"] >= 2 * summary["memorised"]
    assert summary["frequency_share"] > 0.2  # uniform energy over 29 frequencies would be 1/29
