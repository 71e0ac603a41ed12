"""Monitor.close: nothing waits on starved work. Families are prioritized before the wait, the
wait is bounded by one measurement's cost, and what is still pending then is cancelled,
counted in ``dropped`` and delivered as ``geometry/dropped/<family>``.

No wall time is read: jobs are held on events that only the monitor's own calls release
(``prioritize``, ``close``), the bound is read from the worker's arguments, and timeouts are
generous guards against a hang only."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from torch import nn

from geomonitor.monitor import Every, Family, Measurement, Monitor, metric_key
from geomonitor.monitor.families import TopologyFamily

HANG = 60.0  # seconds; only ever reached if something hangs


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Held(Family):
    """Each job waits for ``release`` (set by this family's ``prioritize`` when
    ``prioritize_releases``, and always by ``close``: the interrupt), then returns a value.
    ``log`` records the calls in order."""

    needs_probe = False

    def __init__(self, name: str = "bg", *, prioritize_releases: bool = False) -> None:
        super().__init__(Every(n_steps=1))
        self.name = name
        self.prioritize_releases = prioritize_releases
        self.release, self.started = threading.Event(), threading.Event()
        self.log: list[str] = []

    def run(self, ctx):
        step, release, started, log = ctx.step, self.release, self.started, self.log

        def job() -> Measurement:
            started.set()
            if not release.wait(HANG):
                raise TimeoutError("never released")
            log.append(f"job {step} returned")
            return Measurement(metrics={metric_key("ph", self.name, "h1_n_bars"): float(step)})

        return job

    def prioritize(self) -> None:
        self.log.append("prioritize")
        if self.prioritize_releases:
            self.release.set()

    def close(self) -> None:
        self.log.append("close")
        self.release.set()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, dict(metrics)))

    def values(self, key: str) -> list[tuple[int, float]]:
        return [(s, m[key]) for s, m in self.calls if key in m]


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _monitor(families, rec, **kw) -> Monitor:
    return Monitor(_model(), sink=rec, families=families, max_overhead=None, clock=Clock(),
                   cpu_clock=Clock(), **kw)


def test_close_prioritizes_the_families_before_it_waits():
    # the job runs only once prioritized (a child at nice 19 on a busy machine): close must
    # ask first, then wait, and deliver the result; a long bound so that only the order counts
    fam = Held(prioritize_releases=True)
    rec = Recorder()
    mon = _monitor([fam], rec)
    mon.close_wait_floor = HANG
    mon.step(1)
    assert fam.started.wait(HANG)
    delivered = mon.close()
    assert fam.log == ["prioritize", "job 1 returned", "close"]
    assert delivered == {metric_key("ph", "bg", "h1_n_bars"): 1.0} and mon.dropped == {}
    assert rec.values(metric_key("dropped", "bg")) == []


def test_jobs_pending_past_the_bound_are_cancelled_counted_and_delivered():
    # nothing releases the jobs but the interrupt (close), so with a zero bound they are
    # cancelled however fast the machine: the running one (step 1) and the queued ones
    fam, other = Held("bg"), Held("other")
    rec = Recorder()
    mon = _monitor([fam, other], rec, max_pending=4)
    mon.close_wait_floor = 0.0
    mon.step(1)
    mon.step(2)
    delivered = mon.close()
    assert fam.log[0] == "prioritize" and "close" in fam.log
    assert mon.dropped == {"bg": 2, "other": 2}
    assert rec.values(metric_key("dropped", "bg")) == [(1, 1.0), (2, 2.0)]
    assert rec.values(metric_key("dropped", "other")) == [(1, 1.0), (2, 2.0)]
    assert delivered == {metric_key("dropped", "bg"): 2.0, metric_key("dropped", "other"): 2.0}
    assert not any("h1_n_bars" in k for _, m in rec.calls for k in m)
    assert mon.state_dict()["dropped"] == {"bg": 2, "other": 2}  # kept across a resume


def test_close_without_waiting_cancels_and_counts_without_prioritizing():
    fam = Held()
    rec = Recorder()
    mon = _monitor([fam], rec)
    mon.step(1)
    mon.step(2)
    assert mon.close(wait=False) == {}
    assert "prioritize" not in fam.log and "close" in fam.log
    assert mon.dropped == {"bg": 2} and rec.calls == []  # counted, nothing delivered


@pytest.mark.parametrize("costs, floor, bound", [
    ({}, 10.0, 10.0),                              # nothing measured yet: the floor
    ({"a": 3.0, "b": 7.5}, 2.0, 7.5),              # the largest measured cost
    ({"a": 0.25}, 4.0, 4.0),                       # cheap measurements: still the floor
])
def test_the_wait_is_one_measurements_cost_at_least_the_floor(costs, floor, bound):
    mon = _monitor([Held()], Recorder())
    mon.close_wait_floor = floor
    mon.cap.cost.update(costs)
    seen = []
    close = mon._worker.close
    mon._worker.close = lambda **kw: (seen.append(kw), close(**kw))[1]
    mon.close()
    assert seen == [{"wait": True, "timeout": bound}]


def test_the_default_floor_is_documented():
    assert Monitor.close_wait_floor == 10.0
    assert "close_wait_floor" in Monitor.close.__doc__


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no process priorities")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_topology_child_leaves_nice_19_before_close_waits():
    if os.getpriority(os.PRIO_PROCESS, 0) >= 19:
        pytest.skip("this process already runs at nice 19")
    X = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    topo = TopologyFamily(Every(n_steps=1), maxdim=1, n_landmarks=None)
    mon = Monitor(_model(), probe=X, families=[topo], max_overhead=None, probe_size=None,
                  layers=["0"])
    mon.step(1)  # submits the job that launches the child
    ripser = topo._ripser
    ripser.start()  # launched here, or by the job already
    for _ in range(int(HANG * 100)):  # hang guard only
        if ripser.pid is not None:
            break
        time.sleep(0.01)
    pid = ripser.pid
    assert pid is not None and ripser.low_priority
    niced = os.getpriority(os.PRIO_PROCESS, pid)
    seen = []
    close = mon._worker.close

    def spy(**kw):  # what the child runs at while the training thread waits on it
        seen.append(None if ripser.low_priority else os.getpriority(os.PRIO_PROCESS, pid))
        return close(**kw)

    mon._worker.close = spy
    mon.close()
    assert niced == 19
    if seen == [None]:
        pytest.skip("lowering a nice value is not permitted here")
    assert seen == [os.getpriority(os.PRIO_PROCESS, 0)]
    assert ripser.pid is None  # and the child is gone


def test_a_job_pending_at_the_save_is_counted_as_dropped_after_the_resume():
    # the checkpoint is written while the step-1 job is still running (a SIGKILL then loses it):
    # the resumed monitor cannot measure step 1 again, so it counts it, at step 1
    fam = Held("bg")
    mon = _monitor([fam], Recorder())
    mon.step(1)
    assert fam.started.wait(HANG)
    state = mon.state_dict()
    assert state["pending"] == [[1, "bg"]] and state["last"] == {"bg": 1}
    fam.release.set()
    mon.close()
    assert mon.state_dict()["pending"] == []  # finished and drained: nothing pending

    again, rec = Held("bg"), Recorder()
    again.release.set()
    resumed = _monitor([again], rec)
    resumed.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert resumed.dropped == {"bg": 1} and resumed.state_dict()["pending"] == []
    resumed.step(2)
    resumed.close()
    assert rec.values(metric_key("dropped", "bg")) == [(1, 1.0)]
    assert rec.values(metric_key("ph", "bg", "h1_n_bars")) == [(2, 2.0)]


def _saved(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


class _Now(Family):
    """An on-thread measurement at every step."""

    needs_probe = False
    name = "now"

    def __init__(self) -> None:
        super().__init__(Every(n_steps=1))

    def run(self, ctx):
        return Measurement(metrics={metric_key("id", "now"): float(ctx.step)})


def test_a_background_result_reaches_the_sink_after_later_steps_with_its_own_step():
    # the documented order: each call carries the step its values describe, ascending within
    # a call; the held step-1 job is released only after step 2 was delivered
    held, rec = Held("bg"), Recorder()
    mon = _monitor([held, _Now()], rec, max_pending=1)  # one job in flight: step 2's is dropped
    mon.step(1)
    mon.step(2)
    held.release.set()
    worker = mon._worker
    with worker._cond:
        assert worker._cond.wait_for(lambda: worker.pending == 0, HANG)
    mon.step(3)
    mon.close()
    bg, now = metric_key("ph", "bg", "h1_n_bars"), metric_key("id", "now")
    # (step 3's own job may finish before step 3's delivery or at close: left out)
    order = [(s, k) for s, m in rec.calls for k in sorted(m)
             if k == now or (k == bg and s < 3)]
    assert order == [(1, now), (2, now), (1, bg), (3, now)]
