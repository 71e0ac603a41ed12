"""OverheadBudget with a scripted clock: admission follows credit = fraction * training - spent >= cost."""
from __future__ import annotations

import pytest

from geomonitor.monitor.budget import OverheadBudget


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_first_measurement_of_a_fit_waits_for_first_cost():
    clock = _Clock()
    b = OverheadBudget(0.1, clock=clock)
    b.start()
    assert b.first_cost == 0.02 and not b.allows("id")  # credit 0 < 0.02
    clock.t += 0.199  # credit = 0.1 * 0.199 = 0.0199
    assert not b.allows("id")
    clock.t += 0.001  # credit = 0.02
    assert b.allows("id")
    z = OverheadBudget(0.1, first_cost=0, clock=clock)
    z.start()
    assert z.remaining() == 0.0 and z.allows("id")  # credit 0 >= largest known cost 0


def test_first_cost_is_a_floor_under_the_costliest_known_cost():
    clock = _Clock()
    b = OverheadBudget(0.5, first_cost=0.3, clock=clock)
    b.start()
    b.charge("id", 0.1)
    clock.t += 1.0  # credit = 0.5 * 0.9 - 0.1 = 0.35
    assert b.allows("id") and b.allows("sharpness")  # 0.35 >= 0.1; 0.35 >= max(0.3, 0.1)
    b.charge("id", 0.08)  # credit = 0.5 * (1 - 0.18) - 0.18 = 0.23
    assert b.allows("id") and not b.allows("sharpness")


@pytest.mark.parametrize("bad", [-0.01, True, "0.02", float("nan"), None])
def test_bad_first_cost_is_rejected(bad):
    with pytest.raises(ValueError, match=r"first_cost must be a number of seconds >= 0, got"):
        OverheadBudget(0.05, first_cost=bad)


def test_an_unknown_family_waits_for_credit_covering_the_costliest_known_one():
    clock = _Clock()
    b = OverheadBudget(0.1, clock=clock)
    b.start()
    b.charge("sharpness", 1.0)
    clock.t += 5.0  # credit = 0.1 * (5 - 1) - 1 = -0.6
    assert b.remaining() == pytest.approx(-0.6)
    assert not b.allows("sharpness") and not b.allows("id")
    assert b.deferred == {"sharpness": 1, "id": 1}
    clock.t += 15.9  # credit = 0.1 * 19.9 - 1 = 0.99 < 1.0 (cost of sharpness)
    assert not b.allows("id")
    clock.t += 0.1  # credit = 0.1 * 20 - 1 = 1.0
    assert b.allows("id") and b.allows("sharpness")
    b.charge("id", 0.1)  # now known and cheap: needs only its own cost
    # elapsed 21: credit = 0.1 * (21 - 1.1) - 1.1 = 0.89
    assert b.allows("id") and not b.allows("sharpness") and not b.allows("np")


@pytest.mark.parametrize("elapsed,expected", [(10.9, False), (11.0, True)])
def test_boundary_matches_the_formula(elapsed, expected):
    clock = _Clock()
    b = OverheadBudget(0.2, clock=clock)
    b.start()
    b.charge("x", 1.0)
    clock.t += elapsed
    # credit = 0.2 * (elapsed - 1) - 1 >= cost 1.0  <=>  elapsed >= 11
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
    c = OverheadBudget(0.1, first_cost=0.0, clock=clock)
    c.start()
    c.charge("x", 5.0)
    c.start()
    assert c.spent == 0.0 and c.cost == {} and c.allows("x")
    assert b.remaining() is None and OverheadBudget(0.1).remaining() is None  # no budget / not started


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, True, "0.05", float("nan")])
def test_bad_fraction_is_rejected(bad):
    with pytest.raises(ValueError, match=r"max_overhead must be a number in \(0, 1\] or None, got"):
        OverheadBudget(bad)


def test_a_pending_background_part_holds_its_family():
    clock = _Clock()
    b = OverheadBudget(0.5, clock=clock)
    b.start()
    b.charge("topology", 0.01, pending=True)
    clock.t += 10.0  # credit = 0.5 * 9.99 - 0.01 = 4.985: money is not the issue
    assert b.pending == {"topology"}
    assert not b.allows("topology") and b.allows("id")  # id: unknown, credit >= 0.01
    b.charge("sharpness", 0.1)
    assert b.allows("sharpness")  # known cost, not pending
    b.charge("topology", 0.5, background=True)
    assert b.pending == set() and b.cost["topology"] == pytest.approx(0.51)
    assert b.allows("topology") and b.allows("id")
    b.charge("x", 0.0, pending=True)
    b.start()
    assert b.pending == set()


def test_bookkeeping_time_is_spent_but_sets_no_family_cost():
    clock = _Clock()
    b = OverheadBudget(0.1, clock=clock)
    b.start()
    b.charge_bookkeeping(0.5)
    b.charge_bookkeeping(-1.0)  # clamped
    clock.t += 10.0
    assert b.spent == 0.5 and b.cost == {}
    assert b.remaining() == pytest.approx(0.1 * 9.5 - 0.5)


@pytest.mark.parametrize("fraction,charges,name", [
    (0.05, {"sharpness": 0.01}, "sharpness"),
    (0.05, {"sharpness": 0.01, "topology": 0.03}, "id"),  # unknown: needs the costliest
    (0.5, {"id": 0.2}, "id"),
    (1.0, {}, "np"),
])
def test_ready_at_is_the_first_time_the_family_is_admitted(fraction, charges, name):
    clock = _Clock()
    b = OverheadBudget(fraction, clock=clock)
    b.start()
    for fam, seconds in charges.items():
        b.charge(fam, seconds)
    b.charge_bookkeeping(0.004)
    t = b.ready_at(name)
    clock.t = t - 1e-9
    assert not b.allows(name)
    clock.t = t + 1e-9
    assert b.allows(name)


def test_ready_at_without_a_budget_and_while_pending():
    clock = _Clock()
    assert OverheadBudget(None, clock=clock).ready_at("x") == float("-inf")
    b = OverheadBudget(0.1, clock=clock)
    assert b.ready_at("x") == float("-inf")  # not started: admitted
    b.start()
    b.charge("topology", 0.1, pending=True)
    assert b.ready_at("topology") == float("inf")


def test_starved_lists_families_that_waited_and_never_ran_in_this_fit():
    clock = _Clock()
    b = OverheadBudget(0.1, clock=clock)
    b.start()
    assert not b.allows("sharpness") and not b.allows("id")  # credit 0 < first_cost
    b.count_wait("id")
    assert b.starved() == ["id", "sharpness"] and b.deferred == {"sharpness": 1, "id": 2}
    b.charge("id", 0.01)
    assert b.starved() == ["sharpness"]
    b.start()  # a new fit: nothing waited yet; the counts stay
    assert b.starved() == [] and b.deferred == {"sharpness": 1, "id": 2}
