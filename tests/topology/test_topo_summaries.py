"""summarize against giotto-tda (PersistenceEntropy, Amplitude) and brute-force counts."""
import math

import numpy as np
import pytest
import torch

from geomonitor.topology import SUMMARY_NAMES, persistence_diagrams, summarize


def _diagrams(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(200, generator=g, dtype=torch.float64) * 2 * math.pi
    X = torch.stack([t.cos(), t.sin()], 1) + 0.1 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    return persistence_diagrams(X, maxdim=1)


def _gtda_triples(dgms):
    m = max(len(d) for d in dgms)
    out = np.zeros((1, m * len(dgms), 3))
    for k, d in enumerate(dgms):
        block = np.zeros((m, 3))
        block[:, 2] = k
        block[: len(d), :2] = d
        out[0, k * m : (k + 1) * m] = block
    return out


def test_keys_are_the_contract():
    s = summarize(_diagrams())
    assert set(s) == {f"h{k}_{n}" for k in (0, 1) for n in SUMMARY_NAMES}
    assert all(isinstance(v, float) for v in s.values())


def test_matches_giotto_tda():
    feats = pytest.importorskip("gtda.diagrams")
    dg = _diagrams(1)
    s = summarize(dg)
    X = _gtda_triples(dg.diagrams)
    ent = feats.PersistenceEntropy(normalize=False).fit_transform(X)[0]
    w1 = feats.Amplitude(metric="wasserstein", metric_params={"p": 1}).fit_transform(X)[0]
    w2 = feats.Amplitude(metric="wasserstein", metric_params={"p": 2}).fit_transform(X)[0]
    bn = feats.Amplitude(metric="bottleneck").fit_transform(X)[0]
    for k in (0, 1):
        assert s[f"h{k}_entropy"] == pytest.approx(ent[k], rel=1e-10)
        assert s[f"h{k}_total_persistence"] == pytest.approx(2 * w1[k], rel=1e-10)
        assert s[f"h{k}_l2_persistence"] == pytest.approx(2 * w2[k], rel=1e-10)
        assert s[f"h{k}_max_persistence"] == pytest.approx(2 * bn[k], rel=1e-10)


def test_counts_against_brute_force():
    dg = _diagrams(2)
    s = summarize(dg, noise=0.05, scale=0.3)
    for k in (0, 1):
        life = [d - b for b, d in dg[k]]
        assert s[f"h{k}_n_bars"] == sum(v > 0.05 for v in life)
        alive = sum(b <= 0.3 < d for b, d in dg[k])
        assert s[f"h{k}_betti"] == alive + (1 if k == 0 else 0)
    assert summarize(dg)["h1_n_bars"] == len(dg[1])  # default noise 0: every bar
    # default scale: connectivity scale of the cloud -> a single component
    assert summarize(dg)["h0_betti"] == 1.0


def test_raw_giotto_ph_diagram_with_infinite_bar():
    d0 = np.array([[0.0, 0.5], [0.0, 1.0], [0.0, np.inf]])
    s = summarize([d0], scale=0.7)
    assert s["h0_total_persistence"] == 1.5 and s["h0_max_persistence"] == 1.0
    assert s["h0_betti"] == 2.0  # [0,1) and [0,inf) alive at 0.7, essential not double counted
    assert s["h0_n_bars"] == 2.0


def test_empty_diagrams_give_zeros_not_nan():
    s = summarize([np.zeros((0, 2)), np.zeros((0, 2))])
    assert s == {**{f"h0_{n}": 0.0 for n in SUMMARY_NAMES}, "h0_betti": 1.0,
                 **{f"h1_{n}": 0.0 for n in SUMMARY_NAMES}}


def test_known_entropy():
    s = summarize([np.zeros((0, 2)), np.array([[0.0, 1.0], [1.0, 2.0], [0.0, 2.0]])])
    q = np.array([1, 1, 2]) / 4
    assert s["h1_entropy"] == pytest.approx(-(q * np.log2(q)).sum())


@pytest.mark.parametrize("kw,msg", [
    (dict(noise=-0.1), r"noise must be a finite number >= 0 or None, got -0.1"),
    (dict(noise=math.nan), r"noise must be a finite number >= 0 or None, got nan"),
    (dict(scale=math.inf), r"scale must be a finite number >= 0 or None, got inf"),
    (dict(scale="1"), r"scale must be a finite number >= 0 or None, got '1'"),
])
def test_bad_thresholds_raise(kw, msg):
    with pytest.raises(ValueError, match=msg):
        summarize([np.zeros((0, 2))], **kw)


def test_bad_diagrams_raise():
    with pytest.raises(ValueError, match=r"diagrams\[0\] must have shape \(n, 2\), got \(2, 3\)"):
        summarize([np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"diagrams\[1\] has NaN values or a death before its birth"):
        summarize([np.zeros((0, 2)), np.array([[1.0, 0.5]])])
