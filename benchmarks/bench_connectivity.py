"""Cost per measurement of the connectivity and equivariance families, in training steps.

For each model (a 64-128-128-10 MLP and a small CNN with BatchNorm on 8x8 inputs) and a probe
set of ``--probe`` samples it times, median of ``--repeats`` runs after one warm-up, side by
side in one process:

* ``train step``: one SGD step (forward, backward, update) on a batch of ``--batch`` samples,
  the unit the costs are expressed in;
* ``bare``: ``n_alpha`` no-grad forwards of the probe set, the floor of any barrier;
* ``barrier``: :meth:`ConnectivityFamily.run` at a measurement after the first (deep copy,
  interpolation, ``n_alpha`` loss evaluations; with BatchNorm ``reset_bn`` doubles them);
* ``instability``: the same measurement when it also spawns the two children
  (``instability_steps`` SGD steps each, on probe batches);
* ``equivariance``: :meth:`EquivarianceFamily.run` with one roll transform on the output and
  two layers (two forwards) and one Lie-derivative flow (forward-mode AD);
* ``weight_matching``: :func:`geomonitor.connectivity.weight_matching` of two independently
  initialised copies (not part of a measurement; for the recipe).

Times are wall-clock medians; ``--cpu`` reports process CPU time instead (less sensitive to
other jobs on a shared machine; with one thread it is the work done).

    python benchmarks/bench_connectivity.py                       # CPU, 2 threads
    BENCH_THREADS=1 python benchmarks/bench_connectivity.py --cpu # 1 thread, CPU time
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from geomonitor.connectivity import weight_matching  # noqa: E402
from geomonitor.monitor.families.connectivity import ConnectivityFamily  # noqa: E402
from geomonitor.monitor.families.equivariance import EquivarianceFamily  # noqa: E402
from geomonitor.monitor.family import Context  # noqa: E402
from geomonitor.monitor.schedule import Every  # noqa: E402


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(),
                         nn.Linear(512, 10))


def ce(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


CLOCK = time.perf_counter


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} on {THREADS} threads, "
            f"Python {platform.python_version()}; load average at the end {load}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-alpha", type=int, default=11)
    ap.add_argument("--instability-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args(argv)
    global CLOCK
    if args.cpu:
        CLOCK = time.process_time
    torch.set_num_threads(THREADS)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.probe, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (args.probe,), generator=g)
    cols = ["model", "params", "train step (ms)", f"bare {args.n_alpha} fwd (ms)", "barrier (ms)",
            "barrier / step", "barrier / bare", "+ instability (ms)", "equivariance (ms)",
            "equivariance / step", "weight_matching (ms)"]
    rows = []
    for name, make in (("MLP 64-128-128-10", mlp), ("CNN 16-32 + BatchNorm", cnn)):
        torch.manual_seed(0)
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        xb, yb = x[:args.batch], y[:args.batch]

        def step():
            opt.zero_grad()
            ce(model, (xb, yb)).backward()
            opt.step()

        def bare():
            with torch.no_grad():
                for _ in range(args.n_alpha):
                    ce(model, (x, y))

        fam = ConnectivityFamily(Every(n_steps=1), n_alpha=args.n_alpha)
        fam.run(Context(model, 1, (x, y), lambda: {}, optimizer=opt, loss_fn=ce))  # the snapshot

        def barrier():
            fam.run(Context(model, 2, (x, y), lambda: {}, optimizer=opt, loss_fn=ce))

        def instability():
            f = ConnectivityFamily(Every(n_steps=1), n_alpha=args.n_alpha, instability_at=0,
                                   instability_steps=args.instability_steps)
            f.run(Context(model, 1, (x, y), lambda: {}, optimizer=opt, loss_fn=ce))

        layers = {"1": lambda h: torch.roll(h, 1, -1)} if name.startswith("CNN") else {"0": None}
        eq = EquivarianceFamily(Every(n_steps=1), {"roll": (lambda z: torch.roll(z, 1, -1), None)},
                                {"roll": layers},
                                flows={"scale": (lambda z, t: z * torch.exp(t), None)})

        def equivariance():
            eq.run(Context(model, 1, (x, y), lambda: {}))

        other = make()
        t_step, t_bare = timed(step, args.repeats * 4), timed(bare, args.repeats)
        t_bar, t_inst = timed(barrier, args.repeats), timed(instability, args.repeats)
        t_eq = timed(equivariance, args.repeats)
        t_wm = timed(lambda: weight_matching(model, other), args.repeats)
        n_params = sum(p.numel() for p in model.parameters())
        row = [name, n_params, f"{1e3 * t_step:.2f}", f"{1e3 * t_bare:.1f}", f"{1e3 * t_bar:.1f}",
               f"{t_bar / t_step:.0f}", f"{t_bar / t_bare:.2f}", f"{1e3 * t_inst:.1f}",
               f"{1e3 * t_eq:.1f}", f"{t_eq / t_step:.0f}", f"{1e3 * t_wm:.1f}"]
        rows.append(row)
        print(" | ".join(map(str, row)), file=sys.stderr, flush=True)
    print(f"\nCommand: `python {' '.join(sys.argv)}`\n")
    print(f"Machine: {machine()}; probe {args.probe} samples (1x8x8), train batch {args.batch}, "
          f"n_alpha {args.n_alpha}, instability_steps {args.instability_steps}; median of "
          f"{args.repeats} runs after one warm-up (train step: {4 * args.repeats}); "
          f"{'process CPU time' if args.cpu else 'wall time'}.\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
