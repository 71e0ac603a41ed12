"""Under torch.distributed the cost cap's decisions are rank 0's: two gloo processes on the
CPU, each with its own scripted clock (rank 1's measurements look cheaper, so alone it would
measure more often), measure at exactly the same steps; with the broadcast switched off
(the control) they do not, so the first check can fail."""
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

    class Clock:
        def __init__(self):
            self.t = 0.0
        def __call__(self):
            return self.t

    class Scripted(Family):
        needs_probe = False
        def __init__(self, name, every, clock, cost):
            super().__init__(Every(n_steps=every))
            self.name, self.clock, self.cost, self.steps = name, clock, cost, []
        def run(self, ctx):
            self.steps.append(ctx.step)
            self.clock.t += self.cost
            return Measurement(metrics={metric_key("id", self.name): float(ctx.step)})

    def run(rank, broadcast):
        clock = Clock()
        cost = {0: 4.0, 1: 1.0}[rank]  # the same measurement, timed differently per rank
        fams = [Scripted("a", 5, clock, cost), Scripted("b", 7, clock, cost / 2)]
        kw = {} if broadcast else {"broadcast": lambda decisions: decisions}
        mon = Monitor(nn.Linear(3, 2), families=fams, max_overhead=0.25, clock=clock, **kw)
        for step in range(1, 121):
            clock.t += 1.0
            mon.step(step)
        mon.close()
        return {"a": fams[0].steps, "b": fams[1].steps, "skipped": mon.skipped,
                "stretch": mon.periods.stretch}

    if __name__ == "__main__":
        rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
        result = {"broadcast": run(rank, True), "control": run(rank, False)}
        dist.barrier()
        dist.destroy_process_group()
        with open(out, "w") as f:
            json.dump(result, f)
''')


def test_ranks_measure_at_rank_zeros_steps(tmp_path):
    script = tmp_path / "ddp_monitor.py"
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

    # with the broadcast: rank 1 measured exactly where rank 0 did
    assert r1["broadcast"] == r0["broadcast"]
    # and rank 0 decided as it does alone (its own clock)
    assert r0["broadcast"] == r0["control"]
    # the control: rank 1 alone decides otherwise (it measures more often), so the check
    # above would have failed without the broadcast
    assert r1["control"]["a"] != r0["control"]["a"]
    assert len(r1["control"]["a"]) > len(r0["control"]["a"])
    # rank 0's plan (the periods in force) holds on rank 1, stretched from what was asked
    assert r1["broadcast"]["stretch"] == r0["broadcast"]["stretch"] != {"a": 1, "b": 1}
    # every measured step is a scheduled one, measured or skipped once at most
    for result in (r0["broadcast"], r1["control"]):
        assert all(s % 5 == 0 for s in result["a"]) and all(s % 7 == 0 for s in result["b"])
        assert len(result["a"]) + result["skipped"].get("a", 0) <= 120 // 5
        assert len(result["b"]) + result["skipped"].get("b", 0) <= 120 // 7
