"""Resuming a Monitor with other schedules: the new schedules apply, and a warning names each
changed option with the checkpoint's value."""
from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.monitor import Monitor, MonitorWarning

_OFF = dict(id_every_n_steps=None, topology_every_n_steps=None, topology_every_n_epochs=None,
            np_every_n_steps=None, np_every_n_epochs=None, symmetry_every_n_steps=None,
            sharpness_every_n_steps=None)


def _monitor(**kw):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    X, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    return Monitor(model, probe=(X, y), loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                   max_overhead=None, probe_size=32, verbose=False, **{**_OFF, **kw})


def _saved(**kw):
    mon = _monitor(**kw)
    for s in (1, 2):
        mon.step(s)
    buf = io.BytesIO()
    torch.save(mon.state_dict(), buf)
    mon.close()
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_changed_schedules_are_named_and_apply():
    state = _saved(sharpness_every_n_steps=2, np_every_n_epochs=1)
    assert state["periods"]["last"] == {"sharpness": 2}
    mon = _monitor(sharpness_every_n_steps=3, np_every_n_epochs=2, np_every_n_steps=5)
    with pytest.warns(MonitorWarning, match=r"Monitor resumed with sharpness_every_n_steps=3 \(checkpoint: 2\), "
                                            r"np_every_n_steps=5 \(checkpoint: None\), np_every_n_epochs=2 "
                                            r"\(checkpoint: 1\): these schedules apply"):
        mon.load_state_dict(state)
    for s in range(3, 13):
        mon.step(s)
    # by hand: every 3rd step, at least 3 steps after the previous point (step 2)
    before = state["measured"]
    assert mon.measured["sharpness"] - before["sharpness"] == len([6, 9, 12])
    assert mon.measured["neural_persistence"] - before.get("neural_persistence", 0) == len([5, 10])
    mon.close()


def test_same_schedules_resume_without_a_warning():
    state = _saved(sharpness_every_n_steps=2)
    mon = _monitor(sharpness_every_n_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonitorWarning)
        mon.load_state_dict(state)
    mon.close()


def test_a_checkpoint_without_schedules_loads_silently():
    state = _saved(sharpness_every_n_steps=2)
    state["periods"].pop("asked", None)  # a checkpoint written before the schedules were saved
    mon = _monitor(sharpness_every_n_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonitorWarning)
        mon.load_state_dict(state)
    mon.close()
