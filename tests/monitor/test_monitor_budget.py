"""OverheadBudget with a scripted clock: admission follows spent + cost <= fraction * training."""
from __future__ import annotations

import pytest

from geomonitor.monitor.budget import OverheadBudget


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_first_measurement_of_each_family_always_runs_then_the_budget_governs():
    clock = _Clock()
    b = OverheadBudget(0.1, clock=clock)
    b.start()
    assert b.allows("id") and b.allows("sharpness")  # costs unknown yet
    b.charge("sharpness", 1.0)
    clock.t += 5.0  # 5 s elapsed, 1 s of it measuring: training 4 s, budget 0.4 s
    assert not b.allows("sharpness") and b.deferred == {"sharpness": 1}
    assert b.allows("id")  # never measured: its cost is unknown
    clock.t += 16.0  # elapsed 21, training 20, budget 2.0 >= spent 1 + cost 1
    assert b.allows("sharpness")


@pytest.mark.parametrize("elapsed,expected", [(10.9, False), (11.0, True)])
def test_boundary_matches_the_formula(elapsed, expected):
    clock = _Clock()
    b = OverheadBudget(0.2, clock=clock)
    b.start()
    b.charge("x", 1.0)
    clock.t += elapsed
    # spent + cost = 2.0 <= 0.2 * (elapsed - 1.0)  <=>  elapsed >= 11
    assert b.allows("x") is expected


def test_background_time_adds_to_the_family_cost_and_to_spent():
    b = OverheadBudget(0.5, clock=_Clock())
    b.start()
    b.charge("topology", 0.25)
    b.charge("topology", 1.0, background=True)
    assert b.cost == {"topology": 1.25} and b.spent == pytest.approx(1.25)
    b.charge("topology", 0.5)  # a new measurement's training-thread part resets the cost
    assert b.cost == {"topology": 0.5} and b.spent == pytest.approx(1.75)


def test_none_admits_everything_and_start_resets():
    clock = _Clock()
    b = OverheadBudget(None, clock=clock)
    b.start()
    b.charge("x", 1e6)
    assert b.allows("x") and b.deferred == {}
    c = OverheadBudget(0.1, clock=clock)
    c.start()
    c.charge("x", 5.0)
    c.start()
    assert c.spent == 0.0 and c.cost == {} and c.allows("x")


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, True, "0.05", float("nan")])
def test_bad_fraction_is_rejected(bad):
    with pytest.raises(ValueError, match=r"max_overhead must be a number in \(0, 1\] or None, got"):
        OverheadBudget(bad)
