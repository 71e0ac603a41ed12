"""The tests' view of W&B offline run files: the library's reader
(:mod:`geomonitor.runs.wandb`), plus a wait for W&B's asynchronous writer."""
from __future__ import annotations

import glob
import os
import time

from geomonitor.runs.wandb import alerts, finished, history, metric_definitions, read_records

__all__ = ["alerts", "find_run_file", "history", "metric_definitions", "read_records"]


def find_run_file(root: str, *, timeout: float = 20.0) -> str:
    """The single ``run-*.wandb`` file below ``root``, once W&B has finished writing it.

    W&B's writer flushes asynchronously after ``run.finish()``; this waits (up to ``timeout``
    seconds) for the run's ``exit`` record before returning. Error if no file or several.
    """
    deadline = time.monotonic() + timeout
    while True:
        files = [f for f in glob.glob(os.path.join(root, "**", "run-*.wandb"), recursive=True)
                 if "latest-run" not in f.split(os.sep)]
        if len(files) == 1 and finished(files[0]):
            return files[0]
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if len(files) != 1:
        raise AssertionError(f"expected one W&B run file below {root}, found {files}")
    return files[0]

