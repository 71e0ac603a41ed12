"""Neural-persistence early stopping under torch.distributed (two gloo processes on the CPU):
the ranks measure different values (rank 1's would stop later), yet every rank's
``Monitor.should_stop`` turns True at the same step -- the step Algorithm 2 (Rieck et al. 2019)
gives on rank 0's values, which the monitor delivers everywhere -- so every rank leaves the
loop together and no collective is left waiting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

RANK0 = [0.1, 0.2, 0.3, 0.25, 0.28, 0.29, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
RANK1 = [0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.5, 0.4, 0.3]

_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from geomonitor.monitor import Every, Family, Measurement, Monitor
    from geomonitor.monitor.early_stopping import NP_KEY, NeuralPersistenceStopping

    class Scripted(Family):
        name = "neural_persistence"
        needs_probe = False
        def __init__(self, values):
            super().__init__(Every(n_steps=1))
            self.values = values
        def run(self, ctx):
            return Measurement(metrics={NP_KEY: self.values[ctx.step - 1]})

    if __name__ == "__main__":
        rank, init, out, values = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
        rule = NeuralPersistenceStopping(patience=3)
        mon = Monitor(nn.Linear(3, 2), max_overhead=None, verbose=False, families=[Scripted(values)],
                      stopping=rule)
        stopped, seen = None, []
        for s in range(1, len(values) + 1):
            seen.append(mon.step(s).get(NP_KEY))
            if mon.should_stop:
                stopped = s
                break
        mon.close()
        dist.barrier()
        dist.destroy_process_group()
        with open(out, "w") as f:
            json.dump({"stopped": stopped, "seen": seen, "rule": rule.state_dict()}, f)
''')


def _algorithm2(values, g):
    best, count = 0.0, 0
    for epoch, p in enumerate(values):
        if p > best:
            best, count = p, 0
        else:
            count += 1
        if count >= g:
            return epoch
    return None


def test_every_rank_stops_at_rank_0s_decision(tmp_path):
    assert _algorithm2(RANK0, 3) != _algorithm2(RANK1, 3)  # alone, the ranks would disagree
    script = tmp_path / "ddp_stop.py"
    script.write_text(_SCRIPT)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), init,
                               str(tmp_path / f"rank{rank}.json"), json.dumps(vals)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank, vals in ((0, RANK0), (1, RANK1))]
    for p in procs:
        try:
            _, err = p.communicate(timeout=240)  # a guard against a hang only
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    expected = _algorithm2(RANK0, 3) + 1  # steps count from 1
    assert r0["stopped"] == r1["stopped"] == expected
    assert r0["seen"] == r1["seen"] == RANK0[:expected]
    assert r0["rule"] == r1["rule"]
