"""A small reader for W&B offline run files, used by the tests to check what landed.

An offline run writes ``run-<id>.wandb``: a 7-byte file header (``:W&B``, magic 0xBEE1,
version 0) followed by a LevelDB-style log of 32 KiB blocks. Each block holds records with a
7-byte header (CRC-32 checksum, uint16 length, uint8 type: FULL=1, FIRST=2, MIDDLE=3,
LAST=4); a message that does not fit a block is split into FIRST/MIDDLE.../LAST pieces, and a
block tail shorter than a header is zero padding. Each reassembled message is a serialized
``wandb.proto.wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import glob
import json
import os
import struct
import time
from typing import Any

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str) -> list[Any]:
    """All ``Record`` messages of one ``run-*.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        data = f.read()
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


def find_run_file(root: str, *, timeout: float = 20.0) -> str:
    """The single ``run-*.wandb`` file below ``root``, once W&B has finished writing it.

    W&B's writer flushes asynchronously after ``run.finish()``; this waits (up to ``timeout``
    seconds) for the run's ``exit`` record before returning. Error if no file or several.
    """
    deadline = time.monotonic() + timeout
    while True:
        files = [f for f in glob.glob(os.path.join(root, "**", "run-*.wandb"), recursive=True)
                 if "latest-run" not in f.split(os.sep)]
        if len(files) == 1 and _has_exit(files[0]):
            return files[0]
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if len(files) != 1:
        raise AssertionError(f"expected one W&B run file below {root}, found {files}")
    return files[0]


def _has_exit(path: str) -> bool:
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in read_records(path))
    except (ValueError, struct.error):  # header not written yet
        return False


def history(path: str) -> list[dict[str, Any]]:
    """The run's history rows (what ``run.log`` wrote), values decoded from JSON."""
    rows = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in rec.history.item})
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
