"""RankCollapse against a brute-force re-computation of its running-maximum condition."""
from __future__ import annotations

import math

import numpy as np
import pytest

from geomonitor.monitor.alerts import RankCollapse
from geomonitor.monitor.keys import metric_key


def test_fires_when_rankme_falls_below_half_its_running_max_brute_force():
    rng = np.random.default_rng(0)
    a = list(rng.uniform(20, 30, 40))
    a[25:] = [8.0, 9.0, float("nan")] + list(rng.uniform(20, 30, 12))
    b = list(rng.uniform(5, 6, 40))
    rule = RankCollapse(drop=0.5, cooldown=0)
    fired = [s for s in range(40) if rule.update(s, {"a": a[s], "b": b[s]}) is not None]
    expected, mx = [], {"a": -math.inf, "b": -math.inf}
    for s in range(40):
        hit = False
        for k, v in (("a", a[s]), ("b", b[s])):
            if math.isnan(v):
                continue
            hit |= v < 0.5 * mx[k]
            mx[k] = max(mx[k], v)
        if hit:
            expected.append(s)
    assert fired == expected == [25, 26]


def test_alert_names_rankme_the_layer_and_an_action_and_state_round_trips():
    rule = RankCollapse(floor=3.0, drop=0.6, cooldown=10)
    assert rule.update(0, {"fc1": 40.0}) is None
    alert = rule.update(1, {"fc1": 12.0})
    assert (alert.rule, alert.step, alert.value, alert.threshold) == ("rank_collapse", 1, 12.0, 16.0)
    assert alert.title == "Representation rank collapse (rank_collapse)"
    for piece in ("Step 1", "RankMe", "fc1 = 12", "limit 16", "dead units", "weight decay"):
        assert piece in alert.text
    assert rule.update(2, {"fc1": 2.0}) is None and rule.n_suppressed == 1  # cooldown
    other = RankCollapse(floor=3.0, drop=0.6, cooldown=10)
    other.load_state_dict(rule.state_dict())
    assert other.state_dict() == rule.state_dict() == {
        "last_fired": 1, "n_fired": 1, "n_suppressed": 1, "running_max": {"fc1": 40.0}}
    assert other.update(11, {"fc1": 15.0}).threshold == 16.0


def test_select_picks_the_rankme_keys():
    metrics = {metric_key("symmetry", "enc.0", "rankme"): 7.0, metric_key("symmetry", "fc", "rankme"): 3,
               metric_key("symmetry", "fc", "effective_rank"): 2.0, metric_key("id", "fc"): 4.0}
    assert RankCollapse.select(metrics) == {"enc.0": 7.0, "fc": 3.0}


@pytest.mark.parametrize("make,match", [
    (lambda: RankCollapse(drop=0.0), r"drop must be a finite number > 0.0 and < 1.0, got 0.0"),
    (lambda: RankCollapse(floor=None, drop=None), r"floor and drop are both None"),
    (lambda: RankCollapse().update(0, 3.0), r"value must be a mapping layer -> RankMe for 'rank_collapse', got float"),
])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
