"""Cost per rank of one sharpness measurement under FSDP2 and DDP (probe split), on 1, 2 and
4 CPU processes over gloo, with the numbers the README's "Scaling" section quotes.

Each rank runs ``hessian_eigenvalues`` (finite differences, exactly ``HVPS`` products: the
tolerance is unreachable) on a tanh MLP of P parameters and a probe slice of N samples, after
one warm-up measurement, and reports: seconds per product (wall, this rank), the length of its
Lanczos vectors (P under DDP, about P/W under FSDP2) and the Lanczos basis it holds
(``min(30, P) x`` that length, float32, MiB). Also the one-process reference (W = 1).

    python benchmarks/bench_sharded.py            # W = 1, 2, 4; prints one line per (mode, W)
    python benchmarks/bench_sharded.py --width 512 --probe 128

On a shared 2-core machine the W = 4 lines time-share two cores: per-rank *work* falls with W
(the products' samples and, under FSDP2, the vectors), wall time need not.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

_WORKER = textwrap.dedent('''
    import json, sys, time
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch import nn
    from geomonitor.sharpness.sharded import layout
    from geomonitor.sharpness.spectrum import hessian_eigenvalues

    mode, rank, world, init, out, width, n, hvps = sys.argv[1:9]
    rank, world, width, n, hvps = int(rank), int(world), int(width), int(n), int(hvps)
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                        nn.Linear(width, 10))
    P = sum(p.numel() for p in net.parameters())
    if mode == "fsdp" and world > 1:
        from torch.distributed.fsdp import fully_shard
        for m in (net[0], net[2], net[4]):
            fully_shard(m)
        fully_shard(net)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
    params = list(net.parameters())
    split = layout(params, n)
    xs, ys = x[split.share], y[split.share]
    loss = lambda: F.cross_entropy(net(xs), ys)
    def measure():
        return hessian_eigenvalues(loss, params, tol=1e-12, max_hvp=hvps, hvp="fd", min_cold=hvps,
                                   layout=split, generator=torch.Generator().manual_seed(0))
    measure()
    t0 = time.perf_counter()
    spec = measure()
    dt = time.perf_counter() - t0
    local = spec.eigenvectors.shape[1]
    json.dump({"P": P, "local": local, "samples": xs.shape[0], "per_hvp_s": dt / spec.n_hvp,
               "basis_mib": min(30, P) * local * 4 / 2**20, "top": float(spec.eigenvalues[0])},
              open(out, "w"))
    if world > 1:
        dist.destroy_process_group()
''')


def run(mode: str, world: int, width: int, n: int, hvps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "worker.py")
        with open(script, "w") as f:
            f.write(_WORKER)
        init = f"file://{os.path.join(tmp, 'rdv')}"
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        outs = [os.path.join(tmp, f"r{r}.json") for r in range(world)]
        procs = [subprocess.Popen([sys.executable, script, mode, str(r), str(world), init, o,
                                   str(width), str(n), str(hvps)], env=env) for r, o in enumerate(outs)]
        for p in procs:
            if p.wait(timeout=900) != 0:
                raise RuntimeError(f"{mode} W={world}: a rank failed")
        results = []
        for o in outs:
            with open(o) as f:
                results.append(json.load(f))
        return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--probe", type=int, default=64)
    ap.add_argument("--hvps", type=int, default=10)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    a = ap.parse_args()
    for mode in ("ddp", "fsdp"):
        for world in a.worlds:
            rs = run(mode, world, a.width, a.probe, a.hvps)
            r0 = rs[0]
            print(f"{mode:4s} W={world}: P={r0['P']} samples/rank={r0['samples']} "
                  f"vector/rank={r0['local']} basis/rank={r0['basis_mib']:.2f} MiB "
                  f"s/HVP/rank={max(r['per_hvp_s'] for r in rs):.4f} "
                  f"lambda_max={r0['top']:.5g}", flush=True)


if __name__ == "__main__":
    main()
