"""NeuralPersistenceEarlyStopping: the stop epoch against a direct simulation of Rieck et al.'s
Algorithm 2 on the same values, the logged metric, resume, and the real neural persistence."""
from __future__ import annotations

import types

import pytest
import pytorch_lightning as pl
import torch

from geomonitor.callbacks.early_stopping import NP_KEY, NeuralPersistenceEarlyStopping

_FAST = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
             logger=False, enable_checkpointing=False)


class _Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 6)
        self.fc2 = torch.nn.Linear(6, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.fc2(torch.relu(self.fc1(x))), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _scripted(values):
    it = iter(values)

    def measure(model):
        v = next(it)
        return {NP_KEY: v, "geometry/neural_persistence/fc1": v / 2,
                "geometry/neural_persistence/fc2": v * 2}
    return measure


def _algorithm2(values, g, delta_min, burn_in=0):
    """Rieck et al. 2019, Algorithm 2, verbatim: the epoch (0-based) at which training stops."""
    best, count = 0.0, 0
    for epoch, p in enumerate(values):
        if epoch < burn_in:
            continue
        if p > best + delta_min:
            best, count = p, 0
        else:
            count += 1
        if count >= g:
            return epoch
    return None


@pytest.mark.parametrize("values,g,delta,burn_in", [
    ([0.1, 0.2, 0.3, 0.3, 0.29, 0.31, 0.305, 0.30, 0.30, 0.5, 0.6, 0.7], 3, 0.0, 0),
    ([0.1, 0.2, 0.3, 0.3, 0.29, 0.31, 0.305, 0.30, 0.30, 0.5, 0.6, 0.7], 2, 0.0, 0),
    ([0.1, 0.2, 0.21, 0.215, 0.219, 0.30, 0.301, 0.302, 0.303, 0.4, 0.5, 0.6], 3, 0.01, 0),
    ([0.5, 0.4, 0.3, 0.2, 0.6, 0.61, 0.62, 0.6, 0.6, 0.6, 0.6, 0.6], 2, 0.0, 4),
])
def test_stop_epoch_matches_algorithm_2(values, g, delta, burn_in):
    expected = _algorithm2(values, g, delta, burn_in)
    assert expected is not None
    es = NeuralPersistenceEarlyStopping(patience=g, min_delta=delta, burn_in=burn_in, measure=_scripted(values))
    trainer = pl.Trainer(**_FAST, max_epochs=len(values), callbacks=[es])
    trainer.fit(_Net(), _loader())
    assert trainer.current_epoch == expected + 1  # stopped after epoch `expected`
    assert es.stopped_epoch == expected
    assert es.history == values[:expected + 1]
    assert float(trainer.callback_metrics[NP_KEY]) == pytest.approx(values[expected])
    assert float(trainer.callback_metrics["geometry/neural_persistence/fc2"]) == pytest.approx(2 * values[expected])


def test_no_stop_while_improving_and_no_validation_needed():
    values = [0.1 * (i + 1) for i in range(6)]
    es = NeuralPersistenceEarlyStopping(patience=1, measure=_scripted(values))
    trainer = pl.Trainer(**_FAST, max_epochs=6, callbacks=[es])
    trainer.fit(_Net(), _loader())  # no val_dataloaders
    assert trainer.current_epoch == 6 and es.stopped_epoch == 0 and _algorithm2(values, 1, 0.0) is None


def test_state_survives_resume(tmp_path):
    values = [0.3, 0.5, 0.4, 0.45, 0.49, 0.48, 0.47]
    es = NeuralPersistenceEarlyStopping(patience=4, measure=_scripted(values[:3]))
    t1 = pl.Trainer(**_FAST, max_epochs=3, callbacks=[es])
    t1.fit(_Net(), _loader())
    path = str(tmp_path / "np.ckpt")
    t1.save_checkpoint(path)
    assert es.wait_count == 1 and float(es.best_score) == pytest.approx(0.5)
    es2 = NeuralPersistenceEarlyStopping(patience=4, measure=_scripted(values[3:]))
    t2 = pl.Trainer(**_FAST, max_epochs=len(values), callbacks=[es2])
    t2.fit(_Net(), _loader(), ckpt_path=path)
    # counter carried over: epochs 2, 3, 4, 5 without improvement -> stop after epoch 5
    assert es2.stopped_epoch == _algorithm2(values, 4, 0.0) == 5


def test_real_neural_persistence_is_logged_and_in_range():
    torch.manual_seed(0)
    net = _Net()
    es = NeuralPersistenceEarlyStopping(patience=50)
    trainer = pl.Trainer(**_FAST, max_epochs=3, callbacks=[es])
    trainer.fit(net, _loader())
    assert len(es.history) == 3
    assert float(trainer.callback_metrics[NP_KEY]) == pytest.approx(es.history[-1])
    assert all(0.0 <= v <= 1.0 for v in es.history)  # normalised (Rieck et al., Theorem 2)
    assert {f"geometry/neural_persistence/{n}" for n in ("fc1", "fc2")} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("kwargs,match", [
    (dict(patience=0), r"patience must be an int >= 1, got 0"),
    (dict(min_delta=-0.1), r"min_delta must be a number >= 0, got -0.1"),
    (dict(min_delta=float("nan")), r"min_delta must be a number >= 0, got nan"),
    (dict(burn_in=-1), r"burn_in must be an int >= 0, got -1"),
    (dict(measure="np"), r"measure must be callable or None, got 'np'"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeuralPersistenceEarlyStopping(**kwargs)
