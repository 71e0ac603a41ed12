"""Cost of one SymmetryFamily measurement against one training step, side by side.

Models (float32, CPU by default):

* ``quickstart``: the 64-128-64-10 ReLU MLP of ``recipes/quickstart.py``, probe 256, batch 64;
* ``wide``: a 1024-4096-4096-10 ReLU MLP, probe 256, batch 128 (4096-wide layers).

For each it times, median of ``--repeats`` runs after one warm-up (the warm-up includes the
one-time :func:`~geomonitor.symmetry.find_pairs`):

* ``step``: one SGD training step (forward, backward, update) on a batch;
* ``family``: :meth:`SymmetryFamily.run` with the defaults (imbalance, dead and duplicate
  units, weight ranks with ``max_svd_size=1024``, RankMe of the hidden ReLU outputs, neural
  collapse at the classifier);
* ``family, no weight ranks``: the same with ``weight_ranks=False``;

and the full SVD (``torch.linalg.svdvals``) of an n x n matrix against the Lanczos
top singular value the family uses above ``max_svd_size``. Prints a markdown table with the
machine and the command.

    python benchmarks/bench_symmetry.py                     # CPU, 2 threads
    python benchmarks/bench_symmetry.py --device cuda --threads 8
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
    os.environ[_var] = str(THREADS)  # before torch loads its BLAS

import torch  # noqa: E402
from torch import nn  # noqa: E402

from geomonitor.monitor.families.symmetry import SymmetryFamily  # noqa: E402
from geomonitor.monitor.family import Context  # noqa: E402
from geomonitor.monitor.layers import capture_activations  # noqa: E402
from geomonitor.monitor.schedule import Every  # noqa: E402
from geomonitor.symmetry._linalg import top_singular_value  # noqa: E402


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


MODELS = {"quickstart": ([64, 128, 64, 10], 256, 64), "wide": ([1024, 4096, 4096, 10], 256, 128)}


def timed(fn, repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, device: str, repeats: int) -> list[tuple[str, float]]:
    widths, n_probe, batch = MODELS[name]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = mlp(widths).to(device)
    x = torch.rand(max(n_probe, batch), widths[0], generator=g).to(device)
    y = torch.randint(0, widths[-1], (len(x),), generator=g).to(device)
    probe = (x[:n_probe], y[:n_probe])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    relus = {n: m for n, m in model.named_modules() if isinstance(m, nn.ReLU)}
    forward = lambda m, b: m(b[0])  # noqa: E731

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:batch]), y[:batch]).backward()
        opt.step()

    def run(family: SymmetryFamily):
        def go() -> None:
            ctx = Context(model, 1, probe, lambda: capture_activations(
                model, relus, lambda: forward(model, probe)), forward=forward)
            m = family.run(ctx)
            assert not m.errors, m.errors
        return go

    t_step = timed(step, repeats, device)
    t_fam = timed(run(SymmetryFamily(Every(n_steps=1))), repeats, device)
    t_nw = timed(run(SymmetryFamily(Every(n_steps=1), weight_ranks=False)), repeats, device)
    return [("step", t_step), ("family", t_fam), ("family, no weight ranks", t_nw)]


def bench_svd(n: int, device: str, repeats: int) -> tuple[float, float]:
    M = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator().manual_seed(0)
    return (timed(lambda: torch.linalg.svdvals(M), repeats, device),
            timed(lambda: top_singular_value(M, gen), repeats, device))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--svd-sizes", type=int, nargs="*", default=[256, 1024, 2048, 4096])
    args = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    print(f"machine: {platform.processor() or platform.machine()}, {THREADS} threads, torch "
          f"{torch.__version__}, device {args.device}")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| model | training step | family | family / step | family without weight ranks |")
    print("|---|---|---|---|---|")
    for name in args.models:
        r = dict(bench_model(name, args.device, args.repeats))
        print(f"| {name} | {r['step'] * 1e3:.1f} ms | {r['family'] * 1e3:.1f} ms | "
              f"{r['family'] / r['step']:.1f}x | {r['family, no weight ranks'] * 1e3:.1f} ms |",
              flush=True)
    if args.svd_sizes:
        print("\n| n | svdvals (n x n) | Lanczos (top singular value) |")
        print("|---|---|---|")
        for n in args.svd_sizes:
            full, power = bench_svd(n, args.device, max(1, args.repeats // 2))
            print(f"| {n} | {full * 1e3:.0f} ms | {power * 1e3:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
