"""Neural-persistence early stopping (Rieck et al. 2019, Algorithm 2) in a real Hugging Face
``Trainer``: a tiny GPT-2 built from a config, trained for up to 30 epochs, stops at the epoch
Algorithm 2 gives on the values in ``state.log_history``; the rule is reset at each ``train()``
and resumes from a checkpoint's monitor state; bad arguments raise."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from geomonitor.callbacks import GeometryTrainerCallback  # noqa: E402
from geomonitor.monitor.early_stopping import NP_KEY, NeuralPersistenceStopping  # noqa: E402
from np_stopping_reference import algorithm2 as _algorithm2  # noqa: E402

N_SAMPLES, SEQ, BATCH, EPOCHS = 40, 16, 8, 30  # 5 optimizer steps per epoch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dataset() -> list[dict[str, torch.Tensor]]:
    rows = []
    for i in range(N_SAMPLES):
        ids = (7 * i + (1 + i % 3) * torch.arange(SEQ)) % 64
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)  # the test's own model init
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), num_train_epochs=EPOCHS, learning_rate=1e-3,
                per_device_train_batch_size=BATCH, report_to=[], use_cpu=True, save_strategy="no",
                seed=0, lr_scheduler_type="constant", disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def _callback(rule, **kw) -> GeometryTrainerCallback:
    base = dict(probe_size=8, id_every_n_steps=None, sharpness_every_n_steps=None,
                topology_every_n_steps=None, symmetry_every_n_steps=None, np_every_n_steps=None,
                np_every_n_epochs=1, max_overhead=None, strict=True, early_stopping=rule)
    base.update(kw)
    return GeometryTrainerCallback(**base)


def _np_values(trainer) -> list[tuple[int, float]]:
    return [(row["step"], row[NP_KEY]) for row in trainer.state.log_history if NP_KEY in row]


def test_trainer_stops_at_algorithm_2s_epoch(tmp_path):
    rule = NeuralPersistenceStopping(patience=2)
    cb = _callback(rule)
    trainer = Trainer(_gpt2(), _args(tmp_path), train_dataset=_dataset(), callbacks=[cb])
    trainer.train()
    steps, values = zip(*_np_values(trainer))
    expected = _algorithm2(values, 2)
    assert expected is not None and expected < EPOCHS - 1
    assert len(values) == expected + 1  # no epoch after the stop
    assert trainer.state.global_step == 5 * (expected + 1) < 5 * EPOCHS
    assert rule.should_stop and rule.reason == "patience" and rule.stopped_step == steps[-1]
    # a second train() on the same callback starts the rule afresh
    again = Trainer(_gpt2(), _args(tmp_path), train_dataset=_dataset(), callbacks=[cb])
    again.train()
    assert [v for _, v in _np_values(again)] == pytest.approx(list(values))
    assert again.state.global_step == trainer.state.global_step


def test_resumed_trainer_continues_the_count(tmp_path):
    # epoch-end checkpoints; the first run is cut after 2 epochs (max_steps), the second
    # resumes from the checkpoint at step 10 with the rule's counter and best value
    args = dict(save_strategy="epoch")
    first = Trainer(_gpt2(), _args(tmp_path, max_steps=10, **args), train_dataset=_dataset(),
                    callbacks=[_callback(NeuralPersistenceStopping(patience=2))])
    first.train()
    rule = NeuralPersistenceStopping(patience=2)
    second = Trainer(_gpt2(), _args(tmp_path, **args), train_dataset=_dataset(),
                     callbacks=[_callback(rule)])
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-10"))
    values = [v for _, v in _np_values(first)] + [v for s, v in _np_values(second) if s > 10]
    expected = _algorithm2(values, 2)
    assert expected is not None and expected >= 2
    assert rule.n_seen == expected + 1 and second.state.global_step == 5 * (expected + 1)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="early_stopping must be a NeuralPersistenceStopping or None"):
        GeometryTrainerCallback(early_stopping=3)
    with pytest.raises(ValueError, match="early_stopping needs neural persistence measured"):
        GeometryTrainerCallback(early_stopping=NeuralPersistenceStopping(), np_every_n_steps=None,
                                np_every_n_epochs=None)
