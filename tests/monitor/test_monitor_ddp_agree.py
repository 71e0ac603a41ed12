"""Under torch.distributed a measurement that fails on one rank only must not make the ranks
deliver different values: two gloo processes on the CPU, one on-thread family and one
background family each failing once on rank 1 only. Every rank must deliver exactly the same
values at the same steps (rank 0's), and count the failures of both ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from geomonitor.monitor import Every, Family, Measurement, Monitor, metric_key

    class Flaky(Family):
        needs_probe = False
        def __init__(self, name, fail_at, background):
            super().__init__(Every(n_steps=1))
            self.name, self.fail_at, self.background = name, fail_at, background
        def run(self, ctx):
            step, fail = ctx.step, ctx.step == self.fail_at and dist.get_rank() == 1
            def measure():
                if fail:
                    raise RuntimeError(f"{self.name} fails on rank 1 at step {step}")
                return Measurement(metrics={metric_key("ph", self.name, "h1_n_bars"): float(step)})
            return measure if self.background else measure()

    class Recorder:
        def __init__(self):
            self.rows = []
        def log_metrics(self, metrics, step):
            self.rows.append([step, sorted(metrics.items())])

    if __name__ == "__main__":
        rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
        rec = Recorder()
        mon = Monitor(nn.Linear(3, 2), sink=rec, max_overhead=None, verbose=False,
                      families=[Flaky("fg", 2, False), Flaky("bg", 4, True)])
        delivered = [[s, sorted(mon.step(s).items())] for s in range(1, 7)]
        delivered.append(["close", sorted(mon.close().items())])
        result = {"delivered": delivered, "sink": rec.rows, "errors": mon.errors,
                  "state_errors": mon.state_dict()["errors"]}
        dist.barrier()
        dist.destroy_process_group()
        with open(out, "w") as f:
            json.dump(result, f)
''')


def test_ranks_deliver_identical_values_and_count_every_ranks_failures(tmp_path):
    script = tmp_path / "ddp_agree.py"
    script.write_text(_SCRIPT)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), init,
                               str(tmp_path / f"rank{rank}.json")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for p in procs:
        try:
            _, err = p.communicate(timeout=240)  # a guard against a hang only
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    assert r0["delivered"] == r1["delivered"] and r0["sink"] == r1["sink"]
    assert r0["errors"] == r1["errors"] == r0["state_errors"] == {"fg": 1, "bg": 1}
    rows = [(step, dict(items)) for step, items in r0["sink"]]
    # rank 1's failures reach rank 0's sink: the sum over ranks, at the agreeing steps
    errors = [(step, m["geometry/errors"]) for step, m in rows if "geometry/errors" in m]
    assert [v for _, v in errors] == [1.0, 2.0] and errors[0][0] == 2
    # rank 0 measured every step (its values are the ones delivered everywhere)
    for name in ("fg", "bg"):
        key = f"geometry/ph/{name}/h1_n_bars"
        assert sorted(step for step, m in rows if key in m) == [1, 2, 3, 4, 5, 6]
