"""What the shared input boundary costs next to the work it guards.

Every point cloud entering :func:`geomonitor.knn`, the intrinsic-dimension estimators and
:func:`geomonitor.persistence_diagrams` is validated (:func:`geomonitor._inputs.as_points`:
dtype, shape, NaN/Inf rows) and scaled by a power of two (:func:`geomonitor._inputs.unit_scale`)
so that squared distances cannot overflow or underflow float32. On the same float32 cloud
(a 16-dim latent through a random linear map and tanh, like a layer's activations, times
``--scale``) this times, median of ``--repeats`` runs after one warm-up:

* ``boundary``: ``as_points`` + ``unit_scale`` alone;
* ``knn``: ``knn(X, 2)``, boundary included (TwoNN's neighbour search);
* ``twonn``: ``intrinsic_dimension(X, "twonn")`` (the boundary runs twice: the estimator's
  and knn's, the second a no-op scale);
* ``prepare_diagrams``: exact H0 and 200 farthest-point landmarks for H1 (no giotto-ph);

and prints a markdown table (boundary as a share of each) with the machine and the command.

    python benchmarks/bench_input_boundary.py
    python benchmarks/bench_input_boundary.py --scale 1e20     # the regime float32 overflows in
    BENCH_THREADS=1 python benchmarks/bench_input_boundary.py  # one thread (loaded machine)
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

THREADS = int(os.environ.get("BENCH_THREADS", "2"))  # BENCH_THREADS=1 on a loaded machine
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(THREADS)  # before numpy / torch load their BLAS

import torch  # noqa: E402

from geomonitor import knn  # noqa: E402
from geomonitor._inputs import as_points, unit_scale  # noqa: E402
from geomonitor.intrinsic import intrinsic_dimension  # noqa: E402
from geomonitor.topology import prepare_diagrams  # noqa: E402

DEFAULT_SIZES = ["1000x64", "2000x512", "2000x4096", "8000x512"]


def make_cloud(n: int, d: int, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 16, generator=g)
    W = torch.randn(16, d, generator=g) / 4
    return (torch.tanh(Z @ W).double() * scale).float()


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} on {THREADS} "
            f"threads, Python {platform.python_version()}; load average at the end {load}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="NxD clouds")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the cloud by this")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)

    rows = []
    for size in args.sizes:
        n, d = map(int, size.split("x"))
        X = make_cloud(n, d, args.scale)
        boundary = timed(lambda: unit_scale(as_points(X).X), args.repeats)
        t_knn = timed(lambda: knn(X, 2), args.repeats)
        t_twonn = timed(lambda: intrinsic_dimension(X, "twonn"), args.repeats)
        t_ph = timed(lambda: prepare_diagrams(X, 1, n_landmarks=200,
                                              generator=torch.Generator().manual_seed(0)),
                     args.repeats)
        rows.append((size, boundary, t_knn, t_twonn, t_ph))
        print(f"  {size}: done", file=sys.stderr)

    def share(b: float, t: float) -> str:
        return f"{1e3 * t:.1f} ({100 * b / t:.1f} %)"

    print(f"\nfloat32 clouds x {args.scale:g}, median of {args.repeats}; ms, and in parentheses "
          "the boundary's share\n")
    print("| N x D | boundary ms | knn(k=2) ms | twonn ms | prepare_diagrams ms |")
    print("|---|---|---|---|---|")
    for size, b, t_knn, t_twonn, t_ph in rows:
        print(f"| {size} | {1e3 * b:.2f} | {share(b, t_knn)} | {share(b, t_twonn)} | {share(b, t_ph)} |")
    print(f"\nmachine: {machine()}")
    print(f"command: BENCH_THREADS={THREADS} python benchmarks/{os.path.basename(__file__)} "
          f"{' '.join(argv or sys.argv[1:])}")


if __name__ == "__main__":
    main()
