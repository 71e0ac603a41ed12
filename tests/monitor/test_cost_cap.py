"""CostCap against the rule of its docstring, re-implemented by brute force
(tests/monitor/cost_rule_reference.py), on scripted clocks only: no wall time is read.

Times and costs are whole seconds and the shares powers of two, so every sum is exact and
``<=`` ties are decided the same way by both implementations."""
from __future__ import annotations

import copy
import io
import os
import random
import sys

import pytest
import torch

from geomonitor.monitor.cost import CostCap

sys.path.insert(0, os.path.dirname(__file__))
from cost_rule_reference import ReferenceRule  # noqa: E402

FAMILIES = ("id", "sharpness", "topology", "neural_collapse")
BACKGROUND = ("topology", "neural_collapse")  # families whose every measurement submits a job


class Clock:
    """A scripted wall clock: reads never move it, the script does."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _script(rng: random.Random, n_ops: int, *, jobs_done_before_next_ask: bool) -> list[tuple]:
    """A random run: training time passing, due occurrences asked (and run when allowed,
    the clock advancing by their thread cost), background jobs finishing later.

    With ``jobs_done_before_next_ask`` a family's background job finishes before that family
    is asked again (the usual case); without, jobs may still be in flight then."""
    ops: list[tuple] = []
    in_flight: dict[str, int] = {f: 0 for f in FAMILIES}
    for _ in range(n_ops):
        kind = rng.choice(["train", "train", "ask", "ask", "finish"])
        if kind == "train":
            ops.append(("train", rng.randint(0, 6)))
        elif kind == "ask":
            f = rng.choice(FAMILIES)
            if jobs_done_before_next_ask:
                ops.extend(("finish", f, rng.randint(0, 5)) for _ in range(in_flight[f]))
                in_flight[f] = 0
            background = f in BACKGROUND
            ops.append(("ask", f, rng.randint(0, 3), background))
            in_flight[f] += background  # only a run submits a job; resolved when replayed
        else:
            f = rng.choice(FAMILIES)
            ops.append(("finish", f, rng.randint(0, 5)))
    return ops


def _replay(ops: list[tuple], fraction: float | None, start_at: float):
    """Run ``ops`` against CostCap and the reference in lockstep; return both decision lists."""
    clock = Clock(start_at)
    cap, ref = CostCap(fraction, clock=clock), ReferenceRule(fraction)
    cap.start()
    ref.start(clock.t)
    got, want = [], []
    jobs: dict[str, int] = {f: 0 for f in FAMILIES}
    for op in ops:
        if op[0] == "train":
            clock.t += op[1]
        elif op[0] == "ask":
            _, f, thread, background = op
            a, b = cap.allows(f), ref.allows(f, clock.t)
            got.append((f, a))
            want.append((f, b))
            if b:  # the reference decides what happens next, so both see the same events
                clock.t += thread
                cap.charge(f, thread)
                ref.charge(f, thread)
                jobs[f] += background
        elif jobs[op[1]] > 0:  # a job finishes only if one was submitted
            jobs[op[1]] -= 1
            cap.charge_background(op[1], op[2])
            ref.charge_background(op[1], op[2])
        assert cap.training_time() == ref.training(clock.t)
        assert cap.spent == ref.spent()
    return got, want


@pytest.mark.parametrize("seed", range(40))
def test_decisions_match_the_rule_when_jobs_finish_before_the_next_ask(seed):
    rng = random.Random(seed)
    fraction = rng.choice([0.125, 0.25, 0.5, 1.0])
    ops = _script(rng, 120, jobs_done_before_next_ask=True)
    got, want = _replay(ops, fraction, start_at=rng.randint(0, 1000))
    assert got == want


def test_the_scripts_exercise_both_outcomes():
    skips = runs = 0
    for seed in range(40):
        rng = random.Random(seed)
        fraction = rng.choice([0.125, 0.25, 0.5, 1.0])
        _, want = _replay(_script(rng, 120, jobs_done_before_next_ask=True), fraction, 0.0)
        skips += sum(not a for _, a in want)
        runs += sum(a for _, a in want)
    assert skips > 300 and runs > 300


@pytest.mark.parametrize("seed", range(40))
def test_decisions_match_the_rule_with_jobs_still_in_flight(seed):
    # A family asked again while its previous job still runs: its cost is the thread part
    # of its last measurement plus the background part of its last *finished* job.
    rng = random.Random(1000 + seed)
    fraction = rng.choice([0.125, 0.25, 0.5, 1.0])
    ops = _script(rng, 120, jobs_done_before_next_ask=False)
    got, want = _replay(ops, fraction, start_at=rng.randint(0, 1000))
    assert got == want


def test_the_docstring_example():
    t = [0.0]
    cap = CostCap(0.05, clock=lambda: t[0])
    cap.start()
    assert cap.allows("id")
    cap.charge("id", 1.0)
    t[0] = 11.0
    assert cap.training_time() == 10.0
    assert not cap.allows("id")  # 1 + 1 > 0.05 * 10
    t[0] = 41.0
    assert cap.allows("id")      # 1 + 1 <= 0.05 * 40


def test_the_first_measurement_of_every_family_runs_whatever_was_spent():
    clock = Clock()
    cap = CostCap(0.125, clock=clock)
    cap.start()
    cap.charge("sharpness", 1000.0)        # far over any budget
    clock.t += 1000.0 + 1.0                # one second of training
    assert not cap.allows("sharpness")
    for f in ("id", "topology", "neural_persistence"):
        assert cap.allows(f)               # never measured: runs
        cap.charge(f, 5.0)
        clock.t += 5.0
        assert not cap.allows(f)           # measured once: now capped
    assert cap.spent == 1015.0 and cap.training_time() == 1.0


def test_a_background_charge_alone_does_not_count_as_a_first_measurement():
    # the first-measurement rule is about the training-thread charge of a measurement
    clock = Clock()
    cap = CostCap(0.125, clock=clock)
    cap.start()
    cap.charge("id", 8.0)
    clock.t += 8.0 + 1.0
    assert not cap.allows("id")
    cap.charge("topology", 0.0)
    cap.charge_background("topology", 50.0)
    assert cap.cost["topology"] == 50.0
    assert not cap.allows("topology")


def test_no_cap_allows_every_occurrence():
    clock = Clock()
    cap = CostCap(None, clock=clock)
    cap.start()
    for i in range(50):
        assert cap.allows("id")
        cap.charge("id", 100.0)
        cap.charge_background("id", 100.0)
        clock.t += 100.0
    assert cap.spent == 50 * 200.0
    assert cap.training_time() == 0.0 and cap.overhead() == 0.0  # no training time: 0, not inf


def test_overhead_is_spent_over_training_time():
    clock = Clock(7.0)
    cap = CostCap(0.5, clock=clock)
    assert cap.overhead() == 0.0 and cap.training_time() == 0.0  # not started
    cap.start()
    clock.t += 12.0
    cap.charge("id", 2.0)
    clock.t += 2.0
    cap.charge_background("id", 1.0)
    assert cap.training_time() == 12.0
    assert cap.overhead() == 3.0 / 12.0


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, True, "0.1", float("nan")])
def test_bad_max_overhead_raises(bad):
    with pytest.raises(ValueError, match=r"max_overhead must be a float in \(0, 1\] or None, got "):
        CostCap(bad)


def test_bad_clock_raises():
    with pytest.raises(ValueError, match=r"clock must be a callable returning seconds, got 3.0"):
        CostCap(0.05, clock=3.0)


def test_default_clock_and_integer_share_are_accepted():
    cap = CostCap(1)
    assert cap.fraction == 1.0 and callable(cap.clock)


def _play(cap: CostCap, clock: Clock, ops: list[tuple], rule: ReferenceRule,
          jobs: dict[str, int]) -> list[bool]:
    """Feed ``ops`` to ``cap``, the reference deciding what runs; ``cap``'s answers."""
    out = []
    for op in ops:
        if op[0] == "train":
            clock.t += op[1]
        elif op[0] == "ask":
            _, f, thread, background = op
            out.append(cap.allows(f))
            if rule.allows(f, clock.t):
                clock.t += thread
                cap.charge(f, thread)
                rule.charge(f, thread)
                jobs[f] += background
        elif jobs[op[1]] > 0:
            jobs[op[1]] -= 1
            cap.charge_background(op[1], op[2])
            rule.charge_background(op[1], op[2])
    return out


def test_state_dict_round_trip_carries_training_time_costs_and_decisions():
    rng = random.Random(7)
    ops = _script(rng, 200, jobs_done_before_next_ask=True)
    before, after = ops[:100], ops[100:]

    # one cap over the whole script, against a cap checkpointed in the middle and resumed
    # in a new process whose clock reads something else entirely
    clock = Clock(50.0)
    whole = CostCap(0.25, clock=clock)
    whole.start()
    ref = ReferenceRule(0.25)
    ref.start(clock.t)
    jobs = {f: 0 for f in FAMILIES}
    _play(whole, clock, before, ref, jobs)
    _play(whole, clock, [("finish", f, 1) for f in FAMILIES for _ in range(jobs[f])], ref, jobs)

    buf = io.BytesIO()
    torch.save(whole.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["training"] == ref.training(clock.t)
    assert state["spent"] == ref.spent()
    assert state["cost"] == {f: ref.cost(f) for f in FAMILIES if ref.cost(f) is not None}

    ref_whole, jobs_whole = copy.deepcopy(ref), dict(jobs)
    clock2 = Clock(-12345.0)
    resumed = CostCap(0.25, clock=clock2)
    resumed.load_state_dict(state)
    assert resumed.training_time() == state["training"]  # carried over before the restart
    clock2.t += 999.0                                      # not started: the clock is not read
    assert resumed.training_time() == state["training"]
    resumed.start()
    assert resumed.spent == whole.spent and resumed.cost == whole.cost
    ref.resume(clock.t)
    ref.start(clock2.t)

    got = _play(resumed, clock2, after, ref, jobs)
    want = _play(whole, clock, after, ref_whole, jobs_whole)
    assert got == want
    assert False in got and True in got
    assert resumed.training_time() == whole.training_time() == ref.training(clock2.t)
    assert resumed.spent == whole.spent == ref.spent()


def test_a_resumed_family_is_not_a_first_measurement():
    clock = Clock()
    cap = CostCap(0.125, clock=clock)
    cap.start()
    cap.charge("sharpness", 10.0)
    clock.t += 10.0 + 8.0
    state = cap.state_dict()
    resumed = CostCap(0.125, clock=Clock(3.0))
    resumed.load_state_dict(state)
    resumed.start()
    assert resumed.training_time() == 8.0
    assert not resumed.allows("sharpness")  # 10 + 10 > 0.125 * 8
    assert resumed.allows("id")             # never measured in either life


def test_a_family_asked_while_its_job_runs_costs_its_last_finished_job():
    # topology: 1 s on the training thread, 20 s in the background. Its second job is still
    # running when the third occurrence is due: the cost used is 1 + 20 (the last finished
    # job), not 1 (as if the background part had vanished).
    clock = Clock()
    cap = CostCap(0.5, clock=clock)
    cap.start()
    cap.charge("topology", 1.0)
    clock.t += 1.0
    cap.charge_background("topology", 20.0)   # first job done: cost 21
    clock.t += 100.0                          # training 100 s; spent 21
    assert cap.allows("topology")             # 21 + 21 <= 50
    cap.charge("topology", 1.0)               # second measurement; its job still runs
    clock.t += 1.0
    cap.charge("id", 15.0)
    clock.t += 15.0 + 5.0                     # training 105 s; spent 37
    assert cap.training_time() == 105.0 and cap.spent == 37.0
    assert cap.cost["topology"] == 21.0
    assert not cap.allows("topology")         # 37 + 21 > 52.5 (37 + 1 would pass)
