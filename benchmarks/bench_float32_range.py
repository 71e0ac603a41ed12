"""Diagrams and TwoNN of float32 clouds far from unit scale, against float64 on the same values.

A noisy circle in R^8 (200 points) is multiplied by each scale, rounded to float32, and
measured in float32 and in float64 (the same rounded values): the number of H0 bars (199 for
200 distinct points), H1 bars against giotto-ph on the float64 cloud (all points), the
landmark covering radius eps (50 landmarks) as a ratio to the float64 one, and TwoNN.

    python benchmarks/bench_float32_range.py
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from gph import ripser_parallel

from geomonitor.intrinsic import intrinsic_dimension
from geomonitor.topology import persistence_diagrams

SCALES = [1e19, 1e25, 1e30, 1e-20, 1e-30]


def circle(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    ring = torch.stack([t.cos(), t.sin()], 1) + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return torch.cat([ring, 0.1 * torch.randn(n, 6, generator=g, dtype=torch.float64)], 1)


def main() -> None:
    warnings.simplefilter("ignore")
    X = circle()
    print("| scale | H0 bars | H1 bars (giotto-ph float64) | eps / float64 eps | TwoNN float32 / float64 |")
    print("|---|---|---|---|---|")
    for s in SCALES:
        X32 = (X * s).float()
        X64 = X32.double()
        ref = ripser_parallel(X64.numpy(), maxdim=1)["dgms"][1]
        dg = persistence_diagrams(X32, 1)
        gen = torch.Generator().manual_seed(0)
        e32 = persistence_diagrams(X32, 1, n_landmarks=50, generator=gen).hausdorff_radius
        gen = torch.Generator().manual_seed(0)
        e64 = persistence_diagrams(X64, 1, n_landmarks=50, generator=gen).hausdorff_radius
        try:
            tw = f"{intrinsic_dimension(X32):.6f} / {intrinsic_dimension(X64):.6f}"
        except ValueError as err:
            tw = f"ValueError: {err}"
        print(f"| {s:g} | {len(dg[0])} | {len(dg[1])} ({int((ref[:, 1] > ref[:, 0]).sum())}) "
              f"| {e32 / e64:.7f} | {tw} |")
    print("\ncommand: python benchmarks/bench_float32_range.py")


if __name__ == "__main__":
    main()
