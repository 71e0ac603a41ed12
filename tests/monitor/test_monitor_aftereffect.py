"""AfterEffectMeter against a brute-force recomputation of the baseline and the window sums."""
from __future__ import annotations

import numpy as np
import pytest

from geomonitor.monitor.aftereffect import AfterEffectMeter


def _brute_force(periods, disturbed, boundary, window, history, min_history):
    """Charges per step, recomputed from the whole record: the baseline is the median of the
    last ``history`` undisturbed, non-boundary periods before the window opened."""
    clean, charges, left, base, excess = [], [], 0, None, 0.0
    for i, p in enumerate(periods):
        if disturbed[i]:  # a measurement during period i: it is the window's first period
            if not left:
                base = float(np.median(clean[-history:])) if len(clean) >= min_history else None
                excess = 0.0
            left = window
        if left:
            if not boundary[i] and base is not None:
                excess += p - base
            left -= 1
            charges.append(0.0 if left else max(0.0, excess))
        else:
            if not boundary[i]:
                clean.append(p)
            charges.append(0.0)
    return charges


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window,history,min_history", [(16, 32, 4), (3, 5, 5), (1, 1, 1)])
def test_charges_match_brute_force(seed, window, history, min_history):
    rng = np.random.default_rng(seed)
    n = 400
    periods = rng.uniform(1e-3, 1.3e-3, n)
    disturbed = rng.random(n) < 0.05
    boundary = rng.random(n) < 0.04
    periods[np.flatnonzero(disturbed)] += 2e-3  # slow steps after measurements
    periods[boundary] += 5e-3  # epoch ends: never a baseline, never charged
    own = rng.uniform(0, 1e-4, n)
    meter = AfterEffectMeter(window=window, history=history, min_history=min_history)
    t, got = 0.0, []
    meter.tick(t)
    for i in range(n):
        if disturbed[i]:
            meter.disturb()
        t += periods[i] + own[i]
        got.append(meter.tick(t, own[i], boundary=bool(boundary[i])))
    expected = _brute_force(periods, disturbed, boundary, window, history, min_history)
    assert got == pytest.approx(expected, abs=1e-12)
    assert meter.charged == pytest.approx(sum(expected), abs=1e-12)
    assert sum(expected) > 0


def test_a_faster_window_is_charged_nothing_and_no_baseline_means_no_charge():
    meter = AfterEffectMeter(window=2, history=4, min_history=3)
    for t in (0.0, 1.0, 2.0):
        meter.tick(t)
    assert meter.baseline is None
    meter.disturb()  # two periods known, three needed
    assert [meter.tick(t) for t in (12.0, 22.0)] == [0.0, 0.0]
    meter.reset()
    for t in (0.0, 1.0, 2.0, 3.0):
        meter.tick(t)
    assert meter.baseline == 1.0
    meter.disturb()
    assert [meter.tick(t) for t in (3.5, 4.0)] == [0.0, 0.0]  # -0.5 - 0.5: clipped at zero


def test_a_measurement_inside_a_window_extends_it_with_the_same_baseline():
    meter = AfterEffectMeter(window=2, history=8, min_history=1)
    for t in (0.0, 1.0, 2.0):
        meter.tick(t)
    meter.disturb()
    assert meter.tick(4.0) == 0.0  # +1
    meter.disturb()  # the window now ends two steps from here
    assert meter.tick(5.5) == 0.0  # +0.5
    assert meter.tick(7.0) == pytest.approx(2.0)  # +0.5: 1 + 0.5 + 0.5
    assert meter.baseline == 1.0  # the disturbed periods never entered the buffer


def test_flush_closes_an_open_window():
    meter = AfterEffectMeter(window=10, history=4, min_history=1)
    meter.tick(0.0)
    meter.tick(1.0)
    meter.disturb()
    meter.tick(3.0)
    assert meter.flush() == pytest.approx(1.0) and meter.flush() == 0.0
    assert meter.charged == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(window=0), r"window must be a positive int, got 0"),
    (dict(history=True), r"history must be a positive int, got True"),
    (dict(min_history=1.5), r"min_history must be a positive int, got 1.5"),
    (dict(history=4, min_history=5), r"min_history must be at most history=4, got 5"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AfterEffectMeter(**kwargs)
