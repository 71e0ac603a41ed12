"""One reader per kind of run on disk, each giving ``(step, key, value)`` rows.

* W&B (:func:`read_wandb`): the history of ``run-*.wandb``. A ``geometry/*`` or ``alerts/*``
  value takes its step from the row's ``geometry/step`` (else ``trainer/global_step`` /
  ``train/global_step``, else W&B's ``_step``), any other value from the row's
  ``trainer/global_step`` / ``train/global_step`` (else ``_step``). Tables are read from
  ``files/`` and given as ``<key>`` (once per step): a chart's table, which W&B stores as
  ``<key>_table``, or (runs of earlier versions) ``<key>/table`` and ``<key>/plot_table``.
* Lightning ``CSVLogger`` (:func:`read_csv`): ``metrics.csv``, the ``step`` column.
* TensorBoard (:func:`read_tensorboard`): scalars of every event file below the directory
  (``tensorboard``'s ``EventAccumulator``; needs the ``tensorboard`` package).
* MLflow file store (:func:`read_mlflow`): ``metrics/<key>``, lines ``timestamp value step``.
* Hugging Face (:func:`read_trainer_state`): ``trainer_state.json``'s ``log_history``.
* :class:`geomonitor.sinks.JsonlSink` files (:func:`read_jsonl`).

Keys are given as written (no renaming); non-numeric values other than tables are left out.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
from typing import Any, NamedTuple

__all__ = ["Row", "Table", "read_csv", "read_jsonl", "read_mlflow", "read_tensorboard",
           "read_trainer_state", "read_wandb"]


class Table(NamedTuple):
    """A logged table: column names and rows (a persistence diagram: ``dim, birth, death``;
    a profile across depth: ``depth, layer, value``)."""

    columns: list[str]
    data: list[list[Any]]


class Row(NamedTuple):
    """One value: ``value`` is a float, or a :class:`Table`."""

    step: int
    key: str
    value: Any


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


_GEOMETRY_STEPS = ("geometry/step", "trainer/global_step", "train/global_step")
_LOOP_STEPS = ("trainer/global_step", "train/global_step")
_TABLE_SUFFIXES = ("/plot_table", "/table", "_table")


def _pick(row: dict[str, Any], names: tuple[str, ...]) -> int:
    for name in names:
        v = _number(row.get(name))
        if v is not None and math.isfinite(v):
            return int(v)
    return int(row.get("_step", 0))


def read_wandb(path: str) -> list[Row]:
    """Rows of a W&B run: its directory, its ``run-*.wandb`` file, or a directory with one run."""
    from geomonitor.runs.wandb import find_run_file, history

    run_file = find_run_file(path)
    files = os.path.join(os.path.dirname(run_file), "files")
    out: list[Row] = []
    seen_tables: set[tuple[int, str]] = set()
    for row in history(run_file, nested=True):
        for key, value in row.items():
            if key.startswith("_") or key in _GEOMETRY_STEPS:
                continue
            geometric = key.startswith(("geometry/", "alerts/"))
            step = _pick(row, _GEOMETRY_STEPS if geometric else _LOOP_STEPS)
            if isinstance(value, dict) and "table" in str(value.get("_type", "")):
                base = next((key[: -len(s)] for s in _TABLE_SUFFIXES if key.endswith(s)), key)
                table = _wandb_table(files, value)
                if table is not None and (step, base) not in seen_tables:
                    seen_tables.add((step, base))
                    out.append(Row(step, base, table))
                continue
            v = _number(value)
            if v is not None:
                out.append(Row(step, key, v))
    return out


def _wandb_table(files: str, value: dict[str, Any]) -> Table | None:
    path = os.path.join(files, str(value.get("path", "")))
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return Table(list(doc.get("columns", [])), [list(r) for r in doc.get("data", [])])


def read_csv(path: str) -> list[Row]:
    """Rows of a Lightning ``CSVLogger`` version directory (or its ``metrics.csv``)."""
    file = os.path.join(path, "metrics.csv") if os.path.isdir(path) else path
    out: list[Row] = []
    with open(file, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            if not rec.get("step"):
                continue
            step = int(float(rec["step"]))
            for key, cell in rec.items():
                if key != "step" and key is not None and cell not in (None, ""):
                    try:
                        out.append(Row(step, key, float(cell)))
                    except ValueError:
                        continue
    return out


def read_tensorboard(path: str) -> list[Row]:
    """Scalar rows of every TensorBoard event file in or below ``path``."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading a TensorBoard run needs the tensorboard package "
                          "(pip install tensorboard)") from exc
    files = ([path] if os.path.isfile(path) else
             sorted(glob.glob(os.path.join(path, "**", "events.out.tfevents*"), recursive=True)))
    out: list[Row] = []
    for file in files:
        acc = EventAccumulator(file, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags.get("scalars", []):
            out.extend(Row(int(e.step), tag, float(e.value)) for e in acc.Scalars(tag))
        for tag in tags.get("tensors", []):
            from tensorboard.util import tensor_util

            for e in acc.Tensors(tag):
                arr = tensor_util.make_ndarray(e.tensor_proto)
                if arr.size == 1 and arr.dtype.kind in "fiu":
                    out.append(Row(int(e.step), tag, float(arr.reshape(-1)[0])))
    return out


def read_mlflow(path: str) -> list[Row]:
    """Rows of an MLflow file-store run directory (``<experiment>/<run id>``)."""
    root = os.path.join(path, "metrics")
    out: list[Row] = []
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            file = os.path.join(dirpath, name)
            key = os.path.relpath(file, root).replace(os.sep, "/")
            with open(file, encoding="utf-8") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        out.append(Row(int(parts[2]), key, float(parts[1])))
    return out


def read_trainer_state(path: str) -> list[Row]:
    """Rows of a Hugging Face ``trainer_state.json`` (or the folder holding it)."""
    file = os.path.join(path, "trainer_state.json") if os.path.isdir(path) else path
    with open(file, encoding="utf-8") as f:
        state = json.load(f)
    out: list[Row] = []
    for entry in state.get("log_history", []):
        step = entry.get("step")
        if _number(step) is None:
            continue
        for key, value in entry.items():
            v = _number(value)
            if key != "step" and v is not None:
                out.append(Row(int(step), key, v))
    return out


def read_jsonl(path: str) -> list[Row]:
    """Rows of a :class:`geomonitor.sinks.JsonlSink` file (blank lines are skipped).

    Raises:
        ValueError: a line that is not a JSON object with an int ``step`` (line number given).
    """
    out: list[Row] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                step = doc["step"]
                if isinstance(step, bool) or not isinstance(step, int):
                    raise TypeError(step)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n} is not a JsonlSink line ({exc!r})") from exc
            for key, value in doc.get("metrics", {}).items():
                out.append(Row(step, key, float(value)))
            for key, t in doc.get("tables", {}).items():
                out.append(Row(step, key, Table(list(t["columns"]), [list(r) for r in t["data"]])))
    return out
