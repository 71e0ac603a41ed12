"""RipserProcess: giotto-ph in a child process gives giotto-ph's diagrams; closing, restarts,
errors and the in-process fallback."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from gph import ripser_parallel

from geomonitor.topology import persistence_diagrams
from geomonitor.topology.ripser_process import RipserProcess, ripser_in_process


def _distances(n: int, d: int, seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(n, d))
    return np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def ripser():
    r = RipserProcess()
    yield r
    r.close()


@pytest.mark.parametrize("n, maxdim", [(60, 1), (30, 2)])
def test_child_returns_giotto_ph_diagrams_exactly(ripser, n, maxdim):
    D = _distances(n, 5)
    ours = ripser(D, maxdim)
    ref = ripser_parallel(D, metric="precomputed", maxdim=maxdim)["dgms"]
    assert len(ours) == maxdim + 1
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, np.asarray(b, dtype=np.float64))
    assert ripser.pid is not None
    assert ripser.cpu_time > 0.0 and ripser.startup_cpu > 0.0  # as the child reported them
    assert ripser.launches == 1


def test_persistence_diagrams_through_the_child_equal_the_default(ripser):
    X = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(maxdim=1, n_landmarks=80)
    a = persistence_diagrams(X, generator=torch.Generator().manual_seed(0), ripser=ripser, **kw)
    b = persistence_diagrams(X, generator=torch.Generator().manual_seed(0), **kw)
    assert a.hausdorff_radius == b.hausdorff_radius
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_close_during_a_call_returns_at_once_and_reaps_the_child(ripser):
    D = _distances(400, 8)  # maxdim 2 on 400 points: seconds of work
    ripser(D[:5, :5], 1)  # the child is up
    pid, errors = ripser.pid, []

    def call():
        try:
            ripser(D, 2)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)  # usually in the child's computation by now; if not, it finds it closed
    ripser.close()
    t.join(60)  # a hang guard only: the call fails instead of finishing its work
    assert not t.is_alive()
    assert len(errors) == 1 and ("ended during a computation" in str(errors[0])
                                 or "RipserProcess is closed" in str(errors[0]))
    assert _gone(pid) and ripser.pid is None and ripser.closed


def test_a_closed_instance_raises_until_start_reopens_it(ripser):
    D = _distances(20, 3)
    ripser.close()
    ripser.close()  # idempotent
    with pytest.raises(RuntimeError, match=r"RipserProcess is closed \(start\(\) reopens it\)"):
        ripser(D, 1)
    ripser.start()
    assert not ripser.closed and len(ripser(D, 1)) == 2


def test_a_child_that_died_is_restarted(ripser):
    D = _distances(40, 3)
    first = ripser(D, 1)
    pid = ripser.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 5
    while ripser.pid is not None and time.time() < deadline:
        time.sleep(0.01)
    again = ripser(D, 1)
    assert ripser.pid not in (None, pid) and ripser.launches == 2
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_giotto_ph_errors_come_back_with_their_message(ripser):
    with pytest.raises(RuntimeError, match=r"giotto-ph failed in the child process: ValueError: "
                                           r"The matrix argument must be square"):
        ripser(np.zeros((3, 4)), 1)
    assert len(ripser(_distances(10, 2), 1)) == 2  # the child survives a failed request


def test_without_a_child_it_computes_in_process_and_warns_once(monkeypatch, ripser):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    D = _distances(40, 3)
    with pytest.warns(RuntimeWarning, match=r"cannot start a child process .* giotto-ph runs in this process"):
        ours = ripser(D, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = ripser(D, 1)
    assert caught == []  # warned once only
    for a, b, c in zip(ours, again, ripser_in_process(D, 1)):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    assert ripser.pid is None


def test_bad_ripser_argument_is_rejected():
    with pytest.raises(ValueError, match=r"ripser must be a callable or None, got int"):
        persistence_diagrams(torch.randn(10, 2), maxdim=1, ripser=3)


def test_start_never_waits_for_a_call_in_flight(ripser):
    """The training thread may call start() while the background thread waits on the child:
    start() must return while that call still holds the child (an ordering, not a time)."""
    D = _distances(400, 8)  # maxdim 2 on 400 points: seconds of work in the child
    ripser(D[:5, :5], 1)
    def call():
        try:  # ended by close() below, or finished first on a fast machine: either is fine
            ripser(D, 2)
        except RuntimeError:
            pass

    t = threading.Thread(target=call)
    t.start()
    for _ in range(6000):  # hang guard: the call takes the lock almost at once
        if ripser._lock.locked():
            break
        time.sleep(0.01)
    assert ripser._lock.locked()
    ripser.start()
    assert ripser._lock.locked() and t.is_alive()  # start() returned during the call
    ripser.close()
    t.join(60)
    assert not t.is_alive()


# -- the child's import path ----------------------------------------------------------------

def test_the_child_never_imports_from_the_working_directory(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "gph.py").write_text(f"open({str(marker)!r}, 'w').write('yes')\n"
                                     "print('the working directory gph.py ran')\n"
                                     "raise ImportError('the working directory gph.py')\n")
    monkeypatch.chdir(tmp_path)
    # the working directory on this process's path too, by name and as "" (python -c, REPL)
    monkeypatch.setattr(sys, "path", ["", str(tmp_path), *sys.path])
    D = _distances(30, 3)
    with RipserProcess() as ripser:
        ours = ripser(D, 1)
    for a, b in zip(ours, ripser_in_process(D, 1)):
        np.testing.assert_array_equal(a, b)
    assert not marker.exists()


def test_a_child_that_exits_at_once_is_reported_with_its_exit_status(monkeypatch, ripser):
    from geomonitor.topology import ripser_process

    monkeypatch.setattr(ripser_process, "_CHILD", "import sys; sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"the giotto-ph child process ended during a "
                                           r"computation \(exit status 3\)"):
        ripser(_distances(10, 2), 1)


# -- priority: nice 19 only while nobody waits ----------------------------------------------

HANG = 120.0  # seconds; only ever reached if something hangs


def _nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


needs_priorities = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no process priorities")


@needs_priorities
def test_a_direct_callers_child_runs_at_this_process_priority(ripser):
    ripser(_distances(10, 2), 1)
    assert not ripser.low_priority and _nice(ripser.pid) == _nice(0)


@needs_priorities
def test_prioritize_brings_a_low_priority_child_back_while_a_call_waits_on_it():
    # no thread of this test waits on the niced child before prioritize(): on a busy machine
    # it would get next to no CPU (the very starvation prioritize() ends)
    if _nice(0) >= 19:
        pytest.skip("this process already runs at nice 19")
    ripser = RipserProcess(low_priority=True)
    try:
        ripser.start()  # launched and niced by the parent, without waiting for the child
        pid = ripser.pid
        assert ripser.low_priority and _nice(pid) == 19
        D, out = _distances(30, 3), []
        t = threading.Thread(target=lambda: out.append(ripser(D, 1)))
        t.start()  # waits on the niced child's start-up and its computation
        for _ in range(6000):  # hang guard: the call takes the lock almost at once
            if ripser._lock.locked() or out:
                break
            time.sleep(0.01)
        if not ripser.prioritize():  # never waits for the call in flight
            ripser.close()
            pytest.skip("lowering a nice value is not permitted here")
        assert _nice(pid) == _nice(0) and not ripser.low_priority
        assert ripser.prioritize()  # idempotent
        t.join(HANG)  # the call now runs at this process's priority
        assert not t.is_alive() and ripser.pid == pid and ripser.launches == 1
        for a, b in zip(out[0], ripser_in_process(D, 1)):
            np.testing.assert_array_equal(a, b)
    finally:
        ripser.close()


@needs_priorities
def test_a_child_launched_after_prioritize_starts_at_this_process_priority():
    with RipserProcess(low_priority=True) as ripser:
        assert ripser.prioritize() and not ripser.low_priority  # no child yet: nothing refused
        ripser(_distances(10, 2), 1)
        assert _nice(ripser.pid) == _nice(0)


@needs_priorities
def test_prioritize_reports_a_refusal_and_the_child_stays_niced(monkeypatch):
    if _nice(0) >= 19:
        pytest.skip("this process already runs at nice 19")
    real = os.setpriority

    def unprivileged(which, who, prio):  # lowering a nice value needs privilege
        if prio < os.getpriority(which, who):
            raise PermissionError(1, "Operation not permitted")
        real(which, who, prio)

    monkeypatch.setattr(os, "setpriority", unprivileged)
    with RipserProcess(low_priority=True) as ripser:
        ripser.start()  # no call: a niced child may get no CPU on a busy machine
        assert ripser.prioritize() is False
        assert ripser.low_priority and _nice(ripser.pid) == 19


def test_a_low_priority_that_is_not_a_bool_raises():
    with pytest.raises(ValueError, match=r"low_priority must be True or False, got 1"):
        RipserProcess(low_priority=1)


def test_a_child_launched_while_close_runs_is_stopped(monkeypatch, ripser):
    # close() from another thread between the launch and its bookkeeping: no child survives
    from geomonitor.topology import ripser_process

    launched = []
    real = ripser_process.subprocess.Popen

    def popen_then_close(*args, **kwargs):
        proc = real(*args, **kwargs)
        launched.append(proc)
        ripser.close()  # sees no child yet
        return proc

    monkeypatch.setattr(ripser_process.subprocess, "Popen", popen_then_close)
    with pytest.raises(RuntimeError, match=r"RipserProcess is closed \(start\(\) reopens it\)"):
        ripser(_distances(10, 2), 1)
    assert len(launched) == 1 and launched[0].returncode is not None and ripser.pid is None
