"""A sink that hangs never stalls training: the sink is held on a threading.Event that only the
test releases, the training loop runs in its own thread and must finish while the sink is
still held. Counts and orderings only: the sink timeout is short, and ``HANG`` is a guard
against a hang, never reached when the code is right."""
from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

from geomonitor.monitor import Every, Family, Measurement, Monitor, metric_key
from geomonitor.monitor.delivery import SinkCaller

HANG = 60.0
KEY = metric_key("ph", "bg", "h1_n_bars")


class _Norm(Family):
    name = "weight_norm"
    needs_probe = False

    def __init__(self) -> None:
        super().__init__(Every(n_steps=1))

    def run(self, ctx):
        return Measurement(metrics={KEY: float(ctx.step)})


class _HeldSink:
    """``log_metrics`` blocks on ``gate`` from its ``hold_from``-th call on."""

    def __init__(self, hold_from: int = 1) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()
        self.hold_from, self.n = hold_from, 0
        self.steps: list[int] = []
        self.threads: set[str] = set()

    def log_metrics(self, metrics, step):
        self.n += 1
        self.threads.add(threading.current_thread().name)
        if self.n >= self.hold_from:
            self.entered.set()
            if not self.gate.wait(HANG):
                raise TimeoutError("never released")
        self.steps.append(step)


def _sink_threads(mon):
    t = mon._sinks._thread
    return [t] if t is not None and t.is_alive() else []


def _train(mon, steps):
    done = threading.Event()

    def loop():
        for s in steps:
            mon.step(s)
        done.set()

    threading.Thread(target=loop, daemon=True).start()
    return done


def _monitor(sink):
    mon = Monitor(nn.Linear(3, 2), sink=sink, families=[_Norm()], max_overhead=None, verbose=False)
    mon.sink_timeout = 0.05
    return mon


def test_training_goes_on_while_the_sink_hangs_and_the_values_follow_in_order():
    sink = _HeldSink(hold_from=1)
    mon = _monitor(sink)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            done = _train(mon, range(1, 7))
            assert done.wait(HANG), "training stalled on the sink"
        assert sink.entered.is_set() and sink.steps == []  # step 1's call is still held
        # one wait (step 1's), then the calls queue behind it without waiting
        assert mon._sinks.timeouts == 1 and mon._sinks.dropped == 0 and "sink" not in mon.errors
        assert [str(w.message) for w in seen if "did not return" in str(w.message)][:1]
        assert mon.latest[KEY] == 6.0  # the values are still the monitor's
    finally:
        sink.gate.set()
    mon.sink_timeout = HANG  # released: close lets the queue drain
    mon.close()
    assert sink.steps == [1, 2, 3, 4, 5, 6]  # every value, in step order, after the release
    assert sink.threads == {"geomonitor-sink"}
    assert _sink_threads(mon) == []


def test_a_full_queue_drops_and_counts_and_close_does_not_wait_on_a_hung_sink():
    sink = _HeldSink(hold_from=1)
    mon = _monitor(sink)
    mon._sinks.max_queued = 2
    try:
        done = _train(mon, range(1, 6))
        assert done.wait(HANG), "training stalled on the sink"
        # step 1 hung; 2 and 3 queued behind it; 4 and 5 dropped and counted as sink errors
        assert mon._sinks.timeouts == 1 and mon._sinks.dropped == 2 and mon.errors == {"sink": 2}
        with pytest.warns(RuntimeWarning, match="has not returned from a call"):
            mon.close()  # bounded by sink_timeout: the held call is left to its thread
        assert mon._sinks.dropped == 4 + 1  # 2 and 3 left in the queue, and flush
    finally:
        sink.gate.set()
    held = mon._sinks._thread
    held.join(HANG)  # the released call returns, and its thread ends
    assert not held.is_alive() and _sink_threads(mon) == [] and sink.steps == [1]


def test_a_sink_that_raises_after_a_timeout_is_counted():
    class _Late(_HeldSink):
        def log_metrics(self, metrics, step):
            super().log_metrics(metrics, step)
            if step == 2:
                raise OSError("disk full")

    sink = _Late(hold_from=2)
    mon = _monitor(sink)
    try:
        assert _train(mon, [1, 2]).wait(HANG)
    finally:
        sink.gate.set()
    mon.sink_timeout = HANG
    with pytest.warns(Warning, match="disk full"):
        mon.close()
    assert mon.errors == {"sink": 1} and sink.steps == [1, 2]


def test_strict_reraises_what_the_sink_raises_in_time():
    def bad(metrics, step):
        raise ValueError("bad sink")

    mon = Monitor(nn.Linear(3, 2), sink=bad, families=[_Norm()], max_overhead=None, strict=True,
                  verbose=False)
    with pytest.raises(ValueError, match="bad sink"):
        mon.step(1)
    mon.close(wait=False)


def test_an_idle_thread_ends_and_the_next_call_starts_one():
    seen = []
    caller = SinkCaller(type("S", (), {"log_metrics": lambda self, m, s: seen.append(s)})(), 1.0)
    caller.idle_exit = 0.0  # ends as soon as the queue is empty
    assert caller.call("log_metrics", {}, 1) is None
    first = caller._thread
    if first is not None:
        first.join(HANG)
    assert caller.call("log_metrics", {}, 2) is None and seen == [1, 2]
    caller.close()
    assert caller._thread is None or not caller._thread.is_alive()


@pytest.mark.parametrize("kw, msg", [
    (dict(timeout=0), r"timeout must be a positive number of seconds, got 0"),
    (dict(timeout=True), r"timeout must be a positive number of seconds, got True"),
    (dict(max_queued=0), r"max_queued must be a positive int"),
])
def test_sink_caller_rejects_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SinkCaller(object(), **kw)


class _ThreadBound:
    """A sink with per-thread state (as MLflow's active run): it asks for the caller's thread."""

    caller_thread = True

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.steps: list[int] = []

    def log_metrics(self, metrics, step):
        self.threads.append(threading.current_thread().name)
        self.steps.append(step)


@pytest.mark.parametrize("wrap", ["bare", "list"])
def test_a_sink_bound_to_its_thread_is_called_on_the_training_thread(wrap):
    from geomonitor.monitor.delivery import on_caller_thread
    from geomonitor.monitor.sink import as_sink

    sink = _ThreadBound()
    given = sink if wrap == "bare" else [_HeldSink(hold_from=10**9), sink]
    assert on_caller_thread(as_sink(given)) and not on_caller_thread(as_sink(_HeldSink()))
    mon = Monitor(nn.Linear(2, 2), sink=given, families=[_Norm()], max_overhead=None, verbose=False)
    for s in (1, 2, 3):
        mon.step(s)
    mon.close()
    main = threading.current_thread().name
    assert sink.steps == [1, 2, 3] and set(sink.threads) == {main}
    assert mon._sinks._thread is None  # no sink thread was started
