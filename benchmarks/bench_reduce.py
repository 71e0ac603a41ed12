"""Conv activations: TwoNN and persistence time with ``reduce="flatten"`` vs ``reduce="mean"``.

A [B, 32, 32, 32] output (B = 256 random 32x32 RGB images through Conv2d(3, 32, 3) + ReLU) is
reduced by :func:`geomonitor.monitor.reduce_output`: ``"flatten"`` keeps every (channel,
position) feature (32,768 per sample: the geometry of the whole feature map), ``"mean"``
averages over positions (32 per sample: the geometry of the channel responses, translation
invariant). Times include the reduction; interleaved, median (min-max) of ``--repeats``.

Usage: python benchmarks/bench_reduce.py [--batch 256] [--repeats 7] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn

from geomonitor.intrinsic import intrinsic_dimension
from geomonitor.monitor import reduce_output
from geomonitor.topology import persistence_diagrams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--landmarks", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # benchmark script only: module init uses the global stream
    g = torch.Generator().manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        out = conv(torch.randn(args.batch, 3, 32, 32, generator=g))
    runs = {}
    for red in ("flatten", "mean"):
        runs[("twonn", red)] = lambda red=red: intrinsic_dimension(reduce_output(out, red, channels_first=True), method="twonn")
        runs[("topology", red)] = lambda red=red: persistence_diagrams(
            reduce_output(out, red, channels_first=True), maxdim=1, n_landmarks=args.landmarks,
            generator=torch.Generator().manual_seed(0), n_threads=args.threads)
    times: dict = {k: [] for k in runs}
    res = {k: f() for k, f in runs.items()}  # warm-up
    for r in range(args.repeats):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"activation [{args.batch}, 32, 32, 32]; flatten -> {args.batch} x 32768, mean -> {args.batch} x 32\n")
    print("| measurement | reduce | median s | min-max s | result | flatten / mean |")
    print("|---|---|---|---|---|---|")
    for k in runs:
        est, red = k
        m = statistics.median(times[k])
        r = res[k]
        val = f"ID {r:.2f}" if est == "twonn" and isinstance(r, float) else (
            f"ID {getattr(r, 'dimension', r)}" if est == "twonn" else f"{len(r[1])} H1 bars")
        ratio = f"{m / statistics.median(times[(est, 'mean')]):.0f}x" if red == "flatten" else ""
        print(f"| {est} | {red} | {m:.4f} | {min(times[k]):.4f}-{max(times[k]):.4f} | {val} | {ratio} |")


if __name__ == "__main__":
    main()
