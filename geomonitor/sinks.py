"""A sink that writes a run to a JSON Lines file, for plain loops and Lightning Fabric.

Each line is one step: ``{"step": 47, "metrics": {...}, "tables": {...}}``. ``metrics`` maps a
key to a float (``NaN``/``Infinity`` are written as Python's ``json`` writes them), ``tables``
maps a key to ``{"columns": [...], "data": [[...], ...]}``: a persistence diagram as
``dim, birth, death`` rows (infinite deaths left out, as in W&B), a profile across depth as
``depth, layer, value`` rows. Lines of alerts carry ``"alerts": [{"title", "text", "level"}]``.

Values of one step are written together: the sink holds the rows of the steps it has seen
since the last write and writes them (in step order) when a later step than all of them
arrives, and on :meth:`flush` / :meth:`close`. A background measurement that finishes after
later steps were written (step 47's topology after step 141) is written on a line of its own
with its own step, so a step may have more than one line and the file is not sorted by step;
:func:`geomonitor.read_run` gives the values by step either way.

Usage (the sink is also a place for the loop's own values)::

    sink = JsonlSink("run.jsonl")
    monitor = Monitor(model, probe=(X, y), sink=sink)
    for step, batch in enumerate(loader, start=1):
        ...
        sink.log_metrics({"train/loss": loss.item()}, step)
        monitor.step(step, optimizer=opt)
    monitor.close()          # flushes the sink
    sink.close()

Cost: one ``json.dumps`` and one small write per step. Failure modes: an unwritable path
raises ``OSError`` at the first write (the monitor's sink guard warns and carries on).
"""
from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["JsonlSink"]


class JsonlSink:
    """Write ``log_metrics`` / ``log_diagram`` / ``log_profile`` / ``alert`` calls to ``path``.

    Args:
        path: the file; its directory is created. An existing file is appended to
            (``mode="a"``) or replaced (``mode="w"``).
        mode: ``"a"`` or ``"w"``.

    Raises:
        ValueError: ``path`` is not a non-empty str/PathLike, or ``mode`` is neither.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "a") -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"path must be a non-empty str or PathLike, got {path!r}")
        if mode not in ("a", "w"):
            raise ValueError(f"mode must be 'a' or 'w', got {mode!r}")
        self.path = os.fspath(path)
        self._mode = mode
        self._file: Any = None
        self._rows: dict[int, dict[str, Any]] = {}
        self._head: int | None = None
        self._lock = threading.Lock()

    def _row(self, step: Any) -> dict[str, Any]:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"step must be an int, got {step!r}")
        step = int(step)
        if self._head is None or step > self._head:
            self._write_held()
            self._head = step
        return self._rows.setdefault(step, {"step": step})

    def _write_held(self) -> None:
        if not self._rows:
            return
        if self._file is None:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            self._file = open(self.path, self._mode, encoding="utf-8")  # noqa: SIM115
        for step in sorted(self._rows):
            self._file.write(json.dumps(self._rows[step]) + "\n")
        self._rows.clear()
        self._file.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Add float ``metrics`` to the row of ``step``."""
        with self._lock:
            if metrics:
                self._row(step).setdefault("metrics", {}).update(
                    {str(k): float(v) for k, v in metrics.items()})

    def log_diagram(self, key: str, diagrams: Sequence[Any], step: int) -> None:
        """A persistence diagram (one ``(n, 2)`` birth/death array per dimension) as a table."""
        data = [[dim, float(b), float(d)] for dim, dgm in enumerate(diagrams)
                for b, d in np.asarray(dgm, dtype=float).reshape(-1, 2) if math.isfinite(d)]
        self._table(key, ["dim", "birth", "death"], data, step)

    def log_profile(self, key: str, names: Sequence[str], values: Sequence[float], step: int) -> None:
        """A value per layer, in depth order, as a table."""
        data = [[i, str(n), float(v)] for i, (n, v) in enumerate(zip(names, values))]
        if data:
            self._table(key, ["depth", "layer", "value"], data, step)

    def _table(self, key: str, columns: list[str], data: list[list[Any]], step: int) -> None:
        with self._lock:
            self._row(step).setdefault("tables", {})[str(key)] = {"columns": columns, "data": data}

    def alert(self, title: str, text: str, level: str = "WARN", wait_duration: float = 300.0) -> None:
        """An alert, written with the latest step seen (0 before any)."""
        with self._lock:
            step = 0 if self._head is None else self._head
            self._rows.setdefault(step, {"step": step}).setdefault("alerts", []).append(
                {"title": str(title), "text": str(text), "level": str(level)})

    def flush(self) -> None:
        """Write every held row (in step order)."""
        with self._lock:
            self._write_held()

    def close(self) -> None:
        """Flush and close the file. Idempotent; a later call reopens it for appending."""
        with self._lock:
            self._write_held()
            if self._file is not None:
                self._file.close()
                self._file = None
                self._mode = "a"

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JsonlSink({self.path!r})"
