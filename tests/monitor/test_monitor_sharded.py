"""Every default family under FSDP2 (``fully_shard``) and under DDP with the probe split
across ranks, two CPU processes over gloo, against an unsharded single-process run of the
same training (same batches, same probe): intrinsic dimension and topology within 1e-3
relative, sharpness within 2%, neural persistence and symmetry within 1e-4, no measurement
error (``strict=True`` re-raises any); the FSDP2 training trajectory with the monitor is
bitwise the one without it; under DDP each rank's sharpness loss sees half the slice.

The reference is computed in a third process with no process group, so nothing of the
distributed code runs in it."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from geomonitor.monitor import Monitor

    STEPS, EVERY, BATCH = 4, 2, 16

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                             nn.Linear(16, 4))

    def data():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(STEPS * BATCH, 6, generator=g)
        y = (x[:, :2].sum(1) > 0).long() + 2 * (x[:, 2] > 0).long()
        probe = (torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g))
        return x, y, probe

    SEEN = []

    def loss_fn(model, batch):
        SEEN.append(int(batch[0].shape[0]))
        return F.cross_entropy(model(batch[0]), batch[1])

    def full(t):
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    def train(model, params_of, rank, world, monitor):
        x, y, probe = data()
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        values = {}
        sink = lambda metrics, step: values.setdefault(str(step), {}).update(metrics)
        mon = None
        if monitor:
            mon = Monitor(model, probe=probe, sink=sink, loss_fn=loss_fn, probe_size=32,
                          max_overhead=None, strict=True, verbose=False,
                          layers=["0", "2", "4"], id_every_n_steps=EVERY,
                          sharpness_every_n_steps=EVERY, topology_every_n_steps=EVERY,
                          np_every_n_steps=EVERY, symmetry_every_n_steps=EVERY,
                          sharpness_tol=1e-4, sharpness_max_hvp=40, topology_landmarks=32)
            mon.close_wait_floor = 600.0  # close waits for the topology child, however loaded the box
        share = BATCH // world
        for step in range(1, STEPS + 1):
            rows = slice((step - 1) * BATCH + rank * share, (step - 1) * BATCH + (rank + 1) * share)
            loss = F.cross_entropy(model(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if mon is not None:
                mon.step(step, optimizer=opt)
        if mon is not None:
            mon.close()
        params = [full(p.detach()).tolist() for p in params_of(model)]
        return values, params

    if __name__ == "__main__":
        mode, rank, init, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
        torch.set_num_threads(1)
        result = {}
        if mode == "ref":
            result["values"], result["params"] = train(net(), lambda m: m.parameters(), 0, 1, True)
        else:
            # one process group for both: FSDP2, then DDP (fewer process start-ups)
            dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
            from torch.distributed.fsdp import fully_shard
            from torch.nn.parallel import DistributedDataParallel as DDP
            def sharded():
                m = net()
                for layer in (m[0], m[2], m[4]):
                    fully_shard(layer)
                return fully_shard(m)
            fsdp = result["fsdp"] = {}
            fsdp["values"], fsdp["params"] = train(sharded(), lambda m: m.parameters(), rank, 2, True)
            fsdp["local"] = [type(p).__name__ for p in sharded().parameters()]
            _, fsdp["control"] = train(sharded(), lambda m: m.parameters(), rank, 2, False)
            SEEN.clear()
            ddp = result["ddp"] = {}
            ddp["values"], ddp["params"] = train(DDP(net()), lambda m: m.module.parameters(), rank, 2, True)
            ddp["seen"] = list(SEEN)
            dist.barrier()
            dist.destroy_process_group()
        with open(out, "w") as f:
            json.dump(result, f)
''')


def _launch(tmp_path, mode: str, ranks) -> list[dict]:
    script = tmp_path / "sharded_monitor.py"
    script.write_text(_SCRIPT)
    init = f"file://{tmp_path / f'rendezvous_{mode}'}"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    outs = [tmp_path / f"{mode}{r}.json" for r in ranks]
    procs = [subprocess.Popen([sys.executable, str(script), mode, str(r), init, str(o)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, o in zip(ranks, outs)]
    return procs, outs


def _collect(procs, outs) -> list[dict]:
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)  # a guard against a hang only
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-4000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    started = {mode: _launch(tmp, mode, ranks) for mode, ranks in (("ref", [0]), ("dist", [0, 1]))}
    done = {mode: _collect(*started[mode]) for mode in started}
    return {"ref": done["ref"], "fsdp": [r["fsdp"] for r in done["dist"]],
            "ddp": [r["ddp"] for r in done["dist"]]}


def _tolerance(key: str) -> tuple[float, float]:
    """(relative, absolute) tolerance of a key, by family."""
    if key.startswith("geometry/sharpness") or key.startswith("geometry/eos_ratio"):
        return 0.02, 0.0
    if key.startswith("geometry/id/") or key.startswith("geometry/ph/"):
        return 1e-3, 1e-6
    return 1e-4, 1e-6  # neural persistence, symmetry, neural collapse


_SKIP = ("geometry/n_hvp",)  # the solver's path, not a measured value


def _compare(got: dict, ref: dict) -> int:
    assert set(got) == set(ref)  # the same steps
    checked = 0
    for step, metrics in ref.items():
        assert set(got[step]) == set(metrics), step
        for key, want in metrics.items():
            if key in _SKIP:
                continue
            rel, tol = _tolerance(key)
            assert math.isclose(got[step][key], want, rel_tol=rel, abs_tol=tol), (step, key, got[step][key], want)
            checked += 1
    return checked


def _families(values: dict) -> set[str]:
    keys = {k for m in values.values() for k in m}
    return {name for name in ("geometry/id/", "geometry/sharpness", "geometry/ph/",
                              "geometry/neural_persistence/", "geometry/symmetry/",
                              "geometry/neural_collapse/")
            if any(k.startswith(name) for k in keys)}


def test_reference_measures_every_family(runs):
    (ref,) = runs["ref"]
    assert _families(ref["values"]) == {"geometry/id/", "geometry/sharpness", "geometry/ph/",
                                        "geometry/neural_persistence/", "geometry/symmetry/",
                                        "geometry/neural_collapse/"}
    assert sorted(ref["values"], key=int) == ["2", "4"]
    assert all("geometry/errors" not in m for m in ref["values"].values())


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_every_family_equals_the_unsharded_run(runs, mode):
    (ref,) = runs["ref"]
    for rank, result in enumerate(runs[mode]):
        assert _compare(result["values"], ref["values"]) > 40, rank
    # the trained parameters agree with the unsharded run's (same batches, float rounding)
    for rank_params in (r["params"] for r in runs[mode]):
        for got, want in zip(rank_params, ref["params"]):
            flat_g, flat_w = _flat(got), _flat(want)
            assert max(abs(a - b) for a, b in zip(flat_g, flat_w)) < 1e-5


def _flat(x):
    return [v for item in x for v in _flat(item)] if isinstance(x, list) else [x]


def test_fsdp_parameters_are_sharded_and_training_is_bitwise_unchanged(runs):
    for result in runs["fsdp"]:
        assert set(result["local"]) == {"DTensor"}  # the measured model really was sharded
        assert result["params"] == result["control"]  # bitwise: the monitor left no trace


def test_ddp_sharpness_measures_each_rank_share(runs):
    # each rank's loss saw 16 of the 32 samples of the sharpness slice, never the whole slice
    for result in runs["ddp"]:
        assert result["seen"] and set(result["seen"]) == {16}
