"""recipes/transformer_instability.py, tiny: output structure, and its spike step against
Lightning's own SpikeDetection fed the same losses."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

_RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "transformer_instability.py")


def _load():
    spec = importlib.util.spec_from_file_location("transformer_instability_recipe", _RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lightning_spike(losses, rtol, tmp_path):
    """The batch index at which lightning's SpikeDetection raises, or None."""
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.spike import SpikeDetection, TrainingSpikeException

    fabric = Fabric(accelerator="cpu", devices=1)
    det = SpikeDetection(mode="min", window=10, warmup=1, rtol=rtol,
                         exclude_batches_path=str(tmp_path / "skip.json"))
    for i, loss in enumerate(losses):
        try:
            det.on_train_batch_end(fabric, torch.tensor(loss), None, i)
        except TrainingSpikeException:
            return i
    return None


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig") / "ti.png"
    res = _load().main(["--seeds", "2", "--steps", "40", "--warmup", "10", "--unstable-lr", "3.0",
                        "--d-model", "16", "--heads", "2", "--layers", "1", "--context", "16",
                        "--batch", "8", "--probe", "4", "--out", str(out)])
    return res, out


def test_structure(result):
    res, out = result
    runs, rows = res["runs"], res["rows"]
    assert [(r["lr"], r["seed"]) for r in runs] == [(3.0, 0), (1e-2, 0), (3.0, 1), (1e-2, 1)]
    assert [r["rule"] for r in rows] == ["attention_logit_growth", "attention_entropy_collapse",
                                         "output_logit_divergence", "loss spike (SpikeDetection)"]
    keys = {f"geometry/attention/blocks.layers.0/{s}" for s in ("max_logit", "entropy", "entropy_min")}
    keys |= {f"geometry/output_logits/{s}" for s in ("mean_abs", "max", "log_z", "log_z_sq")}
    for r in runs:
        assert [s for s, _ in r["readings"]] == list(range(2, len(r["losses"]) + 1, 2))
        assert all(set(m) == keys for _, m in r["readings"])
        assert set(r["alerts"]) == set(rows[i]["rule"] for i in range(3))
    hot = [r for r in runs if r["lr"] == 3.0]
    for row in rows[:3]:
        expected = [r["spike"] - r["alerts"][row["rule"]] for r in hot
                    if r["spike"] is not None and r["alerts"][row["rule"]] is not None]
        assert row["leads"] == expected and row["stable_runs"] == 2 and row["seeds"] == 2
        assert row["false_alarms"] == sum(r["alerts"][row["rule"]] is not None for r in runs if r["lr"] == 1e-2)
    assert os.path.getsize(out) > 1000


def test_spike_step_is_lightnings(result, tmp_path):
    """The recipe's spike step is the batch at which Lightning's SpikeDetection (same rtol)
    raises on the same loss sequence; at least one run spikes at this learning rate."""
    runs = result[0]["runs"]
    assert any(r["spike"] is not None for r in runs)
    for r in runs:
        idx = _lightning_spike(r["losses"], 1.0, tmp_path)
        assert r["spike"] == (None if idx is None else idx + 1)


def test_spike_step_rule_on_hand_sequences(tmp_path):
    spike_step = _load().spike_step
    for seq in ([3.0, 2.0, 2.5, 9.0, 1.0], [1.0, 1.0, 1.9, 2.1, 4.5], [2.0, float("nan")],
                [5.0, 4.0, 3.0, 2.0], [1.0] * 12 + [2.5, 3.1]):
        for rtol in (1.0, 2.0):
            assert spike_step(seq, rtol=rtol) == _lightning_spike(seq, rtol, tmp_path)
