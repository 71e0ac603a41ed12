"""Shared fixtures. W&B always runs offline here, in a temporary directory."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/wandb_offline.py, the run-file reader

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    """A fresh directory for W&B offline runs; yields its path."""
    d = tmp_path / "wandb_root"
    d.mkdir()
    wandb = sys.modules.get("wandb")
    if wandb is not None:  # W&B's settings singleton keeps the first WANDB_DIR it saw
        wandb.teardown()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(d))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield d
    import wandb

    if wandb.run is not None:  # a test that failed before finishing its run must not leak it
        wandb.finish()


@pytest.fixture(autouse=True)
def _no_wandb_run_leaks():
    """A W&B run a test leaves open would be reused by the next test's integration (the
    Hugging Face Trainer's ``WandbCallback`` joins ``wandb.run`` when there is one)."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
