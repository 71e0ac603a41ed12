"""NeuralPersistenceStopping (Rieck et al. 2019, Algorithm 2) as a framework-free rule: its
decisions against a brute-force reading of the definition on synthetic sequences (and
Algorithm 2 verbatim on positive ones), the state_dict round trip through ``torch.save``, every
``raise``; and a plain PyTorch loop (sklearn digits) that leaves when ``Monitor.should_stop``
says so, at the epoch Algorithm 2 gives on the values the sink received."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.monitor import Every, Monitor
from geomonitor.monitor.early_stopping import NP_KEY, NeuralPersistenceStopping
from np_stopping_reference import algorithm2 as _algorithm2
from geomonitor.monitor.families.neural_persistence import NeuralPersistenceFamily
from geomonitor.monitor.families.sharpness import SharpnessFamily


def _brute_force(values, patience, min_delta=0.0, burn_in=0, check_finite=True, stop_thr=None,
                 div_thr=None):
    """The module docstring's definition read literally: for each prefix of the sequence,
    recompute best and the count of non-improving values since it from scratch.
    Returns (stop index or None, reason)."""
    for i in range(len(values)):
        if i < burn_in:
            continue
        v = values[i]
        if check_finite and not math.isfinite(v):
            return i, "non_finite"
        if stop_thr is not None and v > stop_thr:
            return i, "stopping_threshold"
        if div_thr is not None and v < div_thr:
            return i, "divergence_threshold"
        # best and wait after the checked values before i, recomputed from scratch
        best, wait = -math.inf, 0
        for u in values[burn_in:i + 1]:
            if u > best + min_delta:
                best, wait = u, 0
            else:
                wait += 1
        if wait >= patience:
            return i, "patience"
    return None, ""


def _sequence(g: torch.Generator, n: int, *, bad: bool) -> list[float]:
    # a noisy rise that flattens: NP of a network over training, roughly
    t = torch.arange(n, dtype=torch.float64)
    values = (0.5 * (1 - torch.exp(-t / 5)) + 0.02 * torch.randn(n, generator=g, dtype=torch.float64)
              + 0.1).tolist()
    if bad and n > 3:
        values[int(torch.randint(2, n, (1,), generator=g))] = [math.nan, math.inf, -math.inf][
            int(torch.randint(0, 3, (1,), generator=g))]
    return values


def _run(rule, values):
    alerts = [rule.update(i, v) for i, v in enumerate(values)]
    fired = [i for i, a in enumerate(alerts) if a is not None]
    return (fired[0] if fired else None), alerts


@pytest.mark.parametrize("seed", range(40))
def test_rule_matches_the_brute_force_definition(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(3, 30, (1,), generator=g))
    values = _sequence(g, n, bad=seed % 4 == 0)
    patience = int(torch.randint(1, 5, (1,), generator=g))
    min_delta = [0.0, 0.005, 0.02][seed % 3]
    burn_in = int(torch.randint(0, 4, (1,), generator=g))
    check_finite = seed % 8 != 0
    stop_thr = 0.58 if seed % 5 == 1 else None
    div_thr = 0.12 if seed % 5 == 2 else None
    rule = NeuralPersistenceStopping(patience, min_delta, burn_in, check_finite=check_finite,
                                     stopping_threshold=stop_thr, divergence_threshold=div_thr)
    stop, alerts = _run(rule, values)
    expected, reason = _brute_force(values, patience, min_delta, burn_in, check_finite, stop_thr, div_thr)
    assert stop == expected
    assert rule.should_stop == (expected is not None) and rule.stopped_step == expected
    assert rule.reason == reason and rule.n_fired == (expected is not None)
    if expected is not None:
        assert alerts[expected].level == "INFO" and alerts[expected].rule == "np_early_stopping"
        assert alerts[expected].value == values[expected] or not math.isfinite(values[expected])


@pytest.mark.parametrize("seed", range(15))
def test_rule_is_algorithm_2_on_positive_sequences(seed):
    g = torch.Generator().manual_seed(100 + seed)
    values = _sequence(g, 25, bad=False)
    assert min(values) > 0
    for patience, delta in ((1, 0.0), (3, 0.0), (2, 0.01)):
        stop, _ = _run(NeuralPersistenceStopping(patience, delta), values)
        assert stop == _algorithm2(values, patience, delta)


@pytest.mark.parametrize("values,g,delta", [
    ([0.1, 0.2, 0.3, 0.3, 0.29, 0.31, 0.305, 0.30, 0.30, 0.5], 2, 0.0),  # an exact tie counts
    ([0.1, 0.2, 0.3, 0.3, 0.29, 0.31, 0.305, 0.30, 0.30, 0.5], 3, 0.0),
    ([0.1, 0.2, 0.21, 0.215, 0.219, 0.30, 0.301, 0.302, 0.303, 0.4], 3, 0.01),
    ([0.5, 0.5, 0.5, 0.6], 2, 0.0),
])
def test_rule_is_algorithm_2_on_ties(values, g, delta):
    stop, _ = _run(NeuralPersistenceStopping(g, delta), values)
    assert stop == _algorithm2(values, g, delta) is not None


def test_a_stopped_rule_stays_stopped_and_observe_reads_the_key():
    rule = NeuralPersistenceStopping(patience=1)
    assert rule.observe(0, {"geometry/sharpness": 1.0}) is None and rule.n_seen == 0
    assert rule.observe(0, {NP_KEY: 0.3}) is None and rule.best == 0.3
    assert rule.observe(1, {NP_KEY: 0.2}) is not None and rule.should_stop
    assert rule.update(2, 0.9) is None and rule.best == 0.3 and rule.stopped_step == 1
    rule.reset()
    assert not rule.should_stop and rule.best == -math.inf and rule.n_seen == 0


@pytest.mark.parametrize("cut", [1, 4, 7])
def test_state_dict_round_trip_continues_the_decision(cut):
    values = [0.2, 0.3, 0.31, 0.305, 0.32, 0.319, 0.318, 0.317, 0.316, 0.4]
    kw = dict(patience=3, min_delta=0.001, burn_in=1)
    first = NeuralPersistenceStopping(**kw)
    _run(first, values[:cut])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = NeuralPersistenceStopping(**kw)
    second.load_state_dict(torch.load(buf, weights_only=True))
    assert second.state_dict() == first.state_dict()
    fired = [cut + i for i, v in enumerate(values[cut:]) if second.update(cut + i, v) is not None]
    expected, _ = _brute_force(values, 3, 0.001, 1)
    assert fired == [expected] and second.stopped_step == expected


@pytest.mark.parametrize("kwargs,match", [
    (dict(patience=0), r"patience must be an int >= 1, got 0"),
    (dict(patience=True), r"patience must be an int >= 1, got True"),
    (dict(min_delta=-0.1), r"min_delta must be a finite number >= 0.0, got -0.1"),
    (dict(burn_in=-1), r"burn_in must be an int >= 0, got -1"),
    (dict(check_finite=1), r"check_finite must be True or False, got 1"),
    (dict(stopping_threshold=math.nan), r"stopping_threshold must be a finite number or None, got nan"),
    (dict(divergence_threshold="x"), r"divergence_threshold must be a finite number or None, got 'x'"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeuralPersistenceStopping(**kwargs)


def test_load_state_dict_errors():
    rule = NeuralPersistenceStopping()
    with pytest.raises(ValueError, match=r"lacks keys \['last_fired'"):
        rule.load_state_dict({})
    state = rule.state_dict()
    del state["best"]
    with pytest.raises(ValueError, match=r"lacks keys \['best'\]"):
        rule.load_state_dict(state)


# -- a plain loop --------------------------------------------------------------------------------
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long)


def _model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _loop(model, monitor, X, y, epochs, *, start=0):
    """Epochs of SGD (batches in a seeded order); leaves when the monitor says stop. Returns the
    epochs run."""
    g = torch.Generator().manual_seed(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    step, ran = start * (len(X) // 64), []
    for epoch in range(start, epochs):
        order = torch.randperm(len(X), generator=g)
        for i in range(0, len(X) - 63, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            monitor.step(step, optimizer=opt)
        monitor.step(step, epoch_end=True, epoch=epoch)
        ran.append(epoch)
        if monitor.should_stop:
            break
    return ran


class _Rows:
    def __init__(self):
        self.rows: list[tuple[int, dict[str, float]]] = []

    def __call__(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def test_plain_loop_leaves_at_algorithm_2s_epoch():
    X, y = _digits()
    rows, rule = _Rows(), NeuralPersistenceStopping(patience=2)
    model = _model()
    monitor = Monitor(model, sink=rows, families=[NeuralPersistenceFamily(Every(n_epochs=1))],
                      stopping=rule, max_overhead=None, verbose=False, strict=True)
    ran = _loop(model, monitor, X, y, epochs=40)
    monitor.close()
    values = [m[NP_KEY] for _, m in rows.rows if NP_KEY in m]
    expected = _algorithm2(values, 2, 0.0)
    assert expected is not None and expected < 39  # it did stop early
    assert ran == list(range(expected + 1)) and len(values) == expected + 1
    assert monitor.should_stop and rule.stopped_step == rows.rows[-1][0]


def test_monitor_state_carries_the_rule_through_a_resume():
    X, y = _digits()
    values = []

    def run(epochs, state=None, start=0):
        rows, rule = _Rows(), NeuralPersistenceStopping(patience=3)
        monitor = Monitor(model, sink=rows, families=[NeuralPersistenceFamily(Every(n_epochs=1))],
                          stopping=rule, max_overhead=None, verbose=False, strict=True)
        if state is not None:
            monitor.load_state_dict(state)
        ran = _loop(model, monitor, X, y, epochs, start=start)
        values.extend(m[NP_KEY] for _, m in rows.rows if NP_KEY in m)
        out = monitor.state_dict()
        monitor.close()
        return ran, rule, out

    model = _model()
    _, rule1, state = run(2)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    ran, rule2, _ = run(40, torch.load(buf, weights_only=True), start=2)
    expected = _algorithm2(values, 3, 0.0)
    assert not rule1.should_stop and rule2.should_stop
    assert ran[-1] == expected and len(values) == expected + 1


def test_monitor_stopping_errors():
    model = _model()
    fam = NeuralPersistenceFamily(Every(n_epochs=1))
    with pytest.raises(ValueError, match="stopping must be a NeuralPersistenceStopping"):
        Monitor(model, families=[fam], stopping=[object()], verbose=False)
    with pytest.raises(ValueError, match="stopping needs the neural_persistence family running"):
        Monitor(model, families=[SharpnessFamily(Every(n_steps=1))], probe=torch.zeros(4, 64),
                loss_fn=lambda m, b: m(b).sum(), stopping=NeuralPersistenceStopping(), verbose=False)
    two = Monitor(model, families=[fam], stopping=[NeuralPersistenceStopping(), NeuralPersistenceStopping()],
                  verbose=False)
    state = two.state_dict()
    two.close()
    one = Monitor(model, families=[NeuralPersistenceFamily(Every(n_epochs=1))],
                  stopping=NeuralPersistenceStopping(), verbose=False)
    with pytest.raises(ValueError, match=r"the checkpoint holds 2 stopping rule\(s\), this monitor has 1"):
        one.load_state_dict(state)
    one.close()
    assert not Monitor(model, families=[NeuralPersistenceFamily(Every(n_epochs=1))],
                       verbose=False).should_stop
