"""BackgroundWorker: order, captured errors, bounded queue, close semantics, thread cleanup."""
from __future__ import annotations

import threading
import time

import pytest

from geomonitor.monitor.worker import BackgroundWorker


def _workers():
    return [t for t in threading.enumerate() if t.name == "geomonitor-worker"]


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    before = set(_workers())
    yield
    assert set(_workers()) <= before


def test_results_in_submission_order_on_another_thread():
    main = threading.get_ident()
    w = BackgroundWorker(max_pending=5)
    delays = [0.08, 0.01, 0.04, 0.0, 0.02]

    def job(i, d):
        def run():
            time.sleep(d)
            return i * i, threading.get_ident()
        return run

    for i, d in enumerate(delays):
        assert w.submit(100 + i, job(i, d))
    w.close(wait=True)
    done = w.drain()
    assert [s for s, _, _ in done] == [100, 101, 102, 103, 104]
    assert [r[0] for _, r, _ in done] == [0, 1, 4, 9, 16]
    assert all(e is None and r[1] != main for _, r, e in done)
    assert w.drain() == [] and not _workers()


def test_job_errors_are_returned_never_raised_in_the_thread(monkeypatch):
    hooked = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args))
    w = BackgroundWorker()

    def bad():
        raise ValueError("broken job")

    def fatal():
        raise SystemExit(3)

    w.submit(1, bad)
    w.submit(2, fatal)
    w.submit(3, lambda: "still alive")
    w.close()
    (s1, r1, e1), (s2, r2, e2), (s3, r3, e3) = w.drain()
    assert (s1, r1, s2, r2) == (1, None, 2, None)
    assert isinstance(e1, ValueError) and str(e1) == "broken job"
    assert isinstance(e2, SystemExit)
    assert (s3, r3, e3) == (3, "still alive", None)
    assert hooked == []


def test_bounded_queue_drops_and_counts():
    gate = threading.Event()
    w = BackgroundWorker(max_pending=2)
    assert w.submit(1, gate.wait) and w.submit(2, lambda: 2)
    assert w.pending == 2
    assert w.submit(3, lambda: 3) is False and w.submit(4, lambda: 4) is False
    assert w.dropped == 2 and w.pending == 2
    gate.set()
    w.close()
    assert [s for s, _, _ in w.drain()] == [1, 2] and w.pending == 0


def test_drain_while_running_returns_only_finished_jobs():
    gate = threading.Event()
    w = BackgroundWorker()
    w.submit(1, lambda: "first")
    w.submit(2, gate.wait)
    deadline = time.monotonic() + 5
    while w.pending > 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert w.drain() == [(1, "first", None)]
    gate.set()
    w.close()
    assert w.drain() == [(2, True, None)]


def test_close_wait_false_cancels_jobs_not_started():
    gate, started = threading.Event(), threading.Event()

    def blocking():
        started.set()
        gate.wait(5)
        return "ran"

    ran = []
    w = BackgroundWorker(max_pending=4)
    w.submit(1, blocking)
    assert started.wait(5)
    for s in (2, 3, 4):
        w.submit(s, lambda s=s: ran.append(s))
    threading.Timer(0.1, gate.set).start()
    w.close(wait=False)
    assert w.drain() == [(1, "ran", None)] and ran == [] and w.cancelled == 3
    assert not _workers()


def test_close_is_idempotent_and_submit_after_close_raises():
    w = BackgroundWorker()
    w.submit(0, lambda: 0)
    w.close()
    w.close()
    w.close(wait=False)
    assert w.closed and w.drain() == [(0, 0, None)]
    with pytest.raises(RuntimeError, match=r"submit on a closed BackgroundWorker"):
        w.submit(1, lambda: 1)
    unused = BackgroundWorker()
    unused.close()  # never started a thread
    assert unused.closed


def test_close_timeout_warns_and_cancels_the_queue():
    gate = threading.Event()
    w = BackgroundWorker()
    w.submit(1, gate.wait)
    w.submit(2, lambda: 2)
    with pytest.warns(RuntimeWarning, match=r"a job still running after 0.05 s; queued jobs cancelled"):
        w.close(timeout=0.05)
    assert w.cancelled == 1
    gate.set()
    w._thread.join(5)
    assert w.drain() == [(1, True, None)]


def test_idle_worker_does_not_spin():
    w = BackgroundWorker()
    w.submit(0, lambda: None)
    time.sleep(0.05)  # let the job finish; the thread then waits
    clock = time.pthread_getcpuclockid(w._thread.ident)
    cpu = time.clock_gettime(clock)
    time.sleep(0.4)
    # the worker thread's own CPU time: a waiting thread adds ~0; a polling loop adds up to
    # 0.4 s (a busy machine only lowers what a spinning thread gets, never raises it)
    assert time.clock_gettime(clock) - cpu < 0.05
    w.close()


def test_context_manager_closes():
    with BackgroundWorker() as w:
        w.submit(5, lambda: "x")
    assert w.closed and w.drain() == [(5, "x", None)]


@pytest.mark.parametrize("call, match", [
    (lambda: BackgroundWorker(0), r"max_pending must be a positive int, got 0"),
    (lambda: BackgroundWorker(True), r"max_pending must be a positive int, got True"),
    (lambda: BackgroundWorker().submit(1.0, lambda: 0), r"step must be an int, got 1.0"),
    (lambda: BackgroundWorker().submit(1, 3), r"fn must be a zero-argument callable, got int"),
    (lambda: BackgroundWorker(interrupt=5), r"interrupt must be a callable or None, got int"),
])
def test_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_jobs_run_single_threaded_without_changing_the_callers_thread_count():
    import torch

    before = torch.get_num_threads()
    w = BackgroundWorker()
    w.submit(0, torch.get_num_threads)
    w.close()
    assert w.drain() == [(0, 1, None)]
    assert torch.get_num_threads() == before


def _blocking_job(release: threading.Event, started: threading.Event):
    def run():
        started.set()
        release.wait(10)
        return "finished"
    return run


def test_close_wait_false_interrupts_the_running_job_and_discards_its_result():
    release, started = threading.Event(), threading.Event()
    w = BackgroundWorker(interrupt=release.set)
    w.submit(1, _blocking_job(release, started))
    w.submit(2, lambda: "never started")
    assert started.wait(60)
    w.close(wait=False)
    assert release.is_set()  # interrupted rather than waited for
    assert w.drain() == [] and w.cancelled == 2 and not _workers()


def test_close_timeout_interrupts_then_joins_without_warning(recwarn):
    release, started = threading.Event(), threading.Event()
    calls = []
    w = BackgroundWorker(interrupt=lambda: (calls.append(1), release.set()))
    w.submit(1, lambda: "quick")
    w.submit(2, _blocking_job(release, started))
    assert started.wait(5)
    w.close(wait=True, timeout=0.05)
    assert calls == [1] and w.cancelled == 1
    assert [s for s, _, _ in w.drain()] == [1]  # the finished job is kept
    assert not [x for x in recwarn if issubclass(x.category, RuntimeWarning)] and not _workers()


def test_close_without_a_running_job_does_not_interrupt():
    calls = []
    w = BackgroundWorker(interrupt=lambda: calls.append(1))
    w.submit(1, lambda: 1)
    w.close(wait=True)
    assert calls == [] and w.drain() == [(1, 1, None)]


@pytest.mark.parametrize("wait", [True, False])
def test_close_returns_the_cancelled_jobs_with_their_tags_in_submission_order(wait):
    # the running job is held until the interrupt: with timeout=0 the order is all that counts
    release, started = threading.Event(), threading.Event()
    w = BackgroundWorker(interrupt=release.set)
    w.submit(1, lambda: "kept", "a")
    w.submit(2, _blocking_job(release, started), "a")
    w.submit(2, lambda: "queued", "b")
    w.submit(3, lambda: "queued", "a")
    assert started.wait(60)  # the first job finished; the second one holds the thread
    assert w.close(wait=wait, timeout=0) == [(2, "a"), (2, "b"), (3, "a")]
    assert w.close() == []  # idempotent: nothing more to cancel
    assert w.drain() == [(1, "kept", None)] and w.cancelled == 3 and not _workers()


def test_close_cancels_nothing_when_every_job_finishes():
    w = BackgroundWorker()
    w.submit(1, lambda: 1, "a")
    assert w.close(wait=True) == [] and w.drain() == [(1, 1, None)]
