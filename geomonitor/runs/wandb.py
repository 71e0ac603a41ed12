"""Reading a W&B run from disk, without the W&B service: the ``run-<id>.wandb`` file.

An offline run (and a synced one, which keeps its file) writes ``run-<id>.wandb``: a 7-byte
file header (``:W&B``, magic 0xBEE1, version 0) followed by a LevelDB-style log of 32 KiB
blocks. Each block holds records with a 7-byte header (CRC-32 checksum, uint16 length, uint8
type: FULL=1, FIRST=2, MIDDLE=3, LAST=4); a message that does not fit a block is split into
FIRST/MIDDLE.../LAST pieces, and a block tail shorter than a header is zero padding. Each
reassembled message is a serialized ``wandb.proto.wandb_internal_pb2.Record`` (the protobuf
classes come with the ``wandb`` package). Logged tables live beside it, as JSON files under
``files/`` (``files/media/table/...table.json``) named by the history value.

Cost: the whole file is read once per call. Failure modes: a file that is not a W&B run file
raises ``ValueError``; a file still being written ends at its last complete record.
"""
from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any

__all__ = ["alerts", "find_run_file", "finished", "history", "metric_definitions", "read_records"]

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str) -> list[Any]:
    """All ``Record`` messages of one ``run-*.wandb`` file, in order.

    Raises:
        ValueError: not a W&B run file, or a corrupt record type.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER:
        raise ValueError(f"{path} is not a W&B run file (only {len(data)} bytes)")
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path} is not a W&B run file (header {data[:_HEADER]!r})")
    records, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # zero padding at the end of a block
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # preallocated tail
            break
        payload = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            pending = payload
        elif kind == _FIRST:
            pending = payload
            continue
        elif kind == _MIDDLE:
            pending += payload
            continue
        elif kind == _LAST:
            pending += payload
        else:
            raise ValueError(f"corrupt record type {kind} at byte {pos}")
        rec = pb.Record()
        rec.ParseFromString(pending)
        records.append(rec)
        pending = b""
    return records


def find_run_file(path: str) -> str:
    """The ``run-*.wandb`` file of ``path``: the file itself, a run directory holding it, or a
    W&B directory holding one run (``latest-run`` when it has several).

    Raises:
        ValueError: no run file, or several and no ``latest-run``.
    """
    if os.path.isfile(path):
        return path
    here = glob.glob(os.path.join(path, "run-*.wandb"))
    if len(here) == 1:
        return here[0]
    for sub in ("latest-run", os.path.join("wandb", "latest-run")):
        found = glob.glob(os.path.join(path, sub, "run-*.wandb"))
        if len(found) == 1:
            return found[0]
    found = [f for f in glob.glob(os.path.join(path, "**", "run-*.wandb"), recursive=True)
             if "latest-run" not in f.split(os.sep)]
    if len(found) != 1:
        raise ValueError(f"expected one W&B run file (run-*.wandb) in {path}, found {len(found)}"
                         + (": pass the run directory" if found else ""))
    return found[0]


def finished(path: str) -> bool:
    """Whether the run file holds its ``exit`` record (W&B writes the file asynchronously;
    after ``run.finish()`` the last records may land a moment later)."""
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in read_records(path))
    except (OSError, ValueError, struct.error):  # header not written yet
        return False


def history(path: str, *, nested: bool = False) -> list[dict[str, Any]]:
    """The run's history rows (what ``run.log`` wrote), values decoded from JSON.

    W&B writes a logged object (a table, a plot) as one item per field, keyed by
    ``[name, field]``. By default such an item is named ``name/field``; with ``nested=True``
    the fields are gathered back into one dict under ``name`` (``{"_type": "table-file",
    "path": ..., ...}`` for a table).
    """
    rows = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in rec.history.item:
            value = json.loads(item.value_json)
            parts = list(item.nested_key)
            if item.key or not nested or len(parts) < 2:
                row[item.key or "/".join(parts)] = value
                continue
            node = row.setdefault(parts[0], {})
            for part in parts[1:-1]:
                node = node.setdefault(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node[parts[-1]] = value
        rows.append(row)
    return rows


def alerts(path: str) -> list[dict[str, Any]]:
    """The run's alerts (``run.alert``): title, text, level and wait duration."""
    out = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "alert":
            a = rec.alert
            out.append({"title": a.title, "text": a.text, "level": a.level,
                        "wait_duration": a.wait_duration})
    return out


def metric_definitions(path: str) -> list[dict[str, Any]]:
    """``define_metric`` calls recorded in the run: name or glob and its step metric."""
    out = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "metric":
            m = rec.metric
            out.append({"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric})
    return out
