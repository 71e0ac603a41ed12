"""A probe set above LARGE_PROBE samples gets one cost warning at the draw (before any
measurement), naming the families that read it whole and the N^2 distance count; none at or
below the limit, none when the data is smaller than probe_size, none when only sharpness (on
its first 32 samples) reads the probe set."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.monitor import Monitor, MonitorWarning
from geomonitor.monitor.probe import LARGE_PROBE

_OFF = dict(id_every_n_steps=None, topology_every_n_steps=None, topology_every_n_epochs=None,
            np_every_n_steps=None, np_every_n_epochs=None, symmetry_every_n_steps=None,
            sharpness_every_n_steps=None)


def _monitor(n_rows, probe_size, **kw):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    X, y = torch.randn(n_rows, 4, generator=g), torch.randint(0, 3, (n_rows,), generator=g)
    return Monitor(model, probe=(X, y), loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                   max_overhead=None, probe_size=probe_size, verbose=False, **{**_OFF, **kw})


def _size_warnings(mon, steps=(1, 2, 3)):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for s in steps:  # period 1000: the draw happens, no measurement runs
            mon.step(s)
    mon.close(wait=False)
    return [str(w.message) for w in record
            if issubclass(w.category, MonitorWarning) and "the probe set has" in str(w.message)]


def test_large_probe_set_warns_once_at_the_draw_with_the_cost():
    n = LARGE_PROBE + 1
    mon = _monitor(3 * n, probe_size=n, id_every_n_steps=1000, symmetry_every_n_steps=1000)
    (msg,) = _size_warnings(mon)
    assert mon.measured == {} and len(mon.probe) == 8193
    assert msg.startswith("Monitor: the probe set has 8,193 samples (more than 8,192): every "
                          "measurement of id, symmetry runs the model forward on all of them on the "
                          "training thread, and the intrinsic dimension computes N^2 = 6.7e+07 "
                          "pairwise distances per layer (about 2 N^2 D = 1.3e+08 x D flops for a "
                          "layer of width D, 1,024 times the cost at probe_size=256)")
    assert msg.endswith("may take minutes. A probe_size of at most 8,192 keeps it short.")


@pytest.mark.parametrize("n_rows, probe_size", [(LARGE_PROBE, LARGE_PROBE),  # at the limit
                                                (1000, 200_000)])            # the data is smaller
def test_no_warning_at_the_limit_or_when_the_data_is_smaller(n_rows, probe_size):
    mon = _monitor(n_rows, probe_size, id_every_n_steps=1000)
    assert _size_warnings(mon) == []


def test_sharpness_on_its_own_head_does_not_warn_but_on_the_whole_set_does():
    mon = _monitor(LARGE_PROBE + 10, None, sharpness_every_n_steps=1000)
    assert _size_warnings(mon) == []
    mon = _monitor(LARGE_PROBE + 10, None, sharpness_every_n_steps=1000, sharpness_probe_size=None)
    (msg,) = _size_warnings(mon)
    assert "every measurement of sharpness runs the model forward" in msg and "N^2" not in msg
