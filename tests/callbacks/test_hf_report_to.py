"""GeometryTrainerCallback values reach the Trainer's ``report_to`` integrations: a real Hugging
Face ``Trainer`` (tiny GPT-2 from a config) reporting to TensorBoard and to MLflow (file store in
``tmp_path``), every geometry value read back from disk (TensorBoard's event files through
``event_accumulator``, MLflow's store through its client) and compared with the values the
monitor wrote into ``state.log_history``, at the steps they describe, including the background
topology values of the last step; the Trainer's own rows and ``log_history`` left as they are.
"""
from __future__ import annotations

import glob
import importlib.util
import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tensorboard")  # TensorBoardCallback writes through torch.utils.tensorboard
from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.integrations import MLflowCallback, TensorBoardCallback  # noqa: E402

from geomonitor.callbacks.hf import LogHistorySink  # noqa: E402

# the same tiny GPT-2, token data, arguments and callback as test_hf_trainer.py (read from it:
# the tests are imported in importlib mode, not as a package)
_spec = importlib.util.spec_from_file_location(
    "hf_trainer_cases", os.path.join(os.path.dirname(__file__), "test_hf_trainer.py"))
_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cases)
callback, fit, geometry_rows = _cases.callback, _cases.fit, _cases.geometry_rows
tiny_gpt2, token_dataset, training_args = _cases.tiny_gpt2, _cases.token_dataset, _cases.training_args


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cb():
    # id and sharpness every 4 steps, topology (a background process) and neural persistence
    # at every epoch end: 5, 10 and 12 (the last epoch cut by max_steps=12)
    return callback(topology_every_n_epochs=1, topology_landmarks=None)


def _expected(trainer) -> dict[str, dict[int, float]]:
    """key -> step -> value, as the monitor wrote them into log_history."""
    out: dict[str, dict[int, float]] = {}
    for step, values in geometry_rows(trainer.state.log_history).items():
        for key, value in values.items():
            out.setdefault(key, {})[step] = value
    return out


def _trainer_rows(trainer) -> list[dict]:
    return [r for r in trainer.state.log_history if not any(k.startswith("geometry/") for k in r)]


def _scalars(logdir: str) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing import event_accumulator

    out: dict[str, dict[int, float]] = {}
    files = glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)
    assert files, f"no TensorBoard event file below {logdir}"
    for path in files:
        acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                if "geometry/" in tag:  # one value per step (the Trainer logs epoch twice at the end)
                    assert event.step not in out.get(tag, {}), (tag, event.step)
                out.setdefault(tag, {})[event.step] = event.value
    return out


def test_tensorboard_gets_every_geometry_value_at_its_step(tmp_path, monkeypatch):
    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    cb = _cb()
    trainer = fit(tmp_path, cb, report_to=["tensorboard"])
    assert cb.errors == {}
    expected = _expected(trainer)
    assert {s for s in expected["geometry/ph/transformer.h.0/h1_n_bars"]} == {5, 10, 12}
    assert set(expected["geometry/sharpness"]) == {4, 8, 12}

    scalars = _scalars(str(logdir))
    # TensorBoardCallback names every value it gets as it names the Trainer's: "train/" + key
    got = {k[len("train/"):]: v for k, v in scalars.items() if k.startswith("train/geometry/")}
    assert set(got) == set(expected)
    for key, by_step in expected.items():
        assert set(got[key]) == set(by_step), key
        for step, value in by_step.items():
            assert got[key][step] == pytest.approx(value, rel=1e-6, abs=1e-30), (key, step)  # float32

    # the Trainer's own logging is untouched: its loss every logging_steps=4, one row each
    losses = {r["step"]: r["loss"] for r in _trainer_rows(trainer) if "loss" in r}
    assert set(losses) == {4, 8, 12}
    assert set(scalars["train/loss"]) == {4, 8, 12}
    for step, loss in losses.items():
        assert scalars["train/loss"][step] == pytest.approx(loss, rel=1e-6)
    # log_history holds each geometry delivery once (no copy through Trainer.log)
    n_rows = sum(1 for r in trainer.state.log_history if "geometry/sharpness" in r)
    assert n_rows == 3



def _synchronous(mlflow, monkeypatch):
    """MLflowCallback logs asynchronously (mlflow >= 2.8); two batches creating the same nested
    metric folder of the file store race ("[Errno 17] File exists": a batch is lost), whoever
    logs them. The tests log synchronously, so that they read back what was sent."""
    log_metrics = mlflow.log_metrics
    monkeypatch.setattr(mlflow, "log_metrics",
                        lambda *a, **k: log_metrics(*a, **{**k, "synchronous": True}))

def test_mlflow_gets_every_geometry_value_at_its_step(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "geometry-hf")
    _synchronous(mlflow, monkeypatch)
    cb = _cb()
    trainer = fit(tmp_path, cb, report_to=["mlflow"])
    assert cb.errors == {}
    expected = _expected(trainer)

    client = mlflow.tracking.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "geometry-hf"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"  # the geometry values did not reopen or leave a run
    keys = {k for k in run.data.metrics if k.startswith("geometry/")}
    assert keys == set(expected)
    for key, by_step in expected.items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got == pytest.approx(by_step, rel=1e-12), key
    # the Trainer's own metric, logged by MLflowCallback as before
    losses = {r["step"]: r["loss"] for r in _trainer_rows(trainer) if "loss" in r}
    got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert got == pytest.approx(losses, rel=1e-12)
    assert len(client.search_runs([experiment.experiment_id])) == 1


class _Recorder(TrainerCallback):
    """A user callback with an on_log: not an integration, so it sees only the Trainer's logs."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


class _Broken(TensorBoardCallback):
    """An integration whose backend fails on the geometry values (the Trainer's logs pass)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if any(k.startswith("geometry/") for k in logs):
            raise OSError("disk full")


def test_only_integrations_get_the_values_and_a_failing_one_is_warned_once(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "geometry-hf-broken")
    _synchronous(mlflow, monkeypatch)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    recorder, cb = _Recorder(), _cb()
    trainer = Trainer(tiny_gpt2(), training_args(tmp_path, report_to=["mlflow"]),
                      train_dataset=token_dataset(), callbacks=[_Broken(), cb, recorder])
    with pytest.warns(RuntimeWarning, match=r"_Broken failed to log geometry metrics: "
                      r"OSError\('disk full'\); the other integrations still get them") as record:
        trainer.train()
    assert sum("_Broken failed" in str(w.message) for w in record) == 1
    assert not any(k.startswith("geometry/") for _, logs in recorder.logs for k in logs)
    assert [s for s, logs in recorder.logs if "loss" in logs] == [4, 8, 12]
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    got = {m.step for m in client.get_metric_history(run.info.run_id, "geometry/sharpness")}
    assert got == {4, 8, 12}  # MLflow got them although TensorBoard's callback failed


def test_sink_without_a_handler_or_off_rank_zero_calls_no_integration():
    from transformers import TrainerState

    class Seen(TensorBoardCallback):
        def __init__(self):
            self.calls = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.calls.append((state.global_step, logs))

    class Handler:  # what LogHistorySink reads of a CallbackHandler
        model = processing_class = optimizer = lr_scheduler = None
        train_dataloader = eval_dataloader = None

        def __init__(self, callbacks):
            self.callbacks = callbacks

    seen = Seen()
    state = TrainerState(global_step=9)
    handler = Handler([seen, _Recorder()])  # the sink holds it weakly, as the Trainer's
    LogHistorySink(state, handler=handler).log_metrics({"geometry/sharpness": 2.0}, 7)
    assert seen.calls == [(7, {"geometry/sharpness": 2.0})]
    assert state.global_step == 9  # the integrations got a copy at the described step
    LogHistorySink(TrainerState(is_world_process_zero=False), handler=handler).log_metrics(
        {"geometry/sharpness": 3.0}, 8)
    LogHistorySink(TrainerState()).log_metrics({"geometry/sharpness": 4.0}, 8)
    assert len(seen.calls) == 1


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "64"])
def test_wandb_max_layers_must_be_none_or_a_positive_int(value):
    with pytest.raises(ValueError, match=rf"wandb_max_layers must be None or an int >= 1, got {value!r}"):
        callback(wandb_max_layers=value)


def test_hooks_called_by_hand_find_no_handler(tmp_path):
    from transformers import TrainerState

    cb = callback()
    loader = torch.utils.data.DataLoader(token_dataset(), batch_size=8)
    cb.on_train_begin(training_args(tmp_path), TrainerState(), None, model=tiny_gpt2(),
                      train_dataloader=loader)
    assert cb.monitor.sink.inner.handler is None  # values go to log_history (and W&B) only
    cb.on_train_end(None, TrainerState(), None)


def test_state_saved_after_the_last_epoch_end_is_the_closed_monitors(tmp_path):
    from geomonitor.callbacks.hf import STATE_FILE

    # epoch checkpoints: the last one is written after on_epoch_end, where the monitor closed
    cb = callback(np_every_n_epochs=None)
    fit(tmp_path, cb, save_strategy="epoch", max_steps=8)
    assert cb.monitor._closed
    saved = torch.load(tmp_path / "out" / "checkpoint-8" / STATE_FILE, weights_only=True)
    assert saved["last"] == {"id": 8, "sharpness": 8}
    assert set(saved) == set(cb.monitor.state_dict())


class _Boom(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("boom")


def test_a_trainer_that_raises_leaves_no_monitor_behind(tmp_path, monkeypatch):
    import gc

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    cb = callback(id_every_n_steps=1)
    trainer = Trainer(tiny_gpt2(), training_args(tmp_path, report_to=["tensorboard"]),
                      train_dataset=token_dataset(), callbacks=[cb, _Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    monitor = cb.monitor
    assert monitor.sink.inner.handler is trainer.callback_handler  # found while training
    assert not monitor._closed
    del trainer, cb
    gc.collect()
    assert monitor._closed  # the callback's finalizer ran: nothing kept it alive
    assert monitor.sink.inner.handler is None
