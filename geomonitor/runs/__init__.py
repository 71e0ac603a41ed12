"""Reading a finished (or running) training run back from disk: :func:`read_run`.

The run's values, whatever wrote them, as one tidy table of :class:`Row` ``(step, key,
value)``: ``value`` a float, or a :class:`Table` for what the format keeps as tables
(persistence diagrams and the ID profile, in W&B runs and :class:`~geomonitor.sinks.JsonlSink`
files). A list of named tuples, so ``pandas.DataFrame(read_run(path))`` is the data frame
(pandas is not needed otherwise).

Kinds of run (:func:`run_kind` says which one a path is):

==============  ======================================================================
``wandb``       a W&B run directory (offline or synced), its ``run-*.wandb`` file, or a
                W&B directory with one run (or ``latest-run``)
``csv``         a Lightning ``CSVLogger`` version directory, or its ``metrics.csv``
``tensorboard`` a directory with TensorBoard event files (``events.out.tfevents*``)
``mlflow``      an MLflow file-store run directory (``mlruns/<experiment>/<run id>``)
``hf``          a Hugging Face ``trainer_state.json``, a checkpoint folder holding it, or an
                output directory of ``checkpoint-<n>`` folders (the latest is read)
``jsonl``       a :class:`~geomonitor.sinks.JsonlSink` file
==============  ======================================================================

Example:
    >>> rows = read_run("lightning_logs/version_0")          # doctest: +SKIP
    >>> [r.value for r in rows if r.key == "geometry/sharpness"]  # doctest: +SKIP
"""
from __future__ import annotations

import glob
import os
import re

from geomonitor.runs.formats import (
    Row,
    Table,
    read_csv,
    read_jsonl,
    read_mlflow,
    read_tensorboard,
    read_trainer_state,
    read_wandb,
)

__all__ = ["KINDS", "Row", "Table", "read_run", "run_kind"]

_READERS = {"wandb": read_wandb, "csv": read_csv, "tensorboard": read_tensorboard,
            "mlflow": read_mlflow, "hf": read_trainer_state, "jsonl": read_jsonl}
#: The kinds of run :func:`read_run` reads.
KINDS: tuple[str, ...] = tuple(_READERS)


def _latest_checkpoint(path: str) -> str | None:
    found = [(int(m.group(1)), d) for d in glob.glob(os.path.join(path, "checkpoint-*"))
             if (m := re.fullmatch(r"checkpoint-(\d+)", os.path.basename(d)))
             and os.path.isfile(os.path.join(d, "trainer_state.json"))]
    return max(found)[1] if found else None


def run_kind(path: str | os.PathLike) -> tuple[str, str]:
    """``(kind, path to read)`` for a run on disk (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is none of the kinds (the message lists them).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no run at {path!r}")
    name = os.path.basename(path)
    if os.path.isfile(path):
        if name.endswith(".wandb"):
            return "wandb", path
        if name == "trainer_state.json":
            return "hf", path
        if name.endswith(".csv"):
            return "csv", path
        if "tfevents" in name:
            return "tensorboard", path
        return "jsonl", path
    has = lambda *p: os.path.exists(os.path.join(path, *p))  # noqa: E731
    if glob.glob(os.path.join(path, "run-*.wandb")) or has("latest-run") or has("wandb", "latest-run"):
        return "wandb", path
    if has("metrics.csv"):
        return "csv", path
    if has("trainer_state.json"):
        return "hf", path
    if has("metrics") and has("meta.yaml"):
        return "mlflow", path
    latest = _latest_checkpoint(path)
    if latest is not None:
        return "hf", latest
    if glob.glob(os.path.join(path, "**", "events.out.tfevents*"), recursive=True):
        return "tensorboard", path
    if glob.glob(os.path.join(path, "**", "run-*.wandb"), recursive=True):
        return "wandb", path
    raise ValueError(f"{path!r} is not a run geomonitor reads: expected a W&B run directory, a "
                     "CSVLogger version directory (metrics.csv), a TensorBoard event directory, "
                     "an MLflow run directory (metrics/, meta.yaml), a trainer_state.json or a "
                     "checkpoint folder, or a JsonlSink file")


def read_run(path: str | os.PathLike, kind: str | None = None) -> list[Row]:
    """Every value of the run at ``path`` as ``(step, key, value)`` rows, sorted by step
    (the order of writing within a step).

    Args:
        path: the run (see the module docstring).
        kind: one of :data:`KINDS` to skip detection.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown ``kind``, a path of no known kind, or a corrupt file.
    """
    if kind is None:
        kind, path = run_kind(path)
    elif kind not in _READERS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rows = _READERS[kind](os.fspath(path))
    return sorted(rows, key=lambda r: r.step)
