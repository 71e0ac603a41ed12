"""Attention alert rules against brute-force readings of their definitions on random
sequences (with NaN, inf, several layers, cooldown), state round trips and every raise."""
from __future__ import annotations

import math
import random

import pytest
import torch

from geomonitor.monitor.attention_alerts import (AttentionEntropyCollapse, AttentionLogitGrowth,
                                                 OutputLogitDivergence)


def _cooldown(candidates, cooldown):
    """Alert steps from the steps where the condition holds, one alert per cooldown."""
    fired, last = [], None
    for s in candidates:
        if last is None or s - last >= cooldown:
            fired.append(s)
            last = s
    return fired


def _sequences(seed, n=60, layers=("a", "b")):
    rng = random.Random(seed)
    seq = []
    for _ in range(n):
        row = {}
        for ly in layers:
            u = rng.random()
            row[ly] = (math.nan if u < 0.05 else math.inf if u < 0.08
                       else rng.choice([0.5, 1.0, 3.0, 12.0, 40.0, 150.0]) * rng.uniform(0.5, 2))
        seq.append(row)
    return seq


def _growth_reference(seq, factor, lag, min_value, limit):
    """Reading i of layer l fires when v > limit, or v > min_value and v > factor * (the
    l-reading lag non-NaN readings before)."""
    steps = []
    for i, row in enumerate(seq):
        hit = False
        for ly, v in row.items():
            if math.isnan(v):
                continue
            past = [r[ly] for r in seq[:i] if not math.isnan(r[ly])]
            if limit is not None and v > limit:
                hit = True
            if len(past) >= lag and past[-lag] > 0 and v > min_value and v > factor * past[-lag]:
                hit = True
        if hit:
            steps.append(i)
    return steps


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kw", [dict(factor=10.0, lag=5, min_value=10.0, limit=None),
                                dict(factor=3.0, lag=2, min_value=0.0, limit=100.0),
                                dict(factor=20.0, lag=1, min_value=5.0, limit=1000.0)])
@pytest.mark.parametrize("cooldown", [0, 4])
def test_growth_matches_brute_force(seed, kw, cooldown):
    seq = _sequences(seed)
    rule = AttentionLogitGrowth(cooldown=cooldown, **kw)
    got = [i for i, row in enumerate(seq) if rule.update(i, row) is not None]
    assert got == _cooldown(_growth_reference(seq, **kw), cooldown)


def _early_reference(seq, ratio, bound, baseline, above):
    """Reading i of layer l fires when it is past ``bound``, or past ``ratio`` x the mean of
    the first ``baseline`` finite l-readings before i (when there are that many and the mean
    is > 0)."""
    steps = []
    for i, row in enumerate(seq):
        hit = False
        for ly, v in row.items():
            if math.isnan(v):
                continue
            early = [r[ly] for r in seq[:i] if math.isfinite(r[ly])][:baseline]
            limits = [] if bound is None else [bound]
            if len(early) == baseline and sum(early) / baseline > 0:
                limits.append(ratio * sum(early) / baseline)
            if above and limits and v > min(limits):
                hit = True
            if not above and limits and v < max(limits):
                hit = True
        if hit:
            steps.append(i)
    return steps


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction, floor, baseline", [(0.5, None, 5), (0.2, 0.8, 1), (0.9, None, 3)])
@pytest.mark.parametrize("cooldown", [0, 3])
def test_entropy_collapse_matches_brute_force(seed, fraction, floor, baseline, cooldown):
    seq = _sequences(seed)
    rule = AttentionEntropyCollapse(fraction=fraction, floor=floor, baseline=baseline, cooldown=cooldown)
    got = [i for i, row in enumerate(seq) if rule.update(i, row) is not None]
    assert got == _cooldown(_early_reference(seq, fraction, floor, baseline, False), cooldown)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kw", [dict(factor=3.0, lag=5, min_value=0.0, limit=None),
                                dict(factor=2.0, lag=2, min_value=5.0, limit=100.0)])
def test_output_divergence_matches_brute_force_on_scalars(seed, kw):
    seq = [{"output": row["a"]} for row in _sequences(seed, layers=("a",))]
    rule = OutputLogitDivergence(cooldown=0, **kw)
    got = [i for i, row in enumerate(seq) if rule.update(i, row["output"]) is not None]
    assert got == _growth_reference(seq, **kw)


def test_alert_text_names_every_layer_and_reports_the_worst():
    rule = AttentionLogitGrowth(factor=2.0, lag=1, min_value=0.0, cooldown=0)
    rule.update(1, {"a": 10.0, "b": 10.0, "c": 10.0})
    alert = rule.update(2, {"a": 30.0, "b": 50.0, "c": 15.0})
    assert alert.value == 50.0 and alert.threshold == 20.0
    assert "a = 30 (limit 20)" in alert.text and "b = 50 (limit 20)" in alert.text
    assert "c =" not in alert.text and alert.text.startswith("Step 2:")
    rule = AttentionEntropyCollapse(fraction=0.5, baseline=1, cooldown=0)
    rule.update(1, {"x": 2.0, "y": 2.0})
    alert = rule.update(2, {"x": 0.5, "y": 0.1})
    assert alert.value == 0.1 and alert.threshold == 1.0 and "x = 0.5 (below 1)" in alert.text


def test_select_from_metrics():
    metrics = {"geometry/attention/h.0.attn/max_logit": 3.0, "geometry/attention/h.0.attn/entropy": 1.5,
               "geometry/attention/h.0.attn/entropy_min": 0.5, "geometry/output_logits/mean_abs": 2.0,
               "geometry/output_logits/log_z_sq": 9.0, "geometry/sharpness": 4.0}
    assert AttentionLogitGrowth.select(metrics) == {"h.0.attn": 3.0}
    assert AttentionEntropyCollapse().select(metrics) == {"h.0.attn": 1.5}
    assert AttentionEntropyCollapse(summary="entropy_min").select(metrics) == {"h.0.attn": 0.5}
    assert OutputLogitDivergence().select(metrics) == {"output": 2.0}
    assert OutputLogitDivergence(summary="log_z_sq").select(metrics) == {"output": 9.0}
    assert OutputLogitDivergence(summary="max").select(metrics) == {}


@pytest.mark.parametrize("make, feed", [
    (lambda: AttentionLogitGrowth(factor=3.0, lag=2, min_value=0.0, cooldown=5), lambda r: r),
    (lambda: AttentionEntropyCollapse(fraction=0.7, baseline=3, cooldown=5), lambda r: r),
    (lambda: OutputLogitDivergence(factor=2.0, lag=3, cooldown=5), lambda r: r["a"]),
])
def test_state_dict_round_trip_resumes_identically(make, feed, tmp_path):
    seq = _sequences(11)
    whole, first = make(), make()
    ref = [whole.update(i, feed(r)) for i, r in enumerate(seq)]
    got = [first.update(i, feed(r)) for i, r in enumerate(seq[:30])]
    torch.save(first.state_dict(), tmp_path / "s.pt")
    second = make()
    second.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    got += [second.update(i + 30, feed(r)) for i, r in enumerate(seq[30:])]
    assert got == ref
    assert second.state_dict() == whole.state_dict()


@pytest.mark.parametrize("make, match", [
    (lambda: AttentionLogitGrowth(factor=1.0), r"factor must be a finite number > 1.0, got 1.0"),
    (lambda: AttentionLogitGrowth(lag=0), r"lag must be an int >= 1, got 0"),
    (lambda: AttentionLogitGrowth(min_value=-1.0), r"min_value must be a finite number >= 0.0"),
    (lambda: AttentionLogitGrowth(limit=0.0), r"limit must be a finite number > 0.0"),
    (lambda: AttentionEntropyCollapse(fraction=1.0), r"fraction must be a finite number > 0.0 and < 1.0"),
    (lambda: AttentionEntropyCollapse(floor=-1.0), r"floor must be a finite number > 0.0"),
    (lambda: AttentionEntropyCollapse(baseline=0), r"baseline must be an int >= 1, got 0"),
    (lambda: AttentionEntropyCollapse(summary="mean"), r"summary must be 'entropy' or 'entropy_min'"),
    (lambda: OutputLogitDivergence(factor=0.5), r"factor must be a finite number > 1.0"),
    (lambda: OutputLogitDivergence(limit=math.inf), r"limit must be a finite number > 0.0"),
    (lambda: OutputLogitDivergence(summary="log_z"), r"summary must be 'mean_abs', 'max' or 'log_z_sq'"),
    (lambda: OutputLogitDivergence(cooldown=-1), r"cooldown must be an int >= 0"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("rule, value, match", [
    (AttentionLogitGrowth(), 3.0, r"mapping layer -> max attention logit for 'attention_logit_growth', got float"),
    (AttentionEntropyCollapse(), [1.0], r"mapping layer -> attention entropy .* got list"),
    (OutputLogitDivergence(), "x", r"number or a mapping .* got str"),
    (OutputLogitDivergence(), True, r"number or a mapping .* got bool"),
])
def test_bad_values(rule, value, match):
    with pytest.raises(ValueError, match=match):
        rule.update(1, value)


def test_state_missing_keys_raise():
    with pytest.raises(ValueError, match=r"lacks keys \['n_fired'\]"):
        AttentionLogitGrowth().load_state_dict({"last_fired": -1, "n_suppressed": 0, "history": {}})
