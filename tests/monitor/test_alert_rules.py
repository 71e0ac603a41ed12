"""Alert rules against brute-force re-computations of their conditions (numpy medians, counts)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomonitor.monitor.alerts import (Alert, EdgeOfStability, GradNormExplosion, LossSpike,
                                       NonFinite, RepresentationCollapse)


def _fired_steps(rule, values):
    return [a.step for s, v in enumerate(values) if (a := rule.update(s, v)) is not None]


def test_eos_fires_after_patience_consecutive_and_resets():
    rule = EdgeOfStability(threshold=1.2, patience=3, cooldown=0)
    vals = [1.0, 1.3, 1.5, 1.1, 1.3, 1.4, 1.6, 1.7, float("nan"), 1.3]
    # brute force: step s fires when vals[s-2..s] are all > 1.2
    expected = [s for s in range(2, len(vals)) if all(v > 1.2 for v in vals[s - 2:s + 1])]
    assert _fired_steps(rule, vals) == expected == [6, 7]


def test_eos_alert_text_names_step_values_threshold_action():
    rule = EdgeOfStability(threshold=1.2, patience=2)
    assert rule.update(10, 1.5) is None
    alert = rule.update(11, 2.5)
    assert isinstance(alert, Alert)
    assert (alert.rule, alert.step, alert.value, alert.threshold, alert.level) == ("eos", 11, 2.5, 1.2, "WARN")
    for piece in ("Step 11", "1.5", "2.5", "1.2", "Suggested action", "learning rate"):
        assert piece in alert.text


def test_cooldown_rate_limits_a_persistent_condition():
    rule = EdgeOfStability(threshold=1.0, patience=1, cooldown=5)
    fired = _fired_steps(rule, [2.0] * 12)
    assert fired == [0, 5, 10]  # at most one alert per 5 steps
    assert rule.n_fired == 3 and rule.n_suppressed == 12 - 3


@pytest.mark.parametrize("cls,kw", [(LossSpike, {}), (GradNormExplosion, {})])
def test_running_median_rule_matches_numpy(cls, kw):
    rng = np.random.default_rng(0)
    vals = list(rng.uniform(0.5, 1.5, size=60))
    vals[30] = 40.0
    vals[45] = float("nan")
    vals[50] = 1.45  # above every earlier value but below 3 x any median (>= 0.5): silent
    rule = cls(factor=3.0, window=10, min_history=5, cooldown=0)
    fired = _fired_steps(rule, vals)
    hist, expected = [], []
    for s, v in enumerate(vals):  # brute force with numpy's median
        if not math.isfinite(v):
            continue
        if len(hist) >= 5 and v > 3.0 * np.median(hist[-10:]):
            expected.append(s)
        hist.append(v)
    assert fired == expected == [30]


def test_running_median_history_is_bounded_and_median_nonpositive_is_silent():
    rule = LossSpike(factor=2.0, window=4, min_history=1, cooldown=0)
    for s in range(100):
        rule.update(s, -1.0)
    assert len(rule.history) == 4
    assert rule.update(100, 50.0) is None  # median -1 <= 0: the rule does not apply


def test_non_finite_reports_names_and_is_error():
    rule = NonFinite()
    assert rule.update(0, {"loss": 1.0, "grad_norm": 3.0}) is None
    alert = rule.update(1, {"loss": float("nan"), "grad_norm": float("inf")})
    assert alert.level == "ERROR" and math.isnan(alert.value) and alert.threshold == math.inf
    assert "loss = nan" in alert.text and "grad_norm = inf" in alert.text
    assert rule.update(2, {"loss": float("-inf")}) is not None  # cooldown 0: every occurrence


def test_collapse_floor_and_relative_drop():
    rule = RepresentationCollapse(floor=2.0, drop=0.5, cooldown=0)
    assert rule.update(0, {"a": 10.0, "b": 8.0}) is None
    assert rule.update(1, {"a": 6.0, "b": 8.0}) is None  # 6 > 0.5*10
    alert = rule.update(2, {"a": 4.0, "b": 1.5})  # a: 4 < 5 (0.4 short); b: 1.5 < max(2, 4)
    assert alert is not None and "a = 4" in alert.text and "b = 1.5" in alert.text
    assert (alert.value, alert.threshold) == (1.5, 4.0)  # b: ratio 0.375 < a's 0.8
    assert rule.update(3, {"a": float("nan"), "b": 9.0}) is None  # NaN ignored
    assert rule.running_max == {"a": 10.0, "b": 9.0}


def test_collapse_floor_only():
    rule = RepresentationCollapse(floor=3.0, drop=None, cooldown=0)
    assert rule.update(0, {"x": 2.5}).threshold == 3.0


def _roundtrip(rule, tmp_path):
    path = tmp_path / "rule.pt"
    torch.save(rule.state_dict(), path)
    return torch.load(path, weights_only=True)


def test_state_dict_round_trip_continues_identically(tmp_path):
    rng = np.random.default_rng(1)
    series = list(rng.uniform(0.5, 1.5, 40)) + [20.0, 1.0, 30.0]
    for make, feed in [
        (lambda: LossSpike(window=15, min_history=5, cooldown=2), lambda s: series[s]),
        (lambda: GradNormExplosion(factor=5.0, window=15, min_history=5), lambda s: series[s]),
        (lambda: EdgeOfStability(threshold=1.0, patience=3, cooldown=4), lambda s: series[s] * 1.5),
        (lambda: NonFinite(cooldown=3), lambda s: {"loss": series[s] if s % 7 else float("nan")}),
        (lambda: RepresentationCollapse(drop=0.6, cooldown=1), lambda s: {"l": 10.0 / series[s]}),
    ]:
        a = make()
        out_a = [a.update(s, feed(s)) for s in range(30)]
        b = make()
        b.load_state_dict(_roundtrip(a, tmp_path))
        assert b.state_dict() == a.state_dict()
        tail_a = [a.update(s, feed(s)) for s in range(30, len(series))]
        tail_b = [b.update(s, feed(s)) for s in range(30, len(series))]
        def key(alerts):  # NaN != NaN, so compare the alerts by their text
            return [None if x is None else (x.rule, x.step, x.threshold, x.text) for x in alerts]

        assert key(tail_a) == key(tail_b)
        assert any(x is not None for x in out_a + tail_a)  # the comparison is not vacuous


def test_load_state_dict_rejects_incomplete_state():
    with pytest.raises(ValueError, match=r"state for rule 'eos' lacks keys \['n_fired', 'n_suppressed'\]"):
        EdgeOfStability().load_state_dict({"last_fired": 3})


@pytest.mark.parametrize("make,match", [
    (lambda: EdgeOfStability(threshold=0.0), r"threshold must be a finite number > 0.0, got 0.0"),
    (lambda: EdgeOfStability(threshold=float("nan")), r"threshold must be a finite number > 0.0, got nan"),
    (lambda: EdgeOfStability(patience=0), r"patience must be an int >= 1, got 0"),
    (lambda: EdgeOfStability(patience=2.5), r"patience must be an int >= 1, got 2.5"),
    (lambda: EdgeOfStability(cooldown=-1), r"cooldown must be an int >= 0, got -1"),
    (lambda: EdgeOfStability(cooldown=True), r"cooldown must be an int >= 0, got True"),
    (lambda: EdgeOfStability(name="a/b"), r"name must be a non-empty string without '/', got 'a/b'"),
    (lambda: LossSpike(factor=1.0), r"factor must be a finite number > 1.0, got 1.0"),
    (lambda: LossSpike(window=0), r"window must be an int >= 1, got 0"),
    (lambda: LossSpike(min_history=0), r"min_history must be an int >= 1, got 0"),
    (lambda: GradNormExplosion(window=5, min_history=6), r"min_history must be <= window \(5\), got 6"),
    (lambda: RepresentationCollapse(floor=-1.0), r"floor must be a finite number > 0.0, got -1.0"),
    (lambda: RepresentationCollapse(drop=1.0), r"drop must be a finite number > 0.0 and < 1.0, got 1.0"),
    (lambda: RepresentationCollapse(floor=None, drop=None), r"floor and drop are both None"),
])
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_update_rejects_non_mapping_values():
    with pytest.raises(ValueError, match=r"value must be a mapping name -> number for 'non_finite', got float"):
        NonFinite().update(0, 1.0)
    with pytest.raises(ValueError, match=r"value must be a mapping layer -> intrinsic dimension for 'collapse', got list"):
        RepresentationCollapse().update(0, [1.0])
