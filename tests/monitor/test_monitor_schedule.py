"""Every: due tables against a brute-force definition, and every validation error."""
from __future__ import annotations

import pytest

from geomonitor.monitor.schedule import Every


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_due_step_table(n):
    sched = Every(n_steps=n)
    got = [s for s in range(0, 50) if sched.due_step(s)]
    assert got == list(range(n, 50, n))  # step 0 never due
    assert not any(sched.due_epoch(e) for e in range(10))  # no epoch cadence


@pytest.mark.parametrize("n", [1, 2, 3])
def test_due_epoch_table(n):
    sched = Every(n_epochs=n)
    assert [e for e in range(12) if sched.due_epoch(e)] == [e for e in range(12) if (e + 1) % n == 0]
    assert not any(sched.due_step(s) for s in range(20))


def test_both_cadences():
    sched = Every(n_steps=5, n_epochs=2)
    assert [s for s in range(21) if sched.due_step(s)] == [5, 10, 15, 20]
    assert [e for e in range(6) if sched.due_epoch(e)] == [1, 3, 5]
    assert sched == Every(5, 2) and sched != Every(5) and hash(sched) == hash(Every(5, 2))
    assert repr(sched) == "Every(n_steps=5, n_epochs=2)"


@pytest.mark.parametrize("kwargs, match", [
    (dict(), r"Every needs n_steps or n_epochs .* got n_steps=None and n_epochs=None"),
    (dict(n_steps=0), r"n_steps must be a positive int or None, got 0"),
    (dict(n_steps=-3), r"n_steps must be a positive int or None, got -3"),
    (dict(n_steps=2.0), r"n_steps must be a positive int or None, got 2.0"),
    (dict(n_steps=True), r"n_steps must be a positive int or None, got True"),
    (dict(n_epochs=0), r"n_epochs must be a positive int or None, got 0"),
    (dict(n_steps=1, n_epochs="2"), r"n_epochs must be a positive int or None, got '2'"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Every(**kwargs)


def test_invalid_queries():
    sched = Every(n_steps=2, n_epochs=1)
    with pytest.raises(ValueError, match=r"step must be a non-negative int, got -1"):
        sched.due_step(-1)
    with pytest.raises(ValueError, match=r"epoch must be a non-negative int, got 1.5"):
        sched.due_epoch(1.5)
