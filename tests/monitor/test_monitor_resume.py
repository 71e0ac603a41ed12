"""Resuming a Monitor with other arguments or other data: the arguments win, the state that
still applies is restored, and one warning says what differed (never a silent change)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.monitor import Monitor, MonitorWarning
from geomonitor.monitor.engine import default_forward


def _loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _setup(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    X, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8)


def _monitor(model, loader, **kw):
    opts = dict(id_every_n_steps=None, topology_every_n_steps=None, topology_every_n_epochs=None, np_every_n_steps=None, np_every_n_epochs=None,
                symmetry_every_n_steps=None,
                sharpness_every_n_steps=1, max_overhead=None, probe_size=32)
    opts.update(kw)
    return Monitor(model, probe=loader, loss_fn=_loss, **opts)


def _state_after_one_step(**kw):
    model, loader = _setup()
    mon = _monitor(model, loader, **kw)
    mon.step(1)
    state = mon.state_dict()
    mon.close()
    return state


def test_changed_solver_arguments_apply_and_are_named_in_one_warning():
    state = _state_after_one_step(sharpness_max_hvp=3, sharpness_tol=1e-3)
    model, loader = _setup()
    mon = _monitor(model, loader, sharpness_max_hvp=9, sharpness_tol=1e-6)
    with pytest.warns(RuntimeWarning, match=r"max_hvp=9 \(checkpoint: 3\), tol=1e-06 \(checkpoint: 0.001\)"):
        mon.load_state_dict(state)
    (fam,) = mon.families
    assert fam.estimator.max_hvp == 9 and fam.estimator.tol == 1e-6
    # the warm start of the checkpoint is what still applies
    assert torch.equal(fam.estimator._vectors, state["families"]["sharpness"]["estimator"]["eigenvectors"])
    mon.close()


def test_changed_probe_arguments_redraw_the_probe_set_with_a_warning():
    state = _state_after_one_step(probe_size=32, probe_seed=0)
    model, loader = _setup()
    mon = _monitor(model, loader, probe_size=16, probe_seed=3)
    with pytest.warns(MonitorWarning, match=r"probe_size=16 \(checkpoint: 32\), probe_seed=3 "
                      r"\(checkpoint: 0\).*a new probe set is drawn"):
        mon.load_state_dict(state)
    mon.step(2)
    # the new probe set is the one these arguments draw, not the checkpoint's
    fresh_model, fresh_loader = _setup()
    fresh = _monitor(fresh_model, fresh_loader, probe_size=16, probe_seed=3)
    fresh.step(1)
    assert torch.equal(mon.probe.indices, fresh.probe.indices) and len(mon.probe) == 16
    mon.close()
    fresh.close()


def test_same_arguments_resume_silently_and_keep_the_probe_set():
    state = _state_after_one_step()
    model, loader = _setup()
    mon = _monitor(model, loader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mon.load_state_dict(state)
        mon.step(2)
    assert mon.probe.indices.tolist() == state["probe"]["indices"].tolist()
    mon.close()


def test_a_probe_set_that_does_not_fit_smaller_data_is_redrawn_with_a_warning():
    state = _state_after_one_step()  # indices drawn from 120 samples
    model, small = _setup(n=20)
    mon = _monitor(model, small)
    mon.load_state_dict(state)
    with pytest.warns(MonitorWarning, match=r"the probe set in the checkpoint does not fit this "
                      r"data .*a new probe set is drawn"):
        mon.step(2)
    assert mon.probe.indices.max() < 20 and len(mon.probe) == 20  # the whole smaller dataset
    assert mon.errors == {}
    mon.close()


def test_dict_batches_name_forward_fn_in_the_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    batch = {"x": torch.randn(5, 4), "y": torch.zeros(5, dtype=torch.long)}
    with pytest.raises(TypeError, match=r"pass forward_fn=lambda model, batch: model\(batch\['x'\]\)"):
        default_forward(Net(), batch)
    mon = Monitor(Net(), probe=torch.utils.data.DataLoader([{"x": torch.randn(4), "y": 0}] * 10),
                  id_every_n_steps=1, sharpness_every_n_steps=None, topology_every_n_steps=None, topology_every_n_epochs=None,
                  np_every_n_steps=None, np_every_n_epochs=None, symmetry_every_n_steps=None, max_overhead=None,
                  probe_size=8)
    with pytest.warns(MonitorWarning, match=r"id measurement failed.*forward_fn="):
        mon.step(1)
    assert mon.errors == {"id": 1}
    mon.close()
    rows = [{"x": x, "y": 0} for x in torch.randn(10, 4, generator=torch.Generator().manual_seed(0))]
    ok = Monitor(Net(), probe=torch.utils.data.DataLoader(rows),
                 forward_fn=lambda m, b: m(b["x"]), id_every_n_steps=1,
                 sharpness_every_n_steps=None, topology_every_n_steps=None, topology_every_n_epochs=None,
                 np_every_n_steps=None, np_every_n_epochs=None, symmetry_every_n_steps=None, max_overhead=None,
                 probe_size=8)
    assert "geometry/id/fc" in ok.step(1) and ok.errors == {}
    ok.close()


def test_a_family_turned_off_and_on_again_across_resumes_keeps_its_state():
    # sharpness and ID at step 1; resumed without sharpness (its entry kept, one warning),
    # then with it again: its warm start is the step-1 one, bit for bit
    state = _state_after_one_step(id_every_n_steps=1)
    saved = state["families"]["sharpness"]["estimator"]["eigenvectors"]
    model, loader = _setup()
    off = _monitor(model, loader, id_every_n_steps=1, sharpness_every_n_steps=None)
    with pytest.warns(MonitorWarning, match=r"other families than the checkpoint's: sharpness not "
                      r"running now .*every other family resumes"):
        off.load_state_dict(state)
    off.step(2)
    middle = torch.load(_buffer(off.state_dict()), weights_only=True)
    off.close()
    assert set(middle["families"]) == {"id", "sharpness"} and middle["last"]["id"] == 2
    model, loader = _setup()
    on = _monitor(model, loader, id_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same families as the checkpoint: silent
        on.load_state_dict(middle)
    sharp = next(f for f in on.families if f.name == "sharpness")
    assert torch.equal(sharp.estimator._vectors, saved)
    on.close()


def test_a_family_new_at_the_resume_starts_fresh_with_a_warning():
    state = _state_after_one_step()
    model, loader = _setup()
    mon = _monitor(model, loader, id_every_n_steps=1)
    with pytest.warns(MonitorWarning, match=r"id start fresh \(no state in the checkpoint\); "
                      r"every other family resumes"):
        mon.load_state_dict(state)
    assert mon.measured == {"sharpness": 1} and "id" not in mon._last
    mon.close()


def _buffer(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf
