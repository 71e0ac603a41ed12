"""The attention family through the callbacks: a real Hugging Face Trainer on a tiny GPT-2
logs every attention key at its steps, with entropies inside [0, log T] and readings equal to
the family run on the probe batch the callback drew; GeometryMonitor builds the family."""
from __future__ import annotations

import math
import os

os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from geomonitor.callbacks import GeometryMonitor, GeometryTrainerCallback  # noqa: E402

SEQ = 12
LAYERS = ("transformer.h.0.attn", "transformer.h.1.attn")
OFF = dict(id_every_n_steps=None, sharpness_every_n_steps=None, topology_every_n_steps=None,
           np_every_n_steps=None, symmetry_every_n_steps=None)


def _data(n=32):
    rows = []
    for i in range(n):
        ids = (7 * i + (1 + i % 3) * torch.arange(SEQ)) % 64
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def test_hf_trainer_logs_attention_keys(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    cb = GeometryTrainerCallback(probe_size=8, attention_every_n_steps=3, max_overhead=None,
                                 strict=True, **OFF)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                             report_to=[], logging_steps=3, use_cpu=True, save_strategy="no", seed=0,
                             disable_tqdm=True)
    trainer = Trainer(model, args, train_dataset=_data(), callbacks=[cb])
    trainer.train()
    rows = {}
    for row in trainer.state.log_history:
        vals = {k: v for k, v in row.items() if k.startswith("geometry/")}
        if vals:
            rows.setdefault(row["step"], {}).update(vals)
    want = {f"geometry/attention/{ly}/{s}" for ly in LAYERS for s in ("max_logit", "entropy", "entropy_min")}
    want |= {f"geometry/output_logits/{s}" for s in ("mean_abs", "max", "log_z", "log_z_sq")}
    for step in (3, 6):
        got = {k for k in rows[step] if k.startswith(("geometry/attention", "geometry/output_logits"))}
        assert got == want
        for ly in LAYERS:
            h = rows[step][f"geometry/attention/{ly}/entropy"]
            assert 0.0 <= rows[step][f"geometry/attention/{ly}/entropy_min"] <= h <= math.log(SEQ)
    assert cb.errors == {}
    # the last reading, recomputed from the weights HF returns on the callback's probe batch
    probe = cb.monitor.probe.batch
    assert len(probe["input_ids"]) == 8
    model.eval()
    model.config._attn_implementation = "eager"    # trained under SDPA; eager returns weights
    with torch.no_grad():
        out = model(**{k: v for k, v in probe.items() if k == "input_ids"}, output_attentions=True)
    for i, ly in enumerate(LAYERS):
        w = out.attentions[i].double()
        h = -(torch.where(w > 0, w * w.log(), torch.zeros((), dtype=w.dtype))).sum(-1).mean()
        assert rows[6][f"geometry/attention/{ly}/entropy"] == pytest.approx(float(h), rel=1e-4)


def test_geometry_monitor_builds_the_attention_family():
    cb = GeometryMonitor(attention_every_n_steps=5, **OFF)
    assert [f.name for f in cb.families] == ["attention"]
    assert cb.families[0].schedule.n_steps == 5
    assert "attention" not in [f.name for f in GeometryMonitor().families]


@pytest.mark.parametrize("cls", [GeometryMonitor, GeometryTrainerCallback])
def test_attention_schedule_is_checked(cls):
    with pytest.raises(ValueError, match="attention_every_n_steps"):
        cls(attention_every_n_steps=0, **OFF)


def test_geometry_alerts_feed_the_attention_rules():
    """GeometryAlerts feeds each attention rule what its select picks, once per new value;
    the default rules do not include them."""
    import types

    from geomonitor.callbacks.alerts import GeometryAlerts, default_rules
    from geomonitor.monitor.attention_alerts import (AttentionEntropyCollapse, AttentionLogitGrowth,
                                                     OutputLogitDivergence)

    assert not any(r.name.startswith(("attention", "output")) for r in default_rules())
    cb = GeometryAlerts(rules=[AttentionLogitGrowth(factor=4.0, lag=1, min_value=0.0, cooldown=0),
                               AttentionEntropyCollapse(fraction=0.5, baseline=1, cooldown=0),
                               OutputLogitDivergence(limit=50.0, cooldown=0)])
    trainer = types.SimpleNamespace(callback_metrics={})
    series = [(2.0, 2.0, 1.0), (2.0, 2.0, 1.0), (9.0, 1.5, 1.0), (9.5, 0.9, 60.0)]
    fired = []
    for step, (logit, ent, out) in enumerate(series, start=1):
        trainer.callback_metrics = {"geometry/attention/h.0/max_logit": torch.tensor(logit),
                                    "geometry/attention/h.0/entropy": torch.tensor(ent),
                                    "geometry/output_logits/mean_abs": torch.tensor(out)}
        fired += [(step, a.rule) for a in cb._geometry(trainer, step)]
    # growth 9.0 > 4 x 2.0 at step 3; entropy 0.9 < 0.5 x 2.0 and |logit| 60 > 50 at step 4
    assert fired == [(3, "attention_logit_growth"), (4, "attention_entropy_collapse"),
                     (4, "output_logit_divergence")]
