"""read_run and the report on a real Hugging Face Trainer run (a tiny GPT-2 from its config):
``trainer_state.json`` and the checkpoint folder read back equal the Trainer's own
``state.log_history``."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from geomonitor import read_run  # noqa: E402
from geomonitor.callbacks import GeometryTrainerCallback  # noqa: E402
from geomonitor.report import write_report  # noqa: E402
from geomonitor.runs import run_kind  # noqa: E402


def _tokens(n: int = 40, seq: int = 16) -> list[dict[str, torch.Tensor]]:
    rows = []
    for i in range(n):
        ids = (7 * i + (1 + i % 3) * torch.arange(seq)) % 64
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)  # the test's own model init
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                           n_positions=32, bos_token_id=0, eos_token_id=0))
        args = TrainingArguments(output_dir=str(out), max_steps=12, per_device_train_batch_size=8,
                                 report_to=[], logging_steps=4, use_cpu=True, save_strategy="steps",
                                 save_steps=12, seed=0, lr_scheduler_type="constant",
                                 disable_tqdm=True)
        cb = GeometryTrainerCallback(layers="transformer.h.?", reduce="mean", probe_size=32,
                                     id_every_n_steps=4, sharpness_every_n_steps=4,
                                     sharpness_max_hvp=10, topology_every_n_steps=4,
                                     topology_landmarks=32, np_every_n_steps=4,
                                     max_overhead=None, strict=True)
        trainer = Trainer(model, args, train_dataset=_tokens(), callbacks=[cb])
        trainer.train()
        trainer.save_state()  # out/trainer_state.json: the whole history
    finally:
        torch.set_num_threads(threads)
    reference = {}
    for entry in trainer.state.log_history:
        for k, v in entry.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                reference[(entry["step"], k)] = float(v)
    return out, reference


def test_trainer_state_reads_back_as_the_log_history(hf_run):
    out, reference = hf_run
    assert run_kind(out)[0] == "hf"
    got = {(r.step, r.key): r.value for r in read_run(out / "trainer_state.json")}
    assert got == reference
    assert {k for _, k in got} >= {"loss", "geometry/sharpness", "geometry/id/transformer.h.0",
                                   "geometry/ph/transformer.h.1/h1_entropy"}
    # the checkpoint folder holds the history up to its save: a part of the same values
    ckpt = {(r.step, r.key): r.value for r in read_run(out / "checkpoint-12")}
    assert ckpt and all(reference[k] == v for k, v in ckpt.items())
    assert ("loss" in {k for _, k in ckpt})


def test_report_of_a_trainer_run(hf_run, tmp_path):
    out, _ = hf_run
    page = open(write_report(out, tmp_path / "hf.html")).read()
    for title in ("Loss and sharpness", "Intrinsic dimension", "Persistence summaries over time",
                  "Neural persistence"):
        assert f"<h2>{title}</h2>" in page, title
    assert "panel failed" not in page
    # a checkpoint saved before the last background values came in: what it holds
    page = open(write_report(out / "checkpoint-12", tmp_path / "ckpt.html")).read()
    assert "<h2>Loss and sharpness</h2>" in page and "panel failed" not in page
