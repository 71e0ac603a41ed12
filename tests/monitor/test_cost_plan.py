"""The cost cap's plan (periods stretched to fit max_overhead) against a brute-force reading
of its rule, the whole-run budget when the run's length is known, the periods in force, the
summary, and a 1000-step run on a scripted clock. No wall time is read."""
from __future__ import annotations

import math
import random

import pytest
from torch import nn

from geomonitor.monitor import Every, Family, Measurement, Monitor, metric_key
from geomonitor.monitor.cost import CostCap, plan_periods
from geomonitor.monitor.periods import Periods
from geomonitor.monitor.summary import format_summary


def _brute(cost, period, rate):
    """Try every common period T from 1 up; the first that fits is the plan."""
    for T in range(1, 200_000):
        per = {f: p * math.ceil(T / p) if f in cost else p for f, p in period.items()}
        if sum(c / per[f] for f, c in cost.items()) <= rate:
            return per
    raise AssertionError("nothing fits")


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_is_the_shortest_common_period_that_fits(seed):
    rng = random.Random(seed)
    names = [f"f{i}" for i in range(rng.randint(1, 5))]
    period = {f: rng.choice([1, 3, 10, 25, 50, 500]) for f in names}
    cost = {f: rng.choice([0.0, 0.5, 1.0, 3.0, 16.0]) for f in names if rng.random() < 0.8}
    rate = rng.choice([0.01, 0.05, 0.1, 0.5])
    got = plan_periods(cost, period, rate)
    assert got == _brute(cost, period, rate)
    assert all(got[f] % period[f] == 0 and got[f] >= period[f] for f in names)  # on schedule


def test_an_affordable_period_is_kept_and_the_others_stretch_together():
    # id asks every 500 (1/500 of a step per step), the others every 10: 4 + 1 steps per round
    got = plan_periods({"id": 1.0, "sharpness": 4.0, "np": 1.0}, {"id": 500, "sharpness": 10, "np": 10}, 0.05)
    assert got == {"id": 500, "sharpness": 110, "np": 110}  # 5/110 + 1/500 = 0.0475 <= 0.05; 100 gives 0.052
    assert plan_periods({}, {"id": 10}, 0.05) == {"id": 10}              # nothing costed yet
    assert plan_periods({"id": 2.0}, {"id": 10, "np": 7}, 0.0) == {"id": 10**12, "np": 7}  # paused


@pytest.mark.parametrize("cost, period, match", [
    ({"a": 1.0}, {"a": 0}, r"period\['a'\] must be a positive int, got 0"),
    ({"a": 1.0}, {"a": True}, r"period\['a'\] must be a positive int, got True"),
    ({"a": -1.0}, {"a": 5}, r"costs must be >= 0"),
])
def test_bad_plan_arguments_raise(cost, period, match):
    with pytest.raises(ValueError, match=match):
        plan_periods(cost, period, 0.05)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_known_horizon_spreads_what_is_left_of_the_whole_budget():
    clock = Clock()
    cap = CostCap(0.1, clock)
    cap.horizon = 1000
    cap.start(1)
    clock.t += 99.0
    cap.tick(100)                      # 99 steps of 1 s
    assert cap.step_time() == 1.0 and cap.rate() == pytest.approx(0.1 * 1000 / 901)  # none spent
    cap.charge("a", 45.0)              # spent 45 of the run's 100 s; 901 s of training left
    clock.t += 45.0
    assert cap.training_time() == 99.0
    assert cap.rate() == pytest.approx((0.1 * 1000 - 45.0) / (1000 - 99))
    assert cap.plan({"a": 10}) == plan_periods({"a": 45.0}, {"a": 10}, (100 - 45) / 901)
    # the guard holds the whole run's budget: 45 + 45 <= 100 runs, 45 + 45 + 45 does not
    assert cap.allows("a") and not cap.allows("a", planned=45.0)
    cap.horizon = None                 # unknown length: the share of the time so far
    assert cap.rate() == 0.1 and not cap.allows("a")


def test_periods_in_force_keep_the_asked_steps_and_follow_epochs():
    p = Periods({"a": Every(n_steps=10), "b": Every(n_epochs=2)})
    assert p.asked("b") is None and p.asked_all() == {"a": 10}
    assert p.update({"a": 35}) == {"a": 30}          # a whole multiple of the asked period
    got = []
    for s in range(1, 100):
        if p.due("a", s):
            got.append(s)
            p.mark("a", s)
    assert got == [10, 40, 70]                         # the first comes; then every 30
    assert p.mark("a", 80, ran=False) and not p.mark("a", 90, ran=False)   # one counted skip
    assert p.due("a", 100) and "a" in p.waiting
    p.epoch_end(50, 0)                                 # 50 steps per epoch
    assert p.asked("b") == 100
    assert p.update({"b": 400}) == {"b": 400}
    got = []
    for e in range(16):
        if p.due("b", 0, e):
            got.append(e)
            p.mark("b", 0, e)
    assert got == [1, 9]                               # every 8 epochs from the first
    assert p.update({"a": 30, "b": 400}) == {}        # unchanged: nothing to log
    q = Periods({"a": Every(n_steps=10), "b": Every(n_epochs=2)})
    q.load_state_dict(p.state_dict())
    assert q.stretch == {"a": 3, "b": 4} and q.steps_per_epoch == 50
    assert q.last == {"a": 70} and q.last_epoch == {"b": 9} and q.waiting == {"a"}


class Costly(Family):
    """Advances the scripted clock by ``cost`` seconds per measurement."""

    needs_probe = False

    def __init__(self, name, every, clock, cost):
        super().__init__(Every(n_steps=every))
        self.name, self.clock, self.cost, self.steps = name, clock, cost, []

    def run(self, ctx):
        self.steps.append(ctx.step)
        self.clock.t += self.cost
        return Measurement(metrics={metric_key("id", self.name): 1.0})


class Recorder:
    def __init__(self) -> None:
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


@pytest.mark.parametrize("horizon", [None, 1000])
def test_a_1000_step_run_gives_every_family_evenly_spread_points_within_the_share(horizon, capsys):
    # 30 ms steps; five families costing 1-4 steps each (12 steps a round), asked every 10
    clock, rec = Clock(), Recorder()
    costs = {"id": 0.03, "sharpness": 0.12, "topology": 0.06, "np": 0.03, "symmetry": 0.12}
    fams = [Costly(n, 10, clock, c) for n, c in costs.items()]
    mon = Monitor(nn.Linear(2, 2), sink=rec, families=fams, max_overhead=0.05, clock=clock,
                  total_steps=horizon)
    for s in range(1, 1001):
        clock.t += 0.03
        mon.step(s)
    mon.close()
    summary = mon.summary()
    assert summary["overhead"] <= 0.05 + 1e-9
    for fam in fams:
        assert len(fam.steps) >= 4 and fam.steps[0] == 10 and all(s % 10 == 0 for s in fam.steps)
        gaps = [b - a for a, b in zip(fam.steps, fam.steps[1:])]
        if horizon:   # the plan spreads the whole budget: evenly spaced points (one asked period)
            assert max(gaps) - min(gaps) <= 10
        else:         # the first round's cost is repaid first; then every period
            assert min(gaps) >= 200 and max(gaps[1:]) - min(gaps[1:]) <= 20
        assert summary["families"][fam.name]["points"] == len(fam.steps)
    periods = [(s, m) for s, row in rec.rows for k, m in row.items() if k.startswith("geometry/period/")]
    assert periods and all(m % 10 == 0 for _, m in periods)
    out = capsys.readouterr().out
    assert "to keep within max_overhead=0.05" in out and "more points: max_overhead=" in out
    assert f"geomonitor: 1000 steps, monitor cost {summary['overhead']:.1%}" in out
    if horizon:   # the whole run's budget: no skip, and more of the budget used
        assert sum(mon.skipped.values()) == 0 and summary["overhead"] > 0.04


def test_the_summary_table_names_every_family_and_how_to_get_more_points():
    s = {"steps": 1000, "overhead": 0.048, "max_overhead": 0.05, "needed_overhead": 0.25,
         "families": {"id": {"enabled": True, "points": 6, "skipped": 0, "dropped": 1, "errors": 2,
                             "cost_steps": 1.25, "period_asked": 10, "period": 170},
                      "np": {"enabled": False, "points": 0, "skipped": 0, "dropped": 0, "errors": 0,
                             "cost_steps": None, "period_asked": 10, "period": 10}}}
    text = format_summary(s)
    lines = text.splitlines()
    assert lines[0] == "geomonitor: 1000 steps, monitor cost 4.8% of training (max_overhead 5%)"
    assert lines[2].split() == ["id", "6", "0", "1", "2", "1.2", "10", "->", "170"]
    assert "np" in lines[3] and "disabled" in lines[3]
    assert "more points: max_overhead=0.25 runs every family at its asked period" in text
    assert "dropped:" in text and "errors:" in text


@pytest.mark.parametrize("total, match", [
    ("1000", r"total_steps must be a positive int, a callable or None, got '1000'"),
    (True, r"total_steps must be a positive int, a callable or None, got True"),
])
def test_bad_total_steps_and_verbose_raise(total, match):
    fams = [Costly("a", 1, Clock(), 0.0)]
    with pytest.raises(ValueError, match=match):
        Monitor(nn.Linear(2, 2), families=fams, total_steps=total)
    with pytest.raises(ValueError, match=r"verbose must be True or False, got 1"):
        Monitor(nn.Linear(2, 2), families=fams, verbose=1)


@pytest.mark.parametrize("total, horizon", [(float("inf"), None), (0, None), (-1, None), (500, 500),
                                            (lambda: 700, 700), (lambda: float("inf"), None)])
def test_an_unknown_length_is_none(total, horizon):
    mon = Monitor(nn.Linear(2, 2), families=[Costly("a", 1, Clock(), 0.0)], total_steps=total,
                  verbose=False)
    mon.step(1)
    assert mon.cap.horizon == horizon
    mon.close()
