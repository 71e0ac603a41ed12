"""Monitor, the engine, with test families on a scripted clock: what runs when (against the
cost rule re-implemented in tests/monitor/cost_rule_reference.py), what the sink receives,
errors, drops, a training thread that never waits, checkpoints and every ``raise``.

No wall time is read: the families advance a scripted clock by a known cost; waits on the
background thread use generous timeouts only as a guard against a hang."""
from __future__ import annotations

import io
import math
import os
import random
import sys
import threading
import time
import warnings

import pytest
import torch
from torch import nn

from geomonitor.monitor import Every, Family, Measurement, Monitor, MonitorWarning, metric_key
from geomonitor.monitor.engine import default_forward
from geomonitor.monitor.families import IntrinsicDimensionFamily, TopologyFamily

sys.path.insert(0, os.path.dirname(__file__))
from cost_rule_reference import ReferenceRule  # noqa: E402

HANG = 60.0  # seconds; only ever reached if something hangs


class Clock:
    """A scripted clock: reading it never moves it."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Sync(Family):
    """Measured on the training thread; its run advances ``clock`` by ``cost`` seconds."""

    needs_probe = False

    def __init__(self, name: str, every: int | Every, clock: Clock | None = None, cost: float = 0.0,
                 *, fail: bool = False, item_errors: int = 0, needs_probe: bool = False,
                 needs_loss: bool = False, needs_activations: bool = False) -> None:
        super().__init__(every if isinstance(every, Every) else Every(n_steps=every))
        self.name, self.clock, self.cost = name, clock, cost
        self.fail, self.item_errors = fail, item_errors
        self.needs_probe, self.needs_loss, self.needs_activations = needs_probe, needs_loss, needs_activations
        self.steps: list[int] = []
        self.runs = 0       # checkpointed
        self.batches: list = []

    def run(self, ctx):
        self.steps.append(ctx.step)
        self.runs += 1
        self.batches.append(ctx.probe_batch)
        if self.clock is not None:
            self.clock.t += self.cost
        if self.fail:
            raise RuntimeError(f"{self.name} broke at step {ctx.step}")
        return Measurement(metrics={metric_key("id", self.name): float(ctx.step)},
                           errors=[ValueError(f"item {i}") for i in range(self.item_errors)])

    def state_dict(self):
        return {"runs": self.runs}

    def load_state_dict(self, state):
        self.runs = int(state["runs"])


class Background(Family):
    """Returns a job; the job waits for its gate (set by the test), then spends
    ``background_cost`` seconds of the scripted ``cpu`` clock."""

    needs_probe = False

    def __init__(self, name: str, every: int, clock: Clock | None = None, cost: float = 0.0, *,
                 cpu: Clock | None = None, background_cost: float = 0.0,
                 gate: threading.Event | None = None, fail: bool = False) -> None:
        super().__init__(Every(n_steps=every))
        self.name, self.clock, self.cost = name, clock, cost
        self.cpu, self.background_cost = cpu, background_cost
        self.shared_gate, self.fail = gate, fail
        self.steps: list[int] = []
        self.gates: list[threading.Event] = []
        self.finished: list[int] = []

    def run(self, ctx):
        self.steps.append(ctx.step)
        if self.clock is not None:
            self.clock.t += self.cost
        gate = self.shared_gate or threading.Event()
        self.gates.append(gate)
        step, cpu, spend, fail = ctx.step, self.cpu, self.background_cost, self.fail

        def job() -> Measurement:
            if not gate.wait(HANG):
                raise TimeoutError("gate never opened")
            if cpu is not None:
                cpu.t += spend
            self.finished.append(step)
            if fail:
                raise RuntimeError(f"{self.name} job broke at step {step}")
            return Measurement(metrics={metric_key("ph", self.name, "h1_n_bars"): float(step)},
                               diagrams={metric_key("ph", self.name, "diagram"): [torch.zeros(1, 2).numpy()]})

        return job


class Recorder:
    """A sink that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []
        self.diagrams: list[tuple[str, int]] = []
        self.profiles: list[tuple[str, list, list, int]] = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, dict(metrics)))

    def log_diagram(self, key, diagrams, step):
        self.diagrams.append((key, step))

    def log_profile(self, key, names, values, step):
        self.profiles.append((key, list(names), list(values), step))

    def values(self, key: str) -> list[tuple[int, float]]:
        return [(s, m[key]) for s, m in self.calls if key in m]


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _wait_idle(monitor: Monitor) -> None:
    deadline = time.monotonic() + HANG
    while monitor._worker.pending:
        if time.monotonic() > deadline:
            raise AssertionError("background job did not finish")
        time.sleep(0.001)


# -- skips exactly where the rule says, counted and delivered ---------------------------

def _simulate(schedules: dict[str, tuple[int, float, float]], fraction: float, n_steps: int,
              dt: float) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """The rule, step by step: ``dt`` seconds of training before each step; a family is due
    at a multiple of its asked period once the period in force has passed since its last
    run; the due families are asked in order, each seeing what the ones before it spent; a
    point the guard skips is asked again at the next asked step (one skip counted); a
    background job is collected at the next step, after that step's decisions; the periods
    are planned again after every step at which something ran.
    ``schedules``: name -> (every, thread cost, background cost or 0 for a sync family)."""
    ref, t = ReferenceRule(fraction), 0.0
    runs: dict[str, list[int]] = {f: [] for f in schedules}
    skips: dict[str, list[int]] = {f: [] for f in schedules}
    asked = {f: every for f, (every, _, _) in schedules.items()}
    period = dict(asked)
    waiting: set[str] = set()
    in_flight: list[tuple[str, float]] = []
    for s in range(1, n_steps + 1):
        t += dt
        if s == 1:
            ref.start(t)
        ran = False
        submitted = []
        for f, (every, cost, background) in schedules.items():
            if s % every or (runs[f] and s - runs[f][-1] < period[f]):
                continue
            if not ref.allows(f, t):
                if f not in waiting:
                    skips[f].append(s)
                waiting.add(f)
                continue
            waiting.discard(f)
            ran = True
            runs[f].append(s)
            ref.charge(f, cost)
            t += cost
            if background:
                submitted.append((f, background))
        for f, background in in_flight:
            ref.charge_background(f, background)
        in_flight = submitted
        if ran:
            period = ref.plan(asked, t, s - 1)
    return runs, skips


def _run_engine(schedules, fraction, n_steps, dt):
    clock, cpu = Clock(), Clock()
    families: list[Family] = []
    for name, (every, cost, background) in schedules.items():
        if background:
            families.append(Background(name, every, clock, cost, cpu=cpu, background_cost=background))
        else:
            families.append(Sync(name, every, clock, cost))
    rec = Recorder()
    mon = Monitor(_model(), sink=rec, families=families, max_overhead=fraction, clock=clock,
                  cpu_clock=cpu)
    for s in range(1, n_steps + 1):
        clock.t += dt
        mon.step(s)
        for fam in families:  # let this step's job finish; it is collected at the next step
            if isinstance(fam, Background) and fam.gates and not fam.gates[-1].is_set():
                fam.gates[-1].set()
                _wait_idle(mon)
    mon.close()
    return mon, families, rec


def _check_against_the_rule(schedules, fraction, n_steps, dt):
    runs, skips = _simulate(schedules, fraction, n_steps, dt)
    mon, families, rec = _run_engine(schedules, fraction, n_steps, dt)
    for fam in families:
        assert fam.steps == runs[fam.name], fam.name
        key = metric_key("skipped", fam.name)
        assert rec.values(key) == [(s, float(k)) for k, s in enumerate(skips[fam.name], 1)], fam.name
        assert mon.skipped.get(fam.name, 0) == len(skips[fam.name])
    return runs, skips, mon, rec


def test_skips_happen_exactly_where_the_rule_says_and_are_delivered():
    # a: sync, every 7, 3 s; b: background, every 11, 1 s on the thread + 4 s off it. The
    # two are never due at the same step within 76 steps.
    schedules = {"a": (7, 3.0, 0.0), "b": (11, 1.0, 4.0)}
    runs, skips, mon, rec = _check_against_the_rule(schedules, 0.5, 76, 1.0)
    assert len(runs["a"]) >= 3 and len(runs["b"]) >= 2 and skips["a"] + skips["b"]
    assert mon.periods.stretch["a"] > 1 or mon.periods.stretch["b"] > 1  # the plan stretched
    assert rec.values(metric_key("period", "a")) or rec.values(metric_key("period", "b"))
    # the background values arrive with the step they describe
    assert rec.values(metric_key("ph", "b", "h1_n_bars")) == [(s, float(s)) for s in runs["b"]]
    assert rec.diagrams == [(metric_key("ph", "b", "diagram"), s) for s in runs["b"]]
    # what the engine charged is what the families spent
    assert mon.cap.spent == 3.0 * len(runs["a"]) + 5.0 * len(runs["b"])


@pytest.mark.parametrize("seed", range(8))
def test_random_schedules_and_costs_skip_where_the_rule_says(seed):
    rng = random.Random(seed)
    a, b = rng.sample([3, 4, 5, 7, 11, 13], 2)
    n_steps = min(a * b // math.gcd(a, b) - 1, 120)  # never both due: see the next test
    schedules = {"a": (a, float(rng.randint(1, 5)), float(rng.choice([0, 0, 2, 6]))),
                 "b": (b, float(rng.randint(1, 5)), float(rng.choice([0, 3])))}
    _check_against_the_rule(schedules, rng.choice([0.25, 0.5]), n_steps, float(rng.randint(1, 2)))


def test_the_hand_computed_schedule():
    # every 20 steps, 10 s each, 1 s of training per step, share 0.25; the clock starts at the
    # first step, so at step s training is s - 1 s. Step 20 runs (first): 10 s = 10 steps of
    # 1 s, and 10 / T <= 0.25 needs T = 40: due again at 60. The guard, spent + 10 <=
    # (s - 1) / 4: 20 <= 14.75 (60) no: one skip, asked again at 80 (19.75, no, not counted
    # again) and 100 (24.75) yes; then 140 (30 <= 34.75) and 180 (40 <= 44.75).
    runs, skips, mon, rec = _check_against_the_rule({"a": (20, 10.0, 0.0)}, 0.25, 200, 1.0)
    assert runs["a"] == [20, 100, 140, 180]
    assert skips["a"] == [60]
    assert rec.values(metric_key("period", "a")) == [(20, 40.0)]
    assert mon.periods.in_force("a") == 40


def test_families_due_at_the_same_step_are_asked_in_turn():
    # a and b every 10 steps, 4 s each, 1 s steps, share 0.4: both run at step 10 (first);
    # 8 steps of cost per round need T = 20: due at 30. At 30 (spent 8, training 29 s) a runs
    # (12 <= 11.6? no: both skip, asked again at 40). At 40 (training 39 s) a runs
    # (12 <= 15.6), and b, asked after a has spent its 4 s, is skipped (16 > 15.6): "spent so
    # far" includes a's measurement at this step; b waits for the next asked step.
    schedules = {"a": (10, 4.0, 0.0), "b": (10, 4.0, 0.0)}
    runs, skips, mon, _ = _check_against_the_rule(schedules, 0.4, 100, 1.0)
    assert runs["a"] == [10, 40, 60, 80, 100] and runs["b"] == [10, 50, 70, 90]
    assert skips["a"] == [30] and skips["b"] == [30]


# -- the first measurement of every family always runs ----------------------------------

def test_the_first_measurement_of_every_family_runs_on_an_exhausted_budget():
    # big costs 1000 steps: at 1% it needs a period of 100,000 steps, and every family that has
    # a cost is stretched as far. The plan is made after a step at which something ran and a
    # step was timed: at step 10 (big is skipped once at step 2 by the guard, then waits); the
    # late families still run once, when first due.
    clock = Clock()
    big = Sync("big", 1, clock, cost=1000.0)
    late = [Sync("c", 10, clock, cost=1.0), Sync("d", 25, clock, cost=1.0),
            Background("e", 30, clock, cost=1.0, gate=threading.Event())]
    late[2].shared_gate.set()
    rec = Recorder()
    mon = Monitor(_model(), sink=rec, families=[big, *late], max_overhead=0.01, clock=clock,
                  cpu_clock=Clock())
    for s in range(1, 61):
        clock.t += 1.0
        mon.step(s)
    mon.close()
    assert big.steps == [1]
    assert [f.steps for f in late] == [[10], [25], [30]]
    assert mon.skipped == {"big": 1}
    assert rec.values(metric_key("period", "big"))[0] == (10, 100100.0)  # (1000 + 1) steps / 0.01
    assert all(p >= 100000 for f in ("big", "c", "d") for _, p in rec.values(metric_key("period", f)))
    assert [s for s, _ in rec.values(metric_key("period", "d"))] == [25, 30]
    assert rec.values(metric_key("ph", "e", "h1_n_bars")) == [(30, 30.0)]
    assert mon.summary()["families"]["big"]["points"] == 1


# -- no schedule drift -------------------------------------------------------------------

def test_measured_steps_never_leave_the_schedule():
    clock = Clock()
    fams = [Sync("a", 20, clock, cost=3.0), Sync("b", 20, clock, cost=2.0),
            Sync("c", 50, clock, cost=2.0)]
    mon = Monitor(_model(), families=fams, max_overhead=0.125, clock=clock)
    for s in range(1, 601):
        clock.t += 1.0
        mon.step(s)
        if s % 3 == 0:
            mon.step(s, epoch_end=True)  # an epoch end in between never moves a step schedule
    mon.close()
    for fam, every in zip(fams, (20, 20, 50)):
        due = set(range(every, 601, every))
        assert set(fam.steps) <= due and len(fam.steps) == len(set(fam.steps))
        in_force = set(range(mon.periods.in_force(fam.name), 601, mon.periods.in_force(fam.name)))
        assert in_force <= due and mon.periods.in_force(fam.name) >= every  # on schedule
        assert len(fam.steps) >= 2
    assert 61 not in fams[0].steps and 162 not in fams[0].steps
    assert mon.periods.in_force("a") > 20 and mon.periods.in_force("b") > 20  # stretched


# -- geometry/errors once per step ------------------------------------------------------

def test_errors_are_delivered_once_per_step_with_the_running_total():
    fams = [Sync("a", 2, fail=True), Sync("b", 3, fail=True), Sync("c", 6, item_errors=2),
            Sync("ok", 1)]
    rec = Recorder()
    mon = Monitor(_model(), sink=rec, families=fams, max_overhead=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(1, 25):
            mon.step(s)
    mon.close()
    steps = [s for s, _ in rec.calls]
    assert steps == sorted(set(steps)) == list(range(1, 25))  # one delivery per step
    total, want = 0, []
    for s in range(1, 25):
        new = (s % 2 == 0) + (s % 3 == 0) + 2 * (s % 6 == 0)
        total += new
        if new:
            want.append((s, float(total)))
    assert rec.values(metric_key("errors")) == want
    assert mon.errors == {"a": 12, "b": 8, "c": 8}
    msgs = [str(w.message) for w in caught if issubclass(w.category, MonitorWarning)]
    assert len(msgs) == 3  # one warning per failing family
    assert any("a measurement failed at step 2: RuntimeError('a broke at step 2')" in m for m in msgs)
    assert any("c measurement failed at step 6: ValueError('item 0')" in m for m in msgs)
    # the items that did not fail are still delivered
    assert rec.values(metric_key("id", "c")) == [(s, float(s)) for s in (6, 12, 18, 24)]


def test_a_failing_background_job_is_counted_at_the_step_it_describes():
    gate = threading.Event()
    gate.set()
    fam = Background("bg", 4, gate=gate, fail=True)
    rec = Recorder()
    mon = Monitor(_model(), sink=rec, families=[fam], max_overhead=None)
    with pytest.warns(MonitorWarning, match=r"bg measurement failed at step 4: RuntimeError"):
        for s in range(1, 9):
            mon.step(s)
            _wait_idle(mon)
        mon.close()
    assert mon.errors == {"bg": 2}
    assert rec.values(metric_key("errors")) == [(4, 1.0), (8, 2.0)]


def test_strict_reraises_a_measurement_error():
    mon = Monitor(_model(), families=[Sync("a", 2, fail=True)], strict=True, max_overhead=None)
    mon.step(1)
    with pytest.raises(RuntimeError, match="a broke at step 2"):
        mon.step(2)
    mon.close()


# -- sinks never take each other down ---------------------------------------------------

class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def log_metrics(self, *args):
        self.calls += 1
        raise OSError("Not a directory")

    log_diagram = log_profile = log_metrics


class ProfiledSync(Sync):
    def run(self, ctx):
        out = super().run(ctx)
        out.profiles[metric_key("id_profile")] = (["fc1", "fc2"], [1.0, float(ctx.step)])
        out.diagrams[metric_key("ph", "fc1", "diagram")] = [torch.ones(2, 2).numpy()]
        return out


def test_a_failing_sink_is_warned_once_and_the_others_get_every_value():
    broken, good1, good2 = Broken(), Recorder(), Recorder()
    seen: list[tuple[int, dict]] = []
    fams = [ProfiledSync("a", 2), Sync("f", 5, fail=True)]
    mon = Monitor(_model(), sink=[broken, good1, lambda m, s: seen.append((s, m)), good2],
                  families=fams, max_overhead=None)
    returned = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(1, 11):
            returned.append((s, mon.step(s)))
        mon.close()
    sink_warnings = [w for w in caught if "failed in" in str(w.message)]
    assert len(sink_warnings) == 1
    assert "sink 0 (Broken) failed in log_diagram: OSError('Not a directory'); the other sinks " \
        "still get every value" == str(sink_warnings[0].message)  # a diagram came first
    assert broken.calls > 5  # it kept being called (and failing)
    want = [(s, m) for s, m in returned if m]
    assert good1.calls == good2.calls == seen == want
    assert good1.profiles == good2.profiles == [
        (metric_key("id_profile"), ["fc1", "fc2"], [1.0, float(s)], s) for s in (2, 4, 6, 8, 10)]
    assert good1.diagrams == good2.diagrams == [(metric_key("ph", "fc1", "diagram"), s) for s in (2, 4, 6, 8, 10)]
    assert "sink" not in mon.errors and mon.errors == {"f": 2}


def test_a_single_failing_sink_is_counted_and_warned_once():
    broken = Broken()
    mon = Monitor(_model(), sink=broken, families=[Sync("a", 1)], max_overhead=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(1, 6):
            assert mon.step(s) == {metric_key("id", "a"): float(s)}  # still returned
    msgs = [str(w.message) for w in caught if issubclass(w.category, MonitorWarning)]
    assert msgs == ["Monitor: the sink failed in log_metrics: OSError('Not a directory'); "
                    "training continues"]
    assert mon.errors == {"sink": 5}
    mon.close()


def test_strict_reraises_a_sink_error():
    mon = Monitor(_model(), sink=Broken(), families=[Sync("a", 1)], strict=True, max_overhead=None)
    with pytest.raises(OSError, match="Not a directory"):
        mon.step(1)
    mon.close()


# -- dropped background jobs ------------------------------------------------------------

@pytest.mark.parametrize("max_pending", [1, 3])
def test_jobs_beyond_max_pending_are_dropped_and_counted(max_pending):
    gate = threading.Event()
    fam = Background("bg", 1, gate=gate)
    rec = Recorder()
    mon = Monitor(_model(), sink=rec, families=[fam], max_overhead=None, max_pending=max_pending)
    with pytest.warns(MonitorWarning, match=rf"bg measurement at step {max_pending + 1} dropped: "
                      rf"{max_pending} still pending") as caught:
        for s in range(1, 9):
            mon.step(s)
    assert sum("dropped" in str(w.message) for w in caught) == 1
    dropped = list(range(max_pending + 1, 9))
    assert rec.values(metric_key("dropped", "bg")) == [(s, float(k)) for k, s in enumerate(dropped, 1)]
    assert mon.dropped == {"bg": len(dropped)}
    gate.set()
    mon.close()
    kept = list(range(1, max_pending + 1))
    assert fam.finished == kept
    assert rec.values(metric_key("ph", "bg", "h1_n_bars")) == [(s, float(s)) for s in kept]


# -- the training thread never waits on a background job --------------------------------

def _steps_in_a_thread(mon: Monitor, steps: range) -> list[int]:
    returned: list[int] = []

    def loop() -> None:
        for s in steps:
            mon.step(s)
            returned.append(s)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    t.join(HANG)  # only a guard: a blocked step would hang here
    assert not t.is_alive(), f"the training loop is blocked after step {returned[-1:] or 'none'}"
    return returned


def test_a_pending_job_never_blocks_the_training_thread():
    gate = threading.Event()
    slow = Background("slow", 1, gate=gate)
    slow.schedule = Every(n_epochs=1)  # submitted at the end of epoch 0 only
    sync = Sync("s", 1)
    rec = Recorder()
    mon = Monitor(_model(), sink=rec, families=[slow, sync], max_overhead=None)
    mon.step(1)
    mon.step(1, epoch_end=True)
    assert slow.steps == [1] and mon._worker.pending == 1
    returned = _steps_in_a_thread(mon, range(2, 102))
    assert returned == list(range(2, 102))     # 100 further steps, each one returned
    assert sync.steps == list(range(1, 102))
    assert mon._worker.pending == 1 and slow.finished == []  # the job is still waiting
    assert rec.values(metric_key("ph", "slow", "h1_n_bars")) == []
    gate.set()
    delivered = mon.close()
    assert delivered == {metric_key("ph", "slow", "h1_n_bars"): 1.0}
    assert rec.values(metric_key("ph", "slow", "h1_n_bars")) == [(1, 1.0)]  # the step it describes
    assert rec.diagrams == [(metric_key("ph", "slow", "diagram"), 1)]


@pytest.mark.filterwarnings("ignore:Monitor. topology measurement at step:RuntimeWarning")
def test_a_pending_topology_job_never_blocks_the_training_thread():
    # the real TopologyFamily, its giotto-ph step replaced by a solver that waits for a gate
    from geomonitor.topology.ripser_process import ripser_in_process

    gate = threading.Event()
    calls: list[int] = []

    def slow_solver(D, maxdim):
        calls.append(len(D))
        if not gate.wait(HANG):
            raise TimeoutError("gate never opened")
        return ripser_in_process(D, maxdim)

    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 4, generator=g)
    topo = TopologyFamily(Every(n_steps=5), maxdim=1, n_landmarks=None, solver=slow_solver)
    rec = Recorder()
    mon = Monitor(_model(), probe=X, sink=rec, families=[topo], max_overhead=None, max_pending=4,
                  probe_size=None, layers=["0", "2"])
    returned = _steps_in_a_thread(mon, range(1, 101))
    assert returned == list(range(1, 101))
    assert mon._worker.pending == 4       # the jobs of steps 5, 10, 15, 20: one waiting, 3 queued
    assert mon.dropped == {"topology": 16}  # steps 25 ... 100
    assert not any("h1_n_bars" in k for _, m in rec.calls for k in m)
    gate.set()
    mon.close()
    got = rec.values(metric_key("ph", "0", "h1_n_bars"))
    assert [s for s, _ in got] == [5, 10, 15, 20]


# -- checkpoints -------------------------------------------------------------------------

def _probe_data(offset: float = 0.0):
    g = torch.Generator().manual_seed(3)
    return torch.randn(40, 4, generator=g) + offset, torch.arange(40) % 3


def _resumable(clock: Clock, probe, sink=None, **kw):
    fams = [Sync("a", 5, clock, cost=2.0, needs_probe=True), Sync("b", 3, clock, cost=1.0, fail=True),
            Sync("c", 4, clock, cost=0.5)]
    mon = Monitor(_model(), probe=probe, sink=sink, families=fams, max_overhead=0.25, clock=clock,
                  probe_size=kw.pop("probe_size", 16), **kw)
    return mon, fams


def _train(mon: Monitor, clock: Clock, steps: range) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonitorWarning)  # b's failures
        for s in steps:
            clock.t += 1.0
            mon.step(s)


def _checkpoint(mon: Monitor) -> dict:
    buf = io.BytesIO()
    torch.save(mon.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_a_resumed_monitor_continues_counters_schedule_costs_and_probe_set():
    clock_whole = Clock()
    whole, whole_fams = _resumable(clock_whole, _probe_data())
    _train(whole, clock_whole, range(1, 61))

    clock_a = Clock()
    first, _ = _resumable(clock_a, _probe_data())
    _train(first, clock_a, range(1, 31))
    state = _checkpoint(first)
    first.close()

    clock_b = Clock(5000.0)                       # a new process: its clock reads anything
    rec = Recorder()
    resumed, fams = _resumable(clock_b, _probe_data(offset=100.0), sink=rec)  # other data
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonitorWarning)  # same arguments: nothing to warn about
        resumed.load_state_dict(state)
    assert resumed.cap.training_time() == first.cap.training_time()
    _train(resumed, clock_b, range(31, 61))

    for mine, ref in zip(fams, whole_fams):
        assert mine.steps == [s for s in ref.steps if s > 30], mine.name
        assert mine.runs == ref.runs                     # the family's own state
    assert resumed.skipped == whole.skipped and resumed.errors == whole.errors
    assert resumed._last == whole._last
    assert resumed.measured == whole.measured
    assert resumed.periods.state_dict() == whole.periods.state_dict()
    # counters go on from the checkpoint's values
    b_after = [s for s in whole_fams[1].steps if s > 30][0]
    assert rec.values(metric_key("errors"))[0] == (b_after, float(sum(first.errors.values()) + 1))
    # the probe set is the checkpoint's (drawn from the first data), not a new draw
    x, y = _probe_data()
    idx = state["probe"]["indices"]
    assert torch.equal(resumed.probe.batch[0], x[idx]) and torch.equal(resumed.probe.batch[1], y[idx])
    assert all(torch.equal(b[0], x[idx]) for b in fams[0].batches)
    for mon in (whole, resumed):
        mon.close()


def test_a_changed_probe_size_warns_and_draws_a_new_probe_set():
    clock = Clock()
    first, first_fams = _resumable(clock, _probe_data())
    _train(first, clock, range(1, 11))
    state = _checkpoint(first)
    first.close()
    resumed, fams = _resumable(Clock(), _probe_data(offset=100.0), probe_size=24)
    with pytest.warns(MonitorWarning, match=r"Monitor resumed with probe_size=24 \(checkpoint: 16\): "
                      r"the arguments apply; a new probe set is drawn"):
        resumed.load_state_dict(state)
    assert resumed.periods.stretch == first.periods.stretch != {"a": 1, "b": 1, "c": 1}  # restored
    _train(resumed, Clock(), range(11, 16))
    x, _ = resumed.probe.batch
    assert x.shape == (24, 4) and bool((x > 50).all())  # drawn now, from this monitor's data
    assert len(set(resumed.probe.indices.tolist())) == 24
    assert sum(resumed.measured.values()) >= sum(first.measured.values()) > 0
    assert fams[0].runs == len(first_fams[0].steps) + len(fams[0].steps)   # family state restored
    resumed.close()


def test_a_changed_layer_selection_warns_but_keeps_the_probe_set():
    first = Monitor(_model(), probe=_probe_data(), families=[Sync("a", 1, needs_probe=True)],
                    layers=["0"], probe_size=16, max_overhead=None)
    first.step(1)
    state = first.state_dict()
    first.close()
    resumed = Monitor(_model(), probe=_probe_data(offset=100.0), families=[Sync("a", 1, needs_probe=True)],
                      layers=["0", "2"], probe_size=16, max_overhead=None)
    with pytest.warns(MonitorWarning, match=r"Monitor resumed with layers=\['0', '2'\] \(checkpoint: "
                      r"\['0'\]\): the arguments apply$"):
        resumed.load_state_dict(state)
    resumed.step(2)
    assert bool((resumed.probe.batch[0] < 50).all())  # the checkpoint's probe set
    resumed.close()


def test_a_step_asked_twice_is_one_occurrence():
    # a step that is also an epoch end, or a step repeated after a resume, is asked again:
    # what ran is not run again, and what was skipped is not counted again
    def run(fam, max_overhead):
        clock, rec = Clock(), Recorder()
        fam.clock = clock
        mon = Monitor(_model(), sink=rec, families=[fam], max_overhead=max_overhead, clock=clock)
        for s in range(1, 31):
            clock.t += 1.0
            mon.step(s)
            if s % 10 == 0:
                mon.step(s, epoch_end=True)
        mon.step(30)
        mon.close()
        return mon, rec

    ran = Sync("ran", Every(n_steps=10, n_epochs=1), cost=1.0)
    run(ran, None)
    assert ran.steps == [10, 20, 30]
    # 5 s at step 10 (9 s of training): period 10 is affordable at 0.5, the guard is not at
    # 20 (10 > 9.5, asked again at the epoch end: one skip), and is at 30 (10 <= 14.5)
    capped = Sync("capped", Every(n_steps=10, n_epochs=1), cost=5.0)
    mon, rec = run(capped, 0.5)
    assert capped.steps == [10, 30]
    assert mon.skipped == {"capped": 1}
    assert rec.values(metric_key("skipped", "capped")) == [(20, 1.0)]


@pytest.mark.parametrize("state, got", [({"version": 1}, "1"), ({}, "None"), ([1, 2], "'list'")])
def test_a_state_of_another_version_raises(state, got):
    mon = Monitor(_model(), families=[Sync("a", 1)], max_overhead=None)
    with pytest.raises(ValueError, match=rf"state_dict version must be 2, got {got}"):
        mon.load_state_dict(state)


# -- every raise -------------------------------------------------------------------------

def test_a_model_that_is_not_a_module_raises():
    with pytest.raises(ValueError, match=r"model must be a torch.nn.Module, got int"):
        Monitor(3)


@pytest.mark.parametrize("families", [[], [object()], [Sync("a", 1), "id"]])
def test_bad_families_raise(families):
    with pytest.raises(ValueError, match=r"families must be a non-empty list of Family objects, got "):
        Monitor(_model(), families=families)


def test_family_options_with_explicit_families_raise():
    with pytest.raises(ValueError, match=r"family options \['id_every_n_steps', 'np_every_n_epochs'\] "
                       r"apply to the default families only; configure the families you pass instead"):
        Monitor(_model(), families=[Sync("a", 1)], id_every_n_steps=5, np_every_n_epochs=None, max_overhead=None)


def test_an_unknown_family_option_raises():
    with pytest.raises(ValueError, match=r"unknown family options \['id_every_n_step'\]; known: "):
        Monitor(_model(), id_every_n_step=5)


@pytest.mark.parametrize("name", ["forward_fn", "loss_fn", "cpu_clock", "broadcast"])
def test_non_callable_functions_raise(name):
    with pytest.raises(ValueError, match=rf"{name} must be callable or None, got 'x'"):
        Monitor(_model(), families=[Sync("a", 1)], **{name: "x"})


def test_bad_strict_clock_share_pending_and_sink_raise():
    with pytest.raises(ValueError, match=r"strict must be True or False, got 1"):
        Monitor(_model(), families=[Sync("a", 1)], strict=1)
    with pytest.raises(ValueError, match=r"clock must be a callable returning seconds, got 5"):
        Monitor(_model(), families=[Sync("a", 1)], clock=5)
    with pytest.raises(ValueError, match=r"max_overhead must be a float in \(0, 1\] or None, got 2"):
        Monitor(_model(), families=[Sync("a", 1)], max_overhead=2)
    with pytest.raises(ValueError, match=r"max_pending must be a positive int, got 0"):
        Monitor(_model(), families=[Sync("a", 1)], max_pending=0)
    with pytest.raises(TypeError, match=r"sink must be None, a callable sink\(metrics, step\), an "
                       r"object with log_metrics\(metrics, step\), or a list of those; got int"):
        Monitor(_model(), families=[Sync("a", 1)], sink=7, max_overhead=None)


def test_step_after_close_raises_and_close_is_idempotent():
    mon = Monitor(_model(), families=[Sync("a", 1)], max_overhead=None)
    mon.step(1)
    mon.close()
    assert mon.close() == {}
    with pytest.raises(RuntimeError, match=r"Monitor.step after close\(\)"):
        mon.step(2)


@pytest.mark.parametrize("probe, name", [("abc", "str"), (lambda: 5, "int"), ({"x": 1}, "dict")])
def test_a_probe_of_a_bad_type_disables_the_probe_families_or_raises_when_strict(probe, name):
    message = (r"probe must be a DataLoader, a tensor, a tuple of tensors, a ProbeSet or a "
               rf"callable returning one; got {name}")
    fam, other = Sync("a", 1, needs_probe=True), Sync("b", 1)
    mon = Monitor(_model(), probe=probe, families=[fam, other], max_overhead=None)
    with pytest.warns(MonitorWarning, match=r"Monitor: a is disabled: no probe set could be "
                      r"drawn: " + message):
        mon.step(1)
    mon.step(2)
    mon.close()
    assert fam.steps == [] and other.steps == [1, 2] and mon.probe is None
    strict = Monitor(_model(), probe=probe, families=[Sync("a", 1, needs_probe=True)],
                     max_overhead=None, strict=True)
    with pytest.raises(TypeError, match=message):
        strict.step(1)
    strict.close()


def test_a_probe_given_as_a_callable_or_a_dataloader_is_used():
    x, y = _probe_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    for probe in (lambda: (x, y), loader):
        fam = Sync("a", 1, needs_probe=True)
        mon = Monitor(_model(), probe=probe, families=[fam], probe_size=12, max_overhead=None)
        mon.step(1)
        bx, by = fam.batches[0]
        idx = mon.probe.indices
        assert len(idx) == 12 and torch.equal(bx, x[idx]) and torch.equal(by, y[idx])
        mon.close()


def test_default_forward_raises_on_batches_it_cannot_call_the_model_with():
    model = _model()
    with pytest.raises(TypeError, match=r"cannot infer the model input from a batch of type int; "
                       r"pass forward_fn=lambda model, batch: model\(...\)"):
        default_forward(model, 3)
    with pytest.raises(TypeError, match=r"the probe batch is a dict with keys \['a', 'b'\]: pass "
                       r"forward_fn="):
        default_forward(model, {"a": torch.zeros(2, 4), "b": torch.zeros(2)})
    x = torch.randn(5, 4)
    ref = model(x)
    assert torch.equal(default_forward(model, x), ref)
    assert torch.equal(default_forward(model, (x, torch.zeros(5))), ref)
    assert torch.equal(default_forward(model, [x]), ref)


def test_a_layer_pattern_matching_nothing_raises_even_when_not_strict():
    with pytest.raises(ValueError, match=r"layers: pattern 'fc9' matches no module of Sequential; "
                       r"available: \[0, 1, 2\]"):
        Monitor(_model(), probe=_probe_data(), layers=["fc9"],
                families=[IntrinsicDimensionFamily(Every(n_steps=1))], max_overhead=None)


def test_a_family_needing_a_probe_without_one_is_disabled():
    fam, other = Sync("a", 1, needs_probe=True), Sync("b", 1)
    with pytest.warns(MonitorWarning, match=r"Monitor: a is disabled: it needs probe data: pass "
                      r"probe=\(inputs, targets\) or a DataLoader"):
        mon = Monitor(_model(), families=[fam, other], max_overhead=None)
    for s in range(1, 4):
        mon.step(s)
    assert fam.steps == [] and other.steps == [1, 2, 3] and mon.probe is None
    with pytest.raises(ValueError, match=r"Monitor: a cannot run: it needs probe data"):
        Monitor(_model(), families=[Sync("a", 1, needs_probe=True)], strict=True)


# -- a family needing the loss without loss_fn -------------------------------------------

def test_a_family_needing_the_loss_without_loss_fn_is_disabled_with_one_warning():
    fam, other = Sync("lossy", 1, needs_loss=True), Sync("b", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = Monitor(_model(), families=[fam, other], max_overhead=None)
        for s in range(1, 6):
            mon.step(s)
        mon.close()
    msgs = [str(w.message) for w in caught if issubclass(w.category, MonitorWarning)]
    assert msgs == ["Monitor: lossy is disabled: it needs the training loss: pass "
                    "loss_fn=callable(model, batch)"]
    assert fam.enabled is False and fam.steps == [] and other.steps == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"Monitor: lossy cannot run: it needs the training loss"):
        Monitor(_model(), families=[Sync("lossy", 1, needs_loss=True)], strict=True)


def test_the_default_sharpness_family_without_loss_fn_is_disabled():
    with pytest.warns(MonitorWarning, match=r"sharpness is disabled: it needs the training loss"):
        mon = Monitor(_model(), probe=_probe_data(), topology_every_n_steps=None, max_overhead=None)
    assert [(f.name, f.enabled) for f in mon.families] == [
        ("id", True), ("sharpness", False), ("neural_persistence", True), ("symmetry", True)]
    mon.close()


# -- layers="auto" on a model without Linear/Conv ----------------------------------------

class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.rnn = nn.LSTM(6, 5, batch_first=True)

    def forward(self, tokens):
        out, _ = self.rnn(self.emb(tokens))
        return out[:, -1]


def test_auto_layers_on_a_model_without_linear_or_conv_disables_the_activation_families():
    tokens = torch.randint(0, 10, (30, 7), generator=torch.Generator().manual_seed(0))
    fams = [IntrinsicDimensionFamily(Every(n_steps=1)), TopologyFamily(Every(n_steps=1), maxdim=0),
            Sync("weights", 1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = Monitor(_Recurrent(), probe=tokens, families=fams, max_overhead=None)
        for s in range(1, 4):
            mon.step(s)
        mon.close()
    msgs = [str(w.message) for w in caught if issubclass(w.category, MonitorWarning)]
    assert len(msgs) == 2
    for name, msg in zip(("id", "topology"), msgs):
        assert msg.startswith(f"Monitor: {name} is disabled: no layer to capture: layers: 'auto' "
                              "(repeated blocks, head, or leaf Linear/Conv modules) matches no module of _Recurrent")
    assert [f.enabled for f in fams] == [False, False, True]
    assert fams[2].steps == [1, 2, 3] and mon.modules == {}
    with pytest.raises(ValueError, match=r"layers: 'auto' \(repeated blocks, head, or leaf Linear/Conv modules\) matches no "
                       r"module of _Recurrent; available: \[emb, rnn\]"):
        Monitor(_Recurrent(), probe=tokens, strict=True,
                families=[IntrinsicDimensionFamily(Every(n_steps=1)), Sync("weights", 1)], max_overhead=None)
