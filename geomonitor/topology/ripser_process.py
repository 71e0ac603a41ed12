"""giotto-ph in a child process, so that persistence really runs beside training.

giotto-ph's ``ripser_parallel`` keeps the GIL for its whole run. Called from a Python thread
it therefore stops every other Python thread, the training loop included, for as long as it
computes (measured on 2 cores: a training loop beside a thread computing landmark diagrams
lost 0.66 s per second that thread computed; ``benchmarks/bench_gil.py``).
:class:`RipserProcess` runs it in a child interpreter instead. The calling thread waits on a
pipe, which releases the GIL, while the child computes on another core.

* The child is ``sys.executable -I -c <script>``: it imports only numpy and giotto-ph (with
  its scikit-learn dependency: start-up about 1 s of CPU), never torch and never the caller's
  ``__main__`` (so, unlike ``multiprocessing``'s spawn, a script without an
  ``if __name__ == "__main__"`` guard is safe). Its import path is explicit: isolated mode
  (``-I``), then the absolute entries of this process's ``sys.path`` other than the working
  directory, so a ``gph.py`` or ``numpy.py`` in the working directory is never imported.
* Priority, one rule: the child runs at the lowest CPU priority (``nice 19``) only while
  nobody waits on it. ``RipserProcess(low_priority=True)`` is for a caller whose wait lets
  training continue (the monitor's background thread): its child takes only idle time on a
  busy machine and runs at full speed on a spare core. When the training thread is about to
  wait on it (``Monitor.close(wait=True)``), :meth:`RipserProcess.prioritize` brings the child
  back to this process's priority, so a starved child never holds up the end of a fit.
  Lowering a nice value needs privilege (``CAP_SYS_NICE`` or ``RLIMIT_NICE``): where it is
  refused, ``prioritize`` returns ``False`` and the child stays at nice 19 (the monitor then
  bounds its wait instead; see :meth:`geomonitor.monitor.Monitor.close`). The default,
  ``low_priority=False``, is for a caller that waits on every call: its child runs at this
  process's priority from the start.
* Protocol: one request at a time, a little-endian 8-byte length then a pickle, both ways:
  ``(D, maxdim)`` in, ``("ok", [dgm_0, ..., dgm_maxdim], cpu, startup)`` or ``("error",
  message, cpu, startup)`` out: ``cpu`` the child's CPU seconds for this request, ``startup``
  those of its start-up (first answer only, else 0). :attr:`RipserProcess.cpu_time` and
  :attr:`RipserProcess.startup_cpu` add them up: on a machine without a spare core that time
  is taken from training, so the monitor charges it to the family's cost.
  The child's own stdout is moved to stderr, so a print in a library cannot corrupt it.
* :meth:`RipserProcess.start` launches the child without waiting for it; the first call
  starts it if needed. :meth:`RipserProcess.close` (idempotent, callable from any thread)
  kills it (it keeps no state); a call blocked on the child then raises ``RuntimeError`` at
  once, and so do later calls until :meth:`RipserProcess.start` reopens it. A child that
  died on its own is restarted by the next call.
* If no child can be started (``OSError``, e.g. no Python executable in a frozen app), calls
  run giotto-ph in this process, with one ``RuntimeWarning``.

Cost: pickling the m x m float64 landmark distance matrix (m = 128: 128 KiB) both ways, about
a millisecond, plus giotto-ph's own time on the other core. Memory: one child (numpy and
giotto-ph, about 80 MiB resident), idle between requests.

Example:
    >>> with RipserProcess() as ripser:                      # doctest: +SKIP
    ...     dgms = ripser(distance_matrix, maxdim=1)         # [H0 bars, H1 bars]
    >>> background = RipserProcess(low_priority=True)        # doctest: +SKIP
    >>> background.prioritize()          # the training thread waits now: True where permitted
"""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import warnings
from typing import IO

import numpy as np

__all__ = ["RipserProcess", "ripser_in_process"]

_HEADER = struct.Struct("<Q")

_LOW = 19  # the child's nice value while nobody waits on it

_CHILD = r"""
import os, sys
sys.path[:] = sys.argv[1:] + sys.path
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
import pickle, struct, time
import numpy as np
from gph import ripser_parallel
inp, head = sys.stdin.buffer, struct.Struct("<Q")
startup = time.process_time()
while True:
    h = inp.read(8)
    if len(h) < 8:
        break
    D, maxdim = pickle.loads(inp.read(head.unpack(h)[0]))
    t0 = time.process_time()
    try:
        dgms = ripser_parallel(D, metric="precomputed", maxdim=maxdim, n_threads=1)["dgms"]
        res = ("ok", [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d in dgms])
    except Exception as exc:
        res = ("error", "%s: %s" % (type(exc).__name__, exc))
    res, startup = res + (time.process_time() - t0, startup), 0.0
    blob = pickle.dumps(res, protocol=4)
    out.write(head.pack(len(blob)) + blob)
    out.flush()
"""


def ripser_in_process(D: np.ndarray, maxdim: int) -> list[np.ndarray]:
    """giotto-ph on the distance matrix ``D`` in this process: one (n_k, 2) array per dimension."""
    from gph import ripser_parallel

    dgms = ripser_parallel(D, metric="precomputed", maxdim=maxdim, n_threads=1)["dgms"]
    return [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d in dgms]


class RipserProcess:
    """A callable ``(D, maxdim) -> [dgm_0, ..., dgm_maxdim]`` served by one child process.

    ``D`` is an (m, m) symmetric distance matrix; the result has one float64 (n_k, 2) array
    of (birth, death) bars per dimension 0..maxdim, as giotto-ph returns them (the essential
    H0 bar included, with death ``inf``).

    Args:
        low_priority: run the child at nice 19 until :meth:`prioritize` (for a caller that
            does not wait on it; see the module docstring). ``False``: this process's priority.

    Attributes:
        cpu_time, startup_cpu: CPU seconds the child reported (requests; start-up).
        launches: children started so far (a child that died is replaced by a new one).

    Raises:
        ValueError: ``low_priority`` not a bool.

    Raises (from a call):
        RuntimeError: the instance is closed, the child ended during the call (e.g.
            :meth:`close` from another thread), or giotto-ph raised in it (its message is
            included).
    """

    def __init__(self, *, low_priority: bool = False) -> None:
        if not isinstance(low_priority, bool):
            raise ValueError(f"low_priority must be True or False, got {low_priority!r}")
        self._lock = threading.Lock()
        self._nice_lock = threading.Lock()  # orders launch and prioritize(); never held long
        self._low = low_priority
        self._proc: subprocess.Popen | None = None
        self._in_process = False
        self._closed = False
        self.cpu_time = 0.0
        self.startup_cpu = 0.0
        self.launches = 0

    @property
    def running(self) -> bool:
        """Whether a child process has been launched and is alive (or being started)."""
        return self.pid is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (and :meth:`start` not since)."""
        return self._closed

    @property
    def pid(self) -> int | None:
        """The child's process id while one is running, else ``None``."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def low_priority(self) -> bool:
        """Whether the child runs (or will start) at nice 19 (see :meth:`prioritize`)."""
        return self._low

    def prioritize(self) -> bool:
        """Someone now waits on the child: bring it back to this process's priority, now and
        for any child launched later. Never waits (callable while another thread's call holds
        the child). Returns ``True`` when the child runs (or will start) at this process's
        priority, ``False`` when the operating system refused (lowering a nice value needs
        privilege); the child then stays at nice 19."""
        with self._nice_lock:
            if not self._low:
                return True
            proc = self._proc
            if proc is not None and proc.poll() is None:
                try:
                    os.setpriority(os.PRIO_PROCESS, proc.pid, os.getpriority(os.PRIO_PROCESS, 0))
                except PermissionError:
                    return False
                except (ProcessLookupError, AttributeError):
                    pass  # ended meanwhile (a new child starts unniced), or no priorities here
            self._low = False
            return True

    def start(self) -> None:
        """Launch the child now (without waiting for its imports); a no-op if it runs. Also
        reopens a closed instance. Never waits: while a call holds the child (from another
        thread), that call keeps it running and this returns at once."""
        self._closed = False
        if self._lock.acquire(blocking=False):
            try:
                self._ensure()
            finally:
                self._lock.release()

    def __call__(self, D: np.ndarray, maxdim: int) -> list[np.ndarray]:
        D = np.ascontiguousarray(D, dtype=np.float64)
        with self._lock:
            if self._closed:
                raise RuntimeError("RipserProcess is closed (start() reopens it)")
            proc = self._ensure()
            if proc is None:
                return ripser_in_process(D, maxdim)
            blob = pickle.dumps((D, int(maxdim)), protocol=4)
            try:
                proc.stdin.write(_HEADER.pack(len(blob)) + blob)
                proc.stdin.flush()
                (n,) = _HEADER.unpack(_read(proc.stdout, _HEADER.size))
                status, payload, cpu, startup = pickle.loads(_read(proc.stdout, n))
                self.cpu_time += cpu
                if startup:
                    self.startup_cpu += startup
            except (OSError, EOFError, ValueError) as exc:
                self._stop(proc)
                raise RuntimeError("the giotto-ph child process ended during a computation "
                                   f"(exit status {proc.returncode})") from exc
        if status != "ok":
            raise RuntimeError(f"giotto-ph failed in the child process: {payload}")
        return payload

    def close(self) -> None:
        """Stop the child now (idempotent; safe while another thread is waiting on it, whose
        read then returns at once). The child keeps no state, so it is simply killed."""
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        if self._lock.acquire(blocking=False):
            try:
                self._stop(proc)
            finally:
                self._lock.release()
        else:  # a caller holds the pipes (it closes them when its read fails): only reap
            proc.wait()

    def _ensure(self) -> subprocess.Popen | None:
        if self._closed:  # close() ran while a caller was on its way in: launch nothing
            raise RuntimeError("RipserProcess is closed (start() reopens it)")
        if self._in_process:
            return None
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-c", _CHILD, *_child_path()],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
        except OSError as exc:
            self._in_process = True
            warnings.warn(f"RipserProcess: cannot start a child process ({exc!r}); giotto-ph "
                          "runs in this process instead", RuntimeWarning, stacklevel=3)
            return None
        with self._nice_lock:  # the parent nices it, so prioritize() cannot be overtaken
            self._proc = proc
            if self._low and hasattr(os, "setpriority"):
                try:
                    os.setpriority(os.PRIO_PROCESS, proc.pid, _LOW)
                except OSError:  # already ended: the call finds out
                    pass
        self.launches += 1
        if self._closed:  # close() ran during the launch: it saw no child, so stop this one
            self._proc = None
            self._stop(proc)
            raise RuntimeError("RipserProcess is closed (start() reopens it)")
        return proc

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        proc.kill()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        proc.wait()

    def __enter__(self) -> RipserProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _child_path() -> list[str]:
    """The child's import path before its own: the absolute entries of ``sys.path`` other than
    the working directory (a relative entry, ``""`` included, names the working directory)."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the working directory was removed
        cwd = None
    return [p for p in sys.path if isinstance(p, str) and os.path.isabs(p)
            and os.path.realpath(p) != cwd]


def _read(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) < n:
        raise EOFError(f"expected {n} bytes from the child, got {0 if data is None else len(data)}")
    return data
