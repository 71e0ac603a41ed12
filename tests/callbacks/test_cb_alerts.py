"""GeometryAlerts in real Lightning fits: each rule fires on a constructed failing run, stays
silent on a healthy one; W&B alerts read back from the offline run file; stop actions; resume.

Geometry inputs come from small reference callbacks defined here, independent of the monitor
callbacks: the top Hessian eigenvalue by dense ``torch.linalg.eigvalsh`` in float64, and the
intrinsic dimension by scikit-dimension's TwoNN.
"""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

import wandb_offline
from geomonitor.callbacks.alerts import GeometryAlerts
from geomonitor.monitor.alerts import (EdgeOfStability, GradNormExplosion, LossSpike, NonFinite,
                                       RepresentationCollapse)

_FAST = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
             logger=False, enable_checkpointing=False)


class _MLP(pl.LightningModule):
    def __init__(self, d_in=4, hidden=3, d_out=1, lr=0.1, opt="sgd", loss="mse", nan_at=None, collapse_at=None):
        super().__init__()
        self.fc1 = torch.nn.Linear(d_in, hidden)
        self.fc2 = torch.nn.Linear(hidden, d_out)
        self.lr, self.opt, self.loss_kind = lr, opt, loss
        self.nan_at, self.collapse_at = nan_at, collapse_at

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def loss_of(self, x, y):
        out = self(x)
        if self.loss_kind == "mse":
            return (out - y).pow(2).mean()
        return torch.nn.functional.cross_entropy(out, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.nan_at is not None and self.global_step == self.nan_at:
            x = x.clone()
            x[0, 0] = float("nan")  # a corrupted sample
        if self.collapse_at is not None and self.global_step >= self.collapse_at:
            with torch.no_grad():  # project the hidden layer onto one direction: rank 1
                u = self.fc1.weight[0] / self.fc1.weight[0].norm()
                w = self.fc1.weight
                w.copy_(torch.outer(w @ u, u))
            self.fc1.weight.requires_grad_(False)  # no gradient: SGD leaves it rank one
        return self.loss_of(x, y)

    def configure_optimizers(self):
        if self.opt == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class _DenseEoS(pl.Callback):
    """Reference sharpness: full Hessian of the full-batch loss, eigvalsh in float64."""

    def __init__(self, x, y, every=1):
        self.x, self.y, self.every = x, y, every
        self.ratios = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every:
            return
        names = [n for n, _ in pl_module.named_parameters()]
        shapes = [p.shape for _, p in pl_module.named_parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()]).double()

        def f(v):
            params, i = {}, 0
            for n, s in zip(names, shapes):
                params[n] = v[i:i + s.numel()].reshape(s)
                i += s.numel()
            out = torch.func.functional_call(pl_module, params, (self.x.double(),))
            if pl_module.loss_kind == "mse":
                return (out - self.y.double()).pow(2).mean()
            return torch.nn.functional.cross_entropy(out, self.y)

        h = torch.func.hessian(f)(flat)
        lam = float(torch.linalg.eigvalsh(h)[-1])
        ratio = lam * pl_module.lr / 2.0 if math.isfinite(lam) else math.inf
        self.ratios.append(ratio)
        trainer.callback_metrics["geometry/eos_ratio"] = torch.tensor(ratio)


class _SkdimID(pl.Callback):
    """Reference intrinsic dimension of fc1's output on a fixed probe set (scikit-dimension TwoNN)."""

    def __init__(self, probe, every=5):
        self.probe, self.every = probe, every
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every:
            return
        import skdim

        with torch.no_grad():
            z = pl_module.fc1(self.probe).double().numpy()
        d = float(skdim.id.TwoNN().fit(z).dimension_)
        self.values.append(d)
        trainer.callback_metrics["geometry/id/fc1"] = torch.tensor(d)


def _regression_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.randn(4, 1, generator=g)).tanh()
    return x, y


def _loader(x, y, batch_size):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def _digits(n=None):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return (x, y) if n is None else (x[:n], y[:n])


# -- edge of stability --------------------------------------------------------------------------
def _eos_fit(tmp_path, wandb_dir=None, actions=None, max_steps=12):
    x, y = _regression_data()
    torch.manual_seed(0)  # the model's initialisation
    model = _MLP()
    with torch.no_grad():  # choose lr = 3 x 2/sharpness at initialisation (full batch GD)
        ref = _DenseEoS(x, y)
        model.lr = 1.0
        ref.on_train_batch_end(type("T", (), {"global_step": 0, "callback_metrics": {}})(), model, None, None, 0)
        model.lr = 3.0 * 2.0 / (2.0 * ref.ratios.pop())
    eos_ref = _DenseEoS(x, y)
    seen = []
    alerts_cb = GeometryAlerts(rules=[EdgeOfStability(threshold=1.2, patience=3), NonFinite()],
                               actions=actions, on_alert=seen.append, wait_duration=30)
    logger = False if wandb_dir is None else WandbLogger(project="alerts", save_dir=str(wandb_dir), offline=True)
    trainer = pl.Trainer(**{**_FAST, "logger": logger}, max_steps=max_steps, callbacks=[eos_ref, alerts_cb],
                         default_root_dir=tmp_path)
    trainer.fit(model, _loader(x, y, batch_size=len(x)))
    return trainer, eos_ref, alerts_cb, seen


def test_eos_alert_fires_on_too_high_lr_and_reaches_wandb(tmp_path, wandb_dir):
    trainer, ref, cb, seen = _eos_fit(tmp_path, wandb_dir)
    trainer.loggers[0].experiment.finish()
    eos = [a for a in seen if a.rule == "eos"]
    assert any(a.rule == "non_finite" for a in seen) or math.isfinite(ref.ratios[-1])
    assert eos, f"no EoS alert; reference ratios {ref.ratios}"
    # independent: the first step with three consecutive reference ratios above 1.2
    first = next(i + 1 for i in range(2, len(ref.ratios)) if all(r > 1.2 for r in ref.ratios[i - 2:i + 1]))
    assert eos[0].step == first
    run = wandb_offline.find_run_file(str(wandb_dir))
    sent = [a for a in wandb_offline.alerts(run) if a["title"] == "Edge of stability exceeded (eos)"]
    assert sent and sent[0]["level"] == "WARN" and sent[0]["wait_duration"] == 30000
    assert sent[0]["text"] == eos[0].text and f"Step {first}" in sent[0]["text"]
    rows = [r for r in wandb_offline.history(run) if "alerts/eos" in r]
    assert rows[0]["alerts/eos"] == 1 and rows[0]["trainer/global_step"] == first


def test_stop_action_stops_the_trainer(tmp_path):
    trainer, ref, cb, seen = _eos_fit(tmp_path, actions={"eos": "stop"}, max_steps=50)
    first_eos = next(a.step for a in seen if a.rule == "eos")
    assert trainer.should_stop and trainer.global_step == first_eos < 50


# -- non-finite -------------------------------------------------------------------------------------
def test_injected_nan_fires_non_finite_and_checkpoint_and_stop(tmp_path):
    x, y = _regression_data()
    seen = []
    cb = GeometryAlerts(rules=[NonFinite(), LossSpike(min_history=2)], on_alert=seen.append,
                        actions={"non_finite": "checkpoint_and_stop"}, checkpoint_dir=str(tmp_path))
    trainer = pl.Trainer(**_FAST, max_steps=30, callbacks=[cb], default_root_dir=tmp_path)
    trainer.fit(_MLP(nan_at=5), _loader(x, y, batch_size=8))
    (alert,) = [a for a in seen if a.rule == "non_finite"]
    assert alert.level == "ERROR" and alert.step == 6  # the 6th optimizer step computed it
    assert "loss = nan" in alert.text and "grad_norm = nan" in alert.text
    assert trainer.global_step == 6
    assert cb.checkpoints == [str(tmp_path / "alert-non_finite-step=6.ckpt")]
    ckpt = torch.load(cb.checkpoints[0], weights_only=False)
    assert ckpt["global_step"] == 6


def test_check_activations_names_activations(tmp_path):
    x, y = _regression_data()
    seen = []
    cb = GeometryAlerts(rules=[NonFinite(cooldown=100)], on_alert=seen.append, check_activations=True)
    pl.Trainer(**_FAST, max_steps=8, callbacks=[cb]).fit(_MLP(nan_at=3), _loader(x, y, batch_size=8))
    # NaN weights from step 4 on; the cooldown keeps it to one alert
    assert [a.step for a in seen] == [4] and "activations = nan" in seen[0].text
    assert cb.rules[0].n_suppressed == 4
    assert cb._hooks == []  # removed at fit end


# -- collapse -----------------------------------------------------------------------------------------
def test_collapsing_representation_fires_collapse(tmp_path):
    torch.manual_seed(0)  # the model's initialisation
    x, y = _digits(400)
    ref = _SkdimID(x[:300], every=5)
    seen = []
    cb = GeometryAlerts(rules=[RepresentationCollapse(drop=0.5)], on_alert=seen.append)
    model = _MLP(d_in=64, hidden=32, d_out=10, lr=0.05, loss="ce", collapse_at=20)
    pl.Trainer(**_FAST, max_steps=30, callbacks=[ref, cb]).fit(model, _loader(x, y, batch_size=16))
    assert [a.rule for a in seen] == ["collapse"]
    before = max(ref.values[:4])  # steps 5..20
    # projected from the 21st batch on; measured after steps 5, 10, ...: first seen at step 25
    assert seen[0].step == 25
    assert seen[0].value < 0.5 * before and seen[0].value < 1.5  # rank one: about a line
    assert before > 4.0
    assert seen[0].threshold == pytest.approx(0.5 * before)


# -- healthy run: silence ---------------------------------------------------------------------------
def test_healthy_digits_training_raises_no_alert(tmp_path):
    x, y = _digits()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    probe = x[:300]
    torch.manual_seed(0)
    model = _MLP(d_in=64, hidden=8, d_out=10, lr=0.1, loss="ce")
    eos_ref = _DenseEoS(x[:128], y[:128], every=15)
    id_ref = _SkdimID(probe, every=15)
    seen = []
    cb = GeometryAlerts(on_alert=seen.append)  # every default rule
    pl.Trainer(**_FAST, max_epochs=4, callbacks=[eos_ref, id_ref, cb]).fit(model, _loader(x, y, batch_size=32))
    assert len(eos_ref.ratios) >= 15 and len(id_ref.values) >= 15  # the rules did get inputs
    assert len(cb.rules[1].history) == 100  # losses fed
    assert seen == [], [a.text for a in seen]


# -- state survives checkpoint and resume ------------------------------------------------------------
def test_state_survives_checkpoint_and_resume(tmp_path):
    x, y = _regression_data()

    def make():
        return GeometryAlerts(rules=[LossSpike(window=50, min_history=2, cooldown=1000, factor=1.01),
                                     GradNormExplosion(window=50, min_history=2), NonFinite()])

    cb1 = make()
    t1 = pl.Trainer(**_FAST, max_steps=12, callbacks=[cb1])
    t1.fit(_MLP(), _loader(x, y, batch_size=8))
    path = str(tmp_path / "mid.ckpt")
    t1.save_checkpoint(path)
    saved = cb1.state_dict()
    assert len(saved["rules"]["loss_spike"]["history"]) == 12
    assert saved["rules"]["loss_spike"]["last_fired"] >= 0  # factor 1.01: a rise fired once
    torch.load(path, weights_only=True)  # plain types only

    cb2 = make()
    t2 = pl.Trainer(**_FAST, max_steps=12, callbacks=[cb2])
    t2.fit(_MLP(), _loader(x, y, batch_size=8), ckpt_path=path)
    assert cb2.state_dict() == saved
    cb3 = make()
    t3 = pl.Trainer(**_FAST, max_steps=16, callbacks=[cb3])
    t3.fit(_MLP(), _loader(x, y, batch_size=8), ckpt_path=path)
    hist = cb3.state_dict()["rules"]["loss_spike"]["history"]
    assert hist[:12] == saved["rules"]["loss_spike"]["history"] and len(hist) == 16
    # the rate limit carried over: no second loss-spike alert within the cooldown
    assert cb3.rules[0].last_fired == saved["rules"]["loss_spike"]["last_fired"]


# -- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(rules=[NonFinite(), NonFinite()]), r"rules must have unique names, got \['non_finite', 'non_finite'\]"),
    (dict(rules=[object()]), r"rules must be geomonitor.monitor.alerts.Rule instances, got <object"),
    (dict(actions={"nope": "stop"}), r"actions names a rule 'nope' that is not among the rules \['eos'"),
    (dict(actions={"eos": "explode"}), r"action for 'eos' must be one of \('warn', 'stop', 'checkpoint_and_stop'\), got 'explode'"),
    (dict(on_alert=3), r"on_alert must be callable or None, got 3"),
    (dict(wait_duration=-1.0), r"wait_duration must be a finite number of seconds >= 0, got -1.0"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometryAlerts(**kwargs)


def test_rank_collapse_reads_the_symmetry_family_rankme_and_id_rules_do_not():
    """RankCollapse is fed geometry/symmetry/<layer>/rankme, RepresentationCollapse only
    geometry/id/<layer>; a RankMe falling below half its running maximum (12 -> 5) fires."""
    import types

    from geomonitor.callbacks.alerts import default_rules

    assert [r.name for r in default_rules()][-2:] == ["collapse", "rank_collapse"]
    cb = GeometryAlerts()
    trainer = types.SimpleNamespace(callback_metrics={})
    fired = []
    for step, (rank, idv) in enumerate([(12.0, 9.0), (11.0, 9.0), (5.0, 9.0)], start=1):
        trainer.callback_metrics = {"geometry/symmetry/fc1/rankme": torch.tensor(rank),
                                    "geometry/id/fc1": torch.tensor(idv)}
        fired += [a.rule for a in cb._geometry(trainer, step)]
    assert fired == ["rank_collapse"]
