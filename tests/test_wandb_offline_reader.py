"""The test-side W&B run-file reader, against what a real offline run wrote."""
from __future__ import annotations

import pytest

import wandb_offline


def test_reader_returns_what_was_logged_including_records_split_across_blocks(wandb_dir):
    import wandb

    big = "x" * 100_000  # one history record spanning four 32 KiB blocks (FIRST/MIDDLE/LAST)
    run = wandb.init(project="reader-test", dir=str(wandb_dir), mode="offline")
    for i in range(50):
        run.log({"a": i, "b": 0.25 * i})
    run.log({"big": big})
    run.log({"after": 7})
    run.finish()
    rows = wandb_offline.history(wandb_offline.find_run_file(str(wandb_dir)))
    assert [(r["a"], r["b"]) for r in rows if "a" in r] == [(i, 0.25 * i) for i in range(50)]
    assert [r["big"] for r in rows if "big" in r] == [big]
    assert [r["after"] for r in rows if "after" in r] == [7]


def test_reader_rejects_a_file_that_is_not_a_run(tmp_path):
    p = tmp_path / "run-x.wandb"
    p.write_bytes(b"not a wandb file at all")
    with pytest.raises(ValueError, match="is not a W&B run file"):
        wandb_offline.read_records(str(p))


def test_find_run_file_requires_exactly_one(tmp_path):
    with pytest.raises(AssertionError, match="expected one W&B run file"):
        wandb_offline.find_run_file(str(tmp_path), timeout=0.5)
