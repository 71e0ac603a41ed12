"""A background worker: jobs off the training thread, results back on it.

A job that waits (on a child process computing persistence, on I/O) lets the training loop
continue while it waits, because waiting releases the GIL. A job that computes in Python, or
in an extension that keeps the GIL (giotto-ph does), takes the interpreter from the training
loop for as long as it runs: such work belongs in a child process
(:class:`~geomonitor.topology.ripser_process.RipserProcess`) or on the training thread, where
its cost is plain. The design is the bounded producer/consumer queue:

* :meth:`BackgroundWorker.submit` enqueues ``fn`` tagged with its step and returns ``True``,
  or returns ``False`` and counts a drop (``dropped``) when ``max_pending`` jobs are already
  queued or running -- the training loop never blocks on the monitor.
* One thread runs the jobs in submission order. An exception inside a job is caught (any
  ``BaseException``) and handed back; it never escapes in the worker thread.
* :meth:`BackgroundWorker.drain` (training thread) returns the finished
  ``(step, result, error)`` triples, in submission order, and forgets them.
* :meth:`BackgroundWorker.close` with ``wait=True`` finishes the pending jobs, with
  ``wait=False`` cancels the ones not yet started (counted in ``cancelled``; the running one
  finishes), then joins the thread. It returns the ``(step, tag)`` of every job it cancelled
  (``tag``: what ``submit`` was given, e.g. the family's name), so the caller can count them.
  Idempotent. ``submit`` after ``close`` raises ``RuntimeError`` (a closed worker is a
  programming error, not a full queue).

The thread starts on the first ``submit`` and waits on a condition variable (no polling).
Jobs run with one intra-op torch thread: ``torch.set_num_threads(1)`` is called *on the
worker thread*, where it is thread-local (the training thread keeps its own setting). A
second multi-threaded OpenMP team on a small machine competes with the training thread's
team: measured on 2 cores, a 128-wide matmul loop on the training thread ran 5x slower while
an idle worker thread that had run one 2-thread torch op was alive, and at full speed with
this setting.
A job that waits on something outside the interpreter (a child process) can be stopped:
``interrupt`` (a constructor argument) is called by ``close`` when a running job must end
(``wait=False``, or the ``timeout`` expired) and should make it return, e.g. by stopping that
process; the interrupted job's result is discarded (counted in ``cancelled``). If the
thread is still alive after that, the remaining queued jobs are cancelled, a
``RuntimeWarning`` says so, and the (daemon) thread ends when that job returns; it never
keeps the interpreter alive.

Memory: at most ``max_pending`` jobs, plus finished results until they are drained.

Example:
    >>> w = BackgroundWorker(max_pending=2)
    >>> w.submit(10, lambda: 1 + 1)
    True
    >>> w.close()
    []
    >>> w.drain()
    [(10, 2, None)]
"""
from __future__ import annotations

import threading
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from geomonitor._checks import positive_int

__all__ = ["BackgroundWorker"]

_GRACE = 5.0


class BackgroundWorker:
    """One daemon thread, a bounded queue; results come back to the caller's thread.

    Args:
        max_pending: most jobs queued or running at once; further ``submit`` calls drop.
        interrupt: called (from the closing thread) when ``close`` must stop a running job;
            it should make that job return (see the module docstring).

    Attributes:
        dropped: jobs refused by ``submit`` because the queue was full.
        cancelled: jobs discarded by ``close``: unstarted ones, and an interrupted one.

    Raises:
        ValueError: ``max_pending`` not a positive int, or ``interrupt`` not callable.
    """

    def __init__(self, max_pending: int = 4, *, interrupt: Callable[[], None] | None = None) -> None:
        positive_int("max_pending", max_pending)
        if interrupt is not None and not callable(interrupt):
            raise ValueError(f"interrupt must be a callable or None, got {type(interrupt).__name__}")
        self.max_pending = max_pending
        self._interrupt = interrupt
        self._interrupted = False
        self.dropped = 0
        self.cancelled = 0
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, Callable[[], Any], Any]] = deque()
        self._current: tuple[int, Any] | None = None  # (step, tag) of the running job
        self._cancelled_jobs: list[tuple[int, Any]] = []
        self._done: list[tuple[int, Any, BaseException | None]] = []
        self._running = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Jobs queued or running (finished, undrained results are not counted)."""
        with self._cond:
            return len(self._queue) + self._running

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, step: int, fn: Callable[[], Any], tag: Any = None) -> bool:
        """Queue ``fn()`` for the step ``step``; ``False`` (and ``dropped += 1``) when full.
        ``tag`` comes back with the job's step if ``close`` cancels it.

        Raises:
            ValueError: ``step`` not an int, ``fn`` not callable.
            RuntimeError: the worker is closed.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step must be an int, got {step!r}")
        if not callable(fn):
            raise ValueError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
        with self._cond:
            if self._closed:
                raise RuntimeError("submit on a closed BackgroundWorker")
            if len(self._queue) + self._running >= self.max_pending:
                self.dropped += 1
                return False
            self._queue.append((step, fn, tag))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="geomonitor-worker",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def drain(self) -> list[tuple[int, Any, BaseException | None]]:
        """Finished ``(step, result, error)`` in submission order; ``error`` is ``None`` on
        success (then ``result`` is ``fn()``'s value), else the exception (``result`` ``None``).
        Called on every training step: nothing finished costs no lock (a result finishing
        meanwhile comes with the next call)."""
        if not self._done:
            return []
        with self._cond:
            done, self._done = self._done, []
        return done

    def close(self, *, wait: bool = True, timeout: float | None = 30.0) -> list[tuple[int, Any]]:
        """Stop accepting jobs; finish (``wait=True``) or cancel (``wait=False``) the queued
        ones; join the thread for at most ``timeout`` seconds (``None``: no limit), stopping
        a job still running then with ``interrupt`` (see the module docstring). Idempotent.
        Returns ``(step, tag)`` of the jobs this call cancelled, in submission order (an
        interrupted job's result is discarded whenever it returns, so it is among them)."""
        self._close(wait, timeout)
        with self._cond:
            cancelled, self._cancelled_jobs = self._cancelled_jobs, []
        return cancelled

    def _close(self, wait: bool, timeout: float | None) -> None:
        with self._cond:
            self._closed = True
            if not wait:
                self._cancel_queued()
            self._cond.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        if wait or self._interrupt is None:
            thread.join(timeout)
        if thread.is_alive() and self._interrupt is not None:
            with self._cond:
                if self._running and not self._interrupted:
                    self._interrupted = True
                    self._cancelled_jobs.insert(0, self._current)  # submitted before the queue
                self._cancel_queued()
            self._interrupt()
            thread.join(_GRACE)  # an interrupted job returns at once
        if thread.is_alive():
            with self._cond:
                self._cancel_queued()
            when = f"after {timeout} s" if self._interrupt is None else f"{_GRACE} s after an interrupt"
            warnings.warn(f"BackgroundWorker.close: a job still running {when}; queued "
                          "jobs cancelled, the daemon thread ends when that job returns",
                          RuntimeWarning, stacklevel=3)

    def _cancel_queued(self) -> None:
        self.cancelled += len(self._queue)
        self._cancelled_jobs.extend((step, tag) for step, _, tag in self._queue)
        self._queue.clear()

    def _loop(self) -> None:
        torch.set_num_threads(1)  # thread-local here: see the module docstring
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed and nothing left
                    return
                step, fn, tag = self._queue.popleft()
                self._running = 1
                self._current = (step, tag)
            try:
                result, error = fn(), None
            except BaseException as exc:  # noqa: BLE001 - handed back by drain()
                result, error = None, exc
            with self._cond:
                if self._interrupted:  # stopped by close: its outcome is not a result
                    self.cancelled += 1
                    self._interrupted = False
                else:
                    self._done.append((step, result, error))
                self._running = 0
                self._cond.notify_all()

    def __enter__(self) -> BackgroundWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    def __repr__(self) -> str:
        return (f"BackgroundWorker(max_pending={self.max_pending}, pending={self.pending}, "
                f"dropped={self.dropped}, closed={self._closed})")
