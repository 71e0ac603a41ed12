"""GeometryTrainerCallback in a real Hugging Face ``Trainer`` run (a tiny GPT-2 built from a
config, a synthetic token grammar, CPU): metric keys at the scheduled steps in
``state.log_history`` and in a W&B offline run read back from disk, ``eos_ratio`` against
Adam's edge-of-stability threshold (Cohen et al. 2022) computed from the TrainingArguments,
the probe batch against the dataset rows, training bitwise identical with and without the
callback, a resumed Trainer continuing the series, and every ``raise`` of the adapter.
"""
from __future__ import annotations

import copy
import gc
import math
import pickle

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (GPT2Config, GPT2LMHeadModel, Trainer, TrainerState,  # noqa: E402
                          TrainingArguments)

import wandb_offline  # noqa: E402
from geomonitor.callbacks import GeometryTrainerCallback  # noqa: E402
from geomonitor.callbacks.hf import STATE_FILE, LogHistorySink, _probe_loader, model_loss  # noqa: E402
from geomonitor.monitor.engine import MonitorWarning, make_probe  # noqa: E402

N_SAMPLES, SEQ, BATCH = 40, 16, 8  # 5 optimizer steps per epoch
LAYERS = ["transformer.h.0", "transformer.h.1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and lose on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def token_dataset(n: int = N_SAMPLES) -> list[dict[str, torch.Tensor]]:
    """Arithmetic progressions mod 64: sample i starts at 7i mod 64 with stride 1 + i mod 3."""
    rows = []
    for i in range(n):
        ids = (7 * i + (1 + i % 3) * torch.arange(SEQ)) % 64
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)  # the test's own model init; the library never seeds the global RNG
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))


def training_args(tmp_path, **overrides) -> TrainingArguments:
    kw = dict(output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=BATCH,
              report_to=[], logging_steps=4, use_cpu=True, save_strategy="no", seed=0,
              lr_scheduler_type="constant", disable_tqdm=True)
    kw.update(overrides)
    return TrainingArguments(**kw)


def callback(**overrides) -> GeometryTrainerCallback:
    kw = dict(layers="transformer.h.?", reduce="mean", probe_size=32, id_every_n_steps=4,
              sharpness_every_n_steps=4, sharpness_max_hvp=10, topology_every_n_steps=None, topology_every_n_epochs=None,
              np_every_n_epochs=1, max_overhead=None, strict=True)
    kw.update(overrides)
    return GeometryTrainerCallback(**kw)


def geometry_rows(log_history: list[dict]) -> dict[int, dict[str, float]]:
    """Geometry values by the step they describe, merged."""
    out: dict[int, dict[str, float]] = {}
    for row in log_history:
        values = {k: v for k, v in row.items() if k.startswith("geometry/")}
        if values:
            out.setdefault(row["step"], {}).update(values)
    return out


def fit(tmp_path, cb=None, **arg_overrides):
    trainer = Trainer(tiny_gpt2(), training_args(tmp_path, **arg_overrides),
                      train_dataset=token_dataset(), callbacks=[cb] if cb is not None else None)
    trainer.train()
    return trainer


# -- a run reporting to W&B, every family on -----------------------------------------------------
def test_trainer_run_logs_every_family_to_log_history_and_wandb(tmp_path, wandb_dir):
    import wandb

    cb = callback(topology_every_n_epochs=1, topology_landmarks=None)
    trainer = fit(tmp_path, cb, report_to=["wandb"])
    cb_errors = cb.errors
    wandb.finish()
    assert cb_errors == {}
    rows = geometry_rows(trainer.state.log_history)
    per_step = ["geometry/sharpness", "geometry/eos_ratio", "geometry/n_hvp"] + [
        f"geometry/id/{layer}" for layer in LAYERS]
    for step in (4, 8, 12):
        assert set(per_step) <= set(rows[step]), (step, sorted(rows[step]))
    for step in (5, 10, 12):  # epoch ends: 40 samples / 8 per step, the last epoch cut by max_steps
        assert "geometry/neural_persistence/mean" in rows[step]
        for layer in LAYERS:
            assert any(k.startswith(f"geometry/ph/{layer}/") for k in rows[step]), (step, sorted(rows[step]))
    assert {s for s, r in rows.items() if "geometry/sharpness" in r} == {4, 8, 12}
    assert {s for s, r in rows.items() if "geometry/neural_persistence/mean" in r} == {5, 10, 12}
    assert not any("geometry/errors" in r for r in rows.values())
    # eos_ratio = sharpness / threshold, Adam's threshold (2 + 2 beta1) / ((1 - beta1) lr)
    args = trainer.args
    threshold = (2 + 2 * args.adam_beta1) / ((1 - args.adam_beta1) * args.learning_rate)
    for step in (4, 8, 12):
        r = rows[step]
        assert r["geometry/eos_ratio"] == pytest.approx(r["geometry/sharpness"] / threshold, rel=1e-9)
        assert 1 <= r["geometry/n_hvp"] <= 10
        assert math.isfinite(r["geometry/sharpness"])
        for layer in LAYERS:  # 32 points with 32 features: an ID between 0 and 32
            assert 0 < r[f"geometry/id/{layer}"] < 32

    run_file = wandb_offline.find_run_file(str(wandb_dir))
    history = wandb_offline.history(run_file)
    logged: dict[int, set[str]] = {}
    for row in history:
        if "geometry/step" in row:
            logged.setdefault(int(row["geometry/step"]), set()).update(
                k for k in row if k.startswith("geometry/"))
    for step in (4, 8, 12):
        assert set(per_step) <= logged[step], (step, sorted(logged.get(step, ())))
    assert all("geometry/neural_persistence/mean" in logged[s] for s in (5, 10, 12))
    # one row per delivery: values of steps between two Trainer logs (every 4) are not merged
    for row in history:
        if "geometry/step" in row:
            assert row["train/global_step"] == row["geometry/step"]
    for row in history:  # the W&B values are the log_history values
        if row.get("geometry/step") == 8 and "geometry/sharpness" in row:
            assert row["geometry/sharpness"] == pytest.approx(rows[8]["geometry/sharpness"], rel=1e-12)
    definitions = wandb_offline.metric_definitions(run_file)
    assert {"name": "", "glob_name": "geometry/*", "step_metric": "geometry/step"} in definitions
    for layer in LAYERS:  # persistence diagrams as tables, at every epoch end
        assert {row["geometry/step"] for row in history
                if f"geometry/ph/{layer}/diagram_table/nrows" in row} == {5, 10, 12}
    profiles = [row for row in history if "geometry/id_profile_table/nrows" in row]
    assert [(row["geometry/step"], row["geometry/id_profile_table/nrows"]) for row in profiles] == [
        (4, 2), (8, 4), (12, 6)]  # one chart: the two blocks at each step measured so far


# -- the training run itself ---------------------------------------------------------------------
def test_training_is_bitwise_identical_with_and_without_the_callback(tmp_path):
    cb = callback()
    with_cb = fit(tmp_path / "a", cb)
    without = fit(tmp_path / "b")
    a, b = with_cb.model.state_dict(), without.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # dropout is on: the RNG streams were untouched
    losses = [[r["loss"] for r in t.state.log_history if "loss" in r] for t in (with_cb, without)]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    assert geometry_rows(without.state.log_history) == {}

    # the probe set: 32 distinct dataset rows, collated like the training batches
    probe = cb.probe
    idx = probe.indices.tolist()
    assert len(idx) == 32 and idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < N_SAMPLES
    rows = token_dataset()
    assert set(probe.batch) == {"input_ids", "labels"}
    for key in ("input_ids", "labels"):
        assert torch.equal(probe.batch[key], torch.stack([rows[i][key] for i in idx]))


def test_resumed_trainer_continues_the_series(tmp_path):
    first = callback(np_every_n_epochs=None)
    full = fit(tmp_path, first, save_strategy="steps", save_steps=4, max_steps=8)
    ckpt = tmp_path / "out" / "checkpoint-4"
    saved = torch.load(ckpt / STATE_FILE, weights_only=True)
    assert saved["last"] == {"id": 4, "sharpness": 4}

    again = callback(np_every_n_steps=None, np_every_n_epochs=None)
    args = training_args(tmp_path, save_strategy="steps", save_steps=4, max_steps=8)
    resumed = Trainer(tiny_gpt2(), args, train_dataset=token_dataset(), callbacks=[again])
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert torch.equal(again.probe.indices, first.probe.indices)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the Trainer resumed exactly
    rows_full = geometry_rows(full.state.log_history)
    rows_resumed = geometry_rows(resumed.state.log_history)
    assert sorted(rows_resumed) == [4, 8]  # step 4 from the checkpoint's log history, 8 measured
    # the warm start and generator were restored: the same numbers as the uninterrupted run
    assert rows_resumed[8] == pytest.approx(rows_full[8], rel=1e-6)


def test_resume_without_saved_state_warns_and_starts_afresh(tmp_path):
    fit(tmp_path, callback(np_every_n_epochs=None), save_strategy="steps", save_steps=4, max_steps=4)
    ckpt = tmp_path / "out" / "checkpoint-4"
    (ckpt / STATE_FILE).unlink()
    cb = callback(np_every_n_steps=None, np_every_n_epochs=None)
    trainer = Trainer(tiny_gpt2(), training_args(tmp_path, max_steps=8),
                      train_dataset=token_dataset(), callbacks=[cb])
    with pytest.warns(MonitorWarning, match="without .*geomonitor_state.pt"):
        trainer.train(resume_from_checkpoint=str(ckpt))
    assert cb.monitor._last == {"id": 8, "sharpness": 8}


# -- state, pickling, ranks ----------------------------------------------------------------------
def test_state_dict_round_trip_and_pickling(tmp_path):
    cb = callback()
    assert cb.state_dict() == {}
    clone = pickle.loads(pickle.dumps(cb))
    assert copy.deepcopy(cb).monitor is None and clone.monitor is None
    trainer = fit(tmp_path, cb, max_steps=4)
    assert cb.monitor.cap.horizon == 4  # the cost cap plans over the Trainer's max_steps
    state = cb.state_dict()
    # 4 steps cut the first epoch short: neural persistence ran at its end, step 4
    assert state["last"] == {"id": 4, "sharpness": 4, "neural_persistence": 4}
    assert state["probe"]["indices"].numel() == 32

    with pytest.warns(MonitorWarning, match="no checkpoint folder"):  # saving outside output_dir
        cb.on_save(training_args(tmp_path / "elsewhere"), trainer.state, trainer.control)
    assert not (tmp_path / "elsewhere").exists()

    restored = callback()
    restored.load_state_dict(state)
    assert restored.state_dict() == state  # pending until the next train()
    after = pickle.loads(pickle.dumps(cb))  # a used callback pickles too: its state travels
    assert after.monitor is None and after.state_dict()["last"] == state["last"]
    # loaded before train(): the probe indices and the schedule memory come from the state
    trainer2 = Trainer(tiny_gpt2(), training_args(tmp_path / "r", max_steps=4),
                       train_dataset=token_dataset(), callbacks=[restored])
    trainer2.train()
    assert torch.equal(restored.probe.indices, cb.probe.indices)
    assert geometry_rows(trainer2.state.log_history) == {}  # step 4 was measured, per the state
    assert restored.state_dict()["last"] == {"id": 4, "sharpness": 4, "neural_persistence": 4}
    assert trainer.state.global_step == trainer2.state.global_step == 4


def test_a_run_that_never_ends_is_closed_with_the_callback(tmp_path):
    # a Trainer that raises never calls on_train_end; the monitor must not outlive the callback
    cb = callback(topology_every_n_steps=1, topology_every_n_epochs=None)
    loader = torch.utils.data.DataLoader(token_dataset(), batch_size=BATCH)
    cb.on_train_begin(training_args(tmp_path), TrainerState(), None, model=tiny_gpt2(),
                      train_dataloader=loader)
    cb.on_step_end(None, TrainerState(global_step=1), None)
    monitor = cb.monitor
    assert not monitor._closed
    del cb
    gc.collect()
    assert monitor._closed


def test_only_world_process_zero_writes():
    values = {"geometry/sharpness": 2.5}
    zero, other = TrainerState(is_world_process_zero=True), TrainerState(is_world_process_zero=False)
    LogHistorySink(zero).log_metrics(values, 3)
    LogHistorySink(other).log_metrics(values, 3)
    assert zero.log_history == [{"geometry/sharpness": 2.5, "step": 3}]
    assert other.log_history == []


def test_iterable_dataset_probe_leaves_loader_and_rng_alone():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(token_dataset())

    train_loader = torch.utils.data.DataLoader(Stream(), batch_size=BATCH)
    loader = _probe_loader(train_loader, seed=0)
    assert loader is not train_loader and loader.collate_fn is train_loader.collate_fn
    before = torch.get_rng_state()
    probe = make_probe(loader, 12, 0)
    assert torch.equal(torch.get_rng_state(), before)
    rows = token_dataset()[:12]
    assert torch.equal(probe.batch["input_ids"], torch.stack([r["input_ids"] for r in rows]))


# -- every raise ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"layers": ""}, "layers must be"),
    ({"reduce": "max"}, "reduce must be one of"),
    ({"probe_size": 0}, "probe_size"),
    ({"probe_seed": -1}, "probe_seed must be a non-negative int"),
    ({"probe_data": [1, 2]}, "probe_data must be None"),
    ({"strict": 1}, "strict must be True or False"),
    ({"max_pending": 0}, "max_pending"),
    ({"id_method": "knn"}, "id_method must be one of"),
    ({"sharpness_max_hvp": 0}, "sharpness_max_hvp"),
    ({"sharpness_tol": 0.0}, "sharpness_tol must be a positive float"),
    ({"sharpness_probe_size": -2}, "sharpness_probe_size"),
    ({"topology_landmarks": 2}, "topology_landmarks must be >= 3"),
    ({"log_diagrams": "yes"}, "log_diagrams must be True or False"),
    ({"max_overhead": 1.5}, r"max_overhead must be a float in \(0, 1\]"),
    ({"id_every_n_steps": 0}, "id_every_n_steps"),
    ({"np_every_n_epochs": 1.5}, "np_every_n_epochs"),
    ({"loss_fn": "loss"}, "loss_fn must be callable"),
    ({"forward_fn": 3}, "forward_fn must be callable"),
    ({"id_every_n_steps": None, "sharpness_every_n_steps": None, "topology_every_n_steps": None,
      "np_every_n_steps": None, "symmetry_every_n_steps": None}, "needs at least one family on"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometryTrainerCallback(**kwargs)


def test_hook_and_helper_raises(tmp_path):
    args, state = training_args(tmp_path), TrainerState()
    with pytest.raises(ValueError, match="needs the model"):
        GeometryTrainerCallback().on_train_begin(args, state, None)
    with pytest.raises(ValueError, match="passed no train_dataloader"):
        _probe_loader(None, 0)
    model = tiny_gpt2()
    with pytest.raises(TypeError, match="needs a dict batch"):
        model_loss(model, torch.zeros(2, SEQ, dtype=torch.long))
    with pytest.raises(TypeError, match="returned no loss .* needs 'labels'"):
        model_loss(model, {"input_ids": torch.zeros(2, SEQ, dtype=torch.long)})
    # the loss it returns is the model's own causal-LM cross-entropy
    batch = {k: torch.stack([r[k] for r in token_dataset(4)]) for k in ("input_ids", "labels")}
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
        expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64),
                                                     batch["labels"][:, 1:].reshape(-1))
        assert float(model_loss(model, batch)) == pytest.approx(float(expected), rel=1e-5)
