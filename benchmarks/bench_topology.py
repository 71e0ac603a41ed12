"""Benchmark: persistence diagrams of 5,000 activation vectors (dimension 512).

Data: a noisy circle embedded in R^512 by a random rotation, plus isotropic noise.

Ours: ``persistence_diagrams(X, maxdim=1, n_landmarks=300)``: exact H0 on all points (minimum
spanning tree in torch) + H1 by giotto-ph on 300 farthest-point landmarks.

Peers, on the same data in the same run:
* giotto-ph ``ripser_parallel`` H0 only on the full cloud (the exact H0 we reproduce);
* giotto-ph ``ripser_parallel`` H0+H1 on the full cloud is far too slow at 5,000 points, so
  H0+H1 peers run on the first ``--peer-n`` points: giotto-ph and giotto-tda
  ``VietorisRipsPersistence`` (if installed), next to ours with all those points.

Usage:
    python benchmarks/bench_topology.py [--n 5000] [--dim 512] [--landmarks 300]
        [--repeats 5] [--peer-n 800] [--device cpu|cuda]

Two CPU threads (torch and giotto-ph); median wall time of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import numpy as np
import torch

from geomonitor.topology import mst_edge_lengths, persistence_diagrams


def _data(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 2 * math.pi
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    circle = torch.stack([t.cos(), t.sin()], dim=1)
    return circle @ Q[:2] + 0.01 * torch.randn(n, dim, generator=g)


def _median(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--landmarks", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peer-n", type=int, default=800)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    from gph import ripser_parallel

    X = _data(args.n, args.dim)
    Xnp = X.double().numpy()
    rows: list[tuple[str, str, float, str]] = []

    def ours():
        return persistence_diagrams(X, maxdim=1, n_landmarks=args.landmarks,
                                    generator=torch.Generator().manual_seed(0), n_threads=2)

    ours()  # warm-up
    t, dg = _median(ours, args.repeats)
    life = np.sort(dg[1][:, 1] - dg[1][:, 0])[::-1]
    rows.append((f"geomonitor H0 exact + H1 on {dg.n_landmarks} landmarks", f"{args.n}", t,
                 f"top H1 bars {life[0]:.3f}, {life[1]:.3f}; d_B bound 2eps={dg.bottleneck_bound:.3f}"))

    t, h0 = _median(lambda: mst_edge_lengths(X), args.repeats)
    rows.append(("geomonitor H0 only (MST, cpu)", f"{args.n}", t, ""))
    t, ref = _median(lambda: ripser_parallel(Xnp, maxdim=0, n_threads=2), max(1, args.repeats // 2))
    r0 = np.sort(ref["dgms"][0][np.isfinite(ref["dgms"][0][:, 1]), 1])
    err = float(np.abs(np.sort(h0.double().numpy()) - r0).max())
    rows.append(("giotto-ph ripser_parallel H0 only", f"{args.n}", t, f"max |H0 death diff| = {err:.1e}"))

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("CUDA requested but not available; skipping the cuda rows")
        else:
            Xc = X.cuda()
            mst_edge_lengths(Xc)
            torch.cuda.synchronize()

            def gpu():
                out = mst_edge_lengths(Xc)
                torch.cuda.synchronize()
                return out

            t, _ = _median(gpu, args.repeats)
            rows.append((f"geomonitor H0 only (MST, {torch.cuda.get_device_name()})", f"{args.n}", t, ""))

    m = min(args.peer_n, args.n)
    Xs, Xs_np = X[:m], Xnp[:m]
    t, _ = _median(lambda: persistence_diagrams(Xs, maxdim=1, n_threads=2), max(1, args.repeats // 2))
    rows.append(("geomonitor H0 + H1, all points", f"{m}", t, ""))
    t, _ = _median(lambda: ripser_parallel(Xs_np, maxdim=1, n_threads=2), max(1, args.repeats // 2))
    rows.append(("giotto-ph ripser_parallel H0 + H1", f"{m}", t, ""))
    try:
        from gtda.homology import VietorisRipsPersistence

        vr = VietorisRipsPersistence(homology_dimensions=(0, 1), n_jobs=1)
        t, _ = _median(lambda: vr.fit_transform(Xs_np[None]), max(1, args.repeats // 2))
        rows.append(("giotto-tda VietorisRipsPersistence H0 + H1", f"{m}", t, ""))
    except ImportError:
        rows.append(("giotto-tda VietorisRipsPersistence", f"{m}", float("nan"), "not installed"))
    except Exception as err:  # e.g. giotto-tda 0.6 against a scikit-learn newer than its pin
        rows.append(("giotto-tda VietorisRipsPersistence", f"{m}", float("nan"), f"failed: {err!r}"))

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, threads 2, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"data: noisy circle in R^{args.dim} (random rotation, noise 0.01), median of {args.repeats}\n")
    print("| method | points | median time (s) | note |")
    print("|---|---|---|---|")
    for name, n, t, note in rows:
        print(f"| {name} | {n} | {t:.3f} | {note} |")


if __name__ == "__main__":
    main()
