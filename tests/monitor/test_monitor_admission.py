"""Admission: schedules, the deferral queue and the budget, against brute force and scripted clocks."""
from __future__ import annotations

import itertools
import math

import pytest

from geomonitor.monitor.admission import Admission
from geomonitor.monitor.budget import OverheadBudget
from geomonitor.monitor.schedule import Every


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Fam:
    def __init__(self, name: str, n_steps: int | None = None, n_epochs: int | None = None) -> None:
        self.name, self.schedule, self.enabled = name, Every(n_steps, n_epochs), True


class _CountingBudget(OverheadBudget):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[str] = []

    def allows(self, name: str) -> bool:
        self.asked.append(name)
        return super().allows(name)


def _started(fraction, budget_type=OverheadBudget):
    """A scripted clock, a started budget of ``fraction`` on it and a started Admission."""
    clock = _Clock()
    budget = budget_type(fraction, clock=clock)
    adm = Admission(budget, clock=clock)
    budget.start()
    adm.start()
    return clock, budget, adm


@pytest.mark.parametrize("periods", [(1,), (3, 4), (2, 5, 7), (6, 6, 9)])
def test_without_a_budget_the_steps_selected_are_the_due_steps(periods):
    fams = [_Fam(f"f{i}", n) for i, n in enumerate(periods)]
    adm = Admission(OverheadBudget(None))
    adm.start()
    got = {(s, f.name) for s in range(1, 200) for f in adm.select(fams, s)}
    expected = {(s, f.name) for s in range(1, 200) for f in fams if s % f.schedule.n_steps == 0}
    assert got == expected


def test_between_due_steps_the_budget_is_not_asked():
    budget = _CountingBudget(None)
    adm = Admission(budget)
    adm.start()
    for s in range(1, 101):
        adm.select([_Fam("a", 25), _Fam("b", 40)], s)
    # asked at the due steps only: a at 25, 50, 75, 100; b at 40, 80
    assert budget.asked == ["a", "b", "a", "a", "b", "a"]


def test_epoch_checks_use_the_epoch_schedule_and_the_last_step():
    adm = Admission(OverheadBudget(None))
    adm.start()
    fams = [_Fam("topology", n_epochs=2), _Fam("id", n_steps=5)]
    assert [f.name for f in adm.select(fams, 7, epoch=0)] == []
    assert [f.name for f in adm.select(fams, 14, epoch=1)] == ["topology"]
    assert [f.name for f in adm.select(fams, 14, epoch=1, last={"topology": 14})] == []
    assert [f.name for f in adm.select(fams, 15, last={"id": 15})] == []  # already measured


def test_admission_is_longest_deferred_first_and_cheap_families_do_not_overtake():
    clock, budget, adm = _started(0.1)
    sharp, ident = _Fam("sharpness", 1), _Fam("id", 1)
    budget.charge("sharpness", 1.0)
    budget.charge("id", 0.1)
    clock.t = 10.5  # credit = 0.1 * (10.5 - 1.1) - 1.1 = -0.16
    assert adm.select([sharp], 1) == []
    clock.t = 13.5  # credit = 0.14: enough for id (0.1), not for sharpness (1.0)
    assert adm.select([ident, sharp], 2) == []  # sharpness waited longer: id queues behind it
    assert list(adm.queue) == ["sharpness", "id"]
    clock.t = 23.5  # credit = 1.14
    assert adm.select([ident, sharp], 3) == [sharp, ident] and adm.queue == {}


def test_the_queue_is_rechecked_exactly_when_the_budget_can_admit_its_head():
    clock, budget, adm = _started(0.1, _CountingBudget)
    fam = _Fam("sharpness", 1000)
    budget.charge("sharpness", 1.0)
    clock.t = 5.0
    assert adm.select([fam], 1000) == [] and budget.asked == ["sharpness"]
    # brute force: the first time on a 1 ms grid at which the budget would admit it
    first = next(t / 1000 for t in itertools.count(5000) if 0.1 * (t / 1000 - 1.0) - 1.0 >= 1.0)
    assert budget.ready_at("sharpness") == pytest.approx(first, abs=1e-3)
    step = 1001
    for t in (5.0, 10.0, first - 0.002):
        clock.t = t
        assert adm.select([fam], step) == []
        step += 1
    assert budget.asked == ["sharpness"] and budget.deferred["sharpness"] == 4  # waited, unasked
    clock.t = first + 0.002
    assert adm.select([fam], step) == [fam] and budget.asked == ["sharpness"] * 2


def test_a_pending_family_waits_for_wake_not_for_the_clock():
    clock, budget, adm = _started(0.5)
    fam = _Fam("topology", 1000)
    budget.charge("topology", 0.01, pending=True)
    clock.t = 100.0
    assert adm.select([fam], 1000) == [] and budget.ready_at("topology") == math.inf
    budget.charge("topology", 0.2, background=True)
    assert adm.select([fam], 1001) == []  # not woken: the fast path holds it
    adm.wake()
    assert adm.select([fam], 1002) == [fam]


def test_start_empties_the_queue():
    _, budget, adm = _started(0.1)
    budget.charge("id", 1.0)
    assert adm.select([_Fam("id", 1)], 1) == [] and adm.queue
    adm.start()
    assert adm.queue == {}
