"""Speed of the TwoNN and MLE intrinsic-dimension estimators against scikit-dimension.

On the same float32 point cloud (a 16-dim latent through a random linear map and tanh, like
a layer's activations) it times, median of ``--repeats`` runs:

* ``bare``: the chunked Gram product ``X[chunk] @ X.T`` with the chunk size the neighbour
  search uses, the O(N^2 D) floor of any exact neighbour method;
* ``twonn`` / ``mle``: :func:`geomonitor.intrinsic.intrinsic_dimension` (k=20 for mle);
* ``skdim twonn`` / ``skdim mle``: ``skdim.id.TwoNN().fit(X).dimension_`` and
  ``skdim.id.MLE().fit(X, n_neighbors=20).dimension_`` (CPU, same thread count);

and prints a markdown table with the machine and the command.

    python benchmarks/bench_intrinsic_dimension.py                 # CPU, 2 threads
    python benchmarks/bench_intrinsic_dimension.py --device cuda --sizes 10000x512 50000x4096 --no-skdim
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

THREADS = 2
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(THREADS)  # before numpy / torch / sklearn load their BLAS

import torch  # noqa: E402

from geomonitor import distances  # noqa: E402
from geomonitor.intrinsic import intrinsic_dimension  # noqa: E402

DEFAULT_SIZES = ["2000x64", "2000x512", "2000x4096", "10000x64", "10000x512", "10000x4096"]


def make_cloud(n: int, d: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 16, generator=g)
    W = torch.randn(16, d, generator=g) / 4
    return torch.tanh(Z @ W).to(device)


def bare_product(X: torch.Tensor) -> None:
    n = X.shape[0]
    cs = distances.auto_chunk_size(n, n)
    for s in range(0, n, cs):
        X[s : s + cs] @ X.T


def timed(fn, repeats: int, device: str) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up call, and the last result."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} on {THREADS} threads"
    if device.startswith("cuda"):
        desc += f", GPU {torch.cuda.get_device_name(device)}"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return desc + f", Python {platform.python_version()}; load average at the end {load}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="NxD, e.g. 10000x512")
    p.add_argument("--repeats", type=int, default=5, help="runs per case for N <= 2000")
    p.add_argument("--repeats-large", type=int, default=3, help="runs per case for N > 2000")
    p.add_argument("--no-skdim", action="store_true", help="skip scikit-dimension")
    args = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    if not args.no_skdim:
        import skdim
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(THREADS)
        except ImportError:
            pass

    cols = ["N", "D", "bare X@X.T (s)", "twonn (s)", "twonn / bare"]
    if not args.no_skdim:
        cols += ["skdim TwoNN (s)", "speed-up"]
    cols += ["mle k=20 (s)"]
    if not args.no_skdim:
        cols += ["skdim MLE (s)", "speed-up", "ID twonn / skdim", "ID mle / skdim"]
    rows = []
    for size in args.sizes:
        n, d = map(int, size.lower().split("x"))
        reps = args.repeats if n <= 2000 else args.repeats_large
        X = make_cloud(n, d, args.device)
        t_bare, _ = timed(lambda: bare_product(X), reps, args.device)
        t_two, id_two = timed(lambda: intrinsic_dimension(X, "twonn"), reps, args.device)
        row = [n, d, f"{t_bare:.3f}", f"{t_two:.3f}", f"{t_two / t_bare:.2f}"]
        if not args.no_skdim:
            Xn = X.cpu().numpy()
            sreps = max(1, reps - 1) if n > 2000 else reps
            t_sk2, id_sk2 = timed(lambda: skdim.id.TwoNN().fit(Xn).dimension_, sreps, "cpu")
            row += [f"{t_sk2:.3f}", f"{t_sk2 / t_two:.1f}x"]
        t_mle, id_mle = timed(lambda: intrinsic_dimension(X, "mle", k=20), reps, args.device)
        row += [f"{t_mle:.3f}"]
        if not args.no_skdim:
            t_skm, id_skm = timed(lambda: skdim.id.MLE().fit(Xn, n_neighbors=20).dimension_, sreps, "cpu")
            row += [f"{t_skm:.3f}", f"{t_skm / t_mle:.1f}x",
                    f"{id_two:.3f} / {id_sk2:.3f}", f"{id_mle:.3f} / {id_skm:.3f}"]
        rows.append(row)
        print(" | ".join(map(str, row)), file=sys.stderr, flush=True)

    print(f"\nCommand: `python {' '.join(sys.argv)}`\n")
    print(f"Machine: {machine(args.device)}; float32 input; median of {args.repeats} runs "
          f"(N <= 2000) / {args.repeats_large} runs (N > 2000; scikit-dimension "
          f"{max(1, args.repeats_large - 1)}), after one warm-up run.\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
