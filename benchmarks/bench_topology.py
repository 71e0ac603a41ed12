"""Benchmark: persistence diagrams of 5,000 activation vectors (dimension 512).

Data: a noisy circle embedded in R^512 by a random rotation, plus isotropic noise.

Ours: ``persistence_diagrams(X, maxdim=1, n_landmarks=300)``: exact H0 on all points (minimum
spanning tree in torch) + H1 by giotto-ph on 300 farthest-point landmarks.

Peers, on the same data in the same run:
* giotto-ph ``ripser_parallel`` H0 only on the full cloud (the exact H0 we reproduce);
* giotto-ph ``ripser_parallel`` H0+H1 on the full cloud is far too slow at 5,000 points, so
  H0+H1 peers run on the first ``--peer-n`` points: giotto-ph and giotto-tda
  ``VietorisRipsPersistence`` (if installed), next to ours with all those points.

Two more sections, each interleaving ours and the peers in the same run:

* ``--h0-sizes 4000 8000 16000``: exact H0 (MST) time of the path used above ``dense_max``
  (Borůvka with neighbour lists) against the previous chunked Borůvka (a full distance pass
  per round, still callable as ``mst._boruvka``) and dense Prim (an N x N Gram matrix).
* ``--landmark-n 1000``: ours (exact H0 + H1 on 128 farthest-point landmarks) against
  ripser.py ``ripser(X, maxdim=1, n_perm=128)`` (greedy landmarks, H0 from them too; run only
  if ``pip install ripser`` was done, it is not a dependency), with the bottleneck distance of
  each to the full diagram (giotto-ph on every point; giotto-tda's bottleneck), and our 2 eps
  bound.

Usage:
    python benchmarks/bench_topology.py [--n 5000] [--dim 512] [--landmarks 300]
        [--repeats 5] [--peer-n 800] [--device cpu|cuda] [--sections main,h0,landmarks]
        [--h0-sizes 4000 8000 16000] [--landmark-n 1000] [--threads 2]

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

from geomonitor.distances import sq_dists
from geomonitor.topology import mst_edge_lengths, persistence_diagrams
from geomonitor.topology import mst as _mst


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


def h0_section(sizes: list[int], dim: int, repeats: int) -> None:
    """H0 above dense_max: new path vs the previous chunked Borůvka vs dense Prim, interleaved."""
    print("\nExact H0 (MST) of the noisy circle in R^%d, median of %d (min-max), interleaved:\n" % (dim, repeats))
    print("| N | lists Borůvka (now, s) | chunked Borůvka (before, s) | dense Prim (N x N, s) | before / now | now / dense |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        X = _data(n, dim)
        Xc = X - X.mean(0)
        x_sq = (Xc * Xc).sum(1)
        runs = {
            "now": lambda: mst_edge_lengths(X, dense_max=1),
            "before": lambda: _mst._boruvka(lambda s, e: sq_dists(Xc[s:e], Xc, x_sq), n, Xc.device, Xc.dtype,
                                            _mst.auto_chunk_size(n, n)),
            "dense": lambda: mst_edge_lengths(X, dense_max=n),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(repeats):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for k in order:
                t0 = time.perf_counter()
                out = runs[k]()
                times[k].append(time.perf_counter() - t0)
                if k == "before":
                    out = (Xc[out[:, 0]] - Xc[out[:, 1]]).norm(dim=1).sort().values
                if r == 0:
                    times.setdefault(k + "_out", []).append(out)
        ref = times["dense_out"][0]
        for k in ("now_out", "before_out"):
            assert float((times[k][0].double() - ref.double()).abs().max()) < 1e-4, k
        m = {k: statistics.median(times[k]) for k in runs}
        cell = lambda k: f"{m[k]:.2f} ({min(times[k]):.2f}-{max(times[k]):.2f})"  # noqa: E731
        print(f"| {n} | {cell('now')} | {cell('before')} | {cell('dense')} | {m['before'] / m['now']:.1f}x | "
              f"{m['now'] / m['dense']:.2f} |", flush=True)


def _bottleneck(a: np.ndarray, b: np.ndarray) -> float:
    """Bottleneck distance of two persistence diagrams of one dimension (giotto-tda)."""
    from gtda.diagrams import PairwiseDistance

    def fmt(d):
        d = d[np.isfinite(d[:, 1])]
        return np.column_stack([d, np.zeros(len(d))]) if len(d) else np.zeros((1, 3))

    A, B = fmt(a), fmt(b)
    k = max(len(A), len(B))
    pad = lambda D: np.vstack([D, np.zeros((k - len(D), 3))])  # noqa: E731  (zero-length bars)
    out = PairwiseDistance(metric="bottleneck", order=None).fit_transform(np.stack([pad(A), pad(B)]))
    return float(out[0, 1, 0])


def landmark_section(n: int, dim: int, m: int, repeats: int, threads: int) -> None:
    from gph import ripser_parallel

    print(f"\nLandmark persistence at N = {n} (noisy circle in R^{dim}), {m} landmarks, median of {repeats} "
          "(min-max), interleaved;\nbottleneck distance d_B to the full diagram (giotto-ph on all points):\n")
    X = _data(n, dim)
    Xnp = X.double().numpy()
    full = ripser_parallel(Xnp, maxdim=1, n_threads=threads)["dgms"]
    try:
        import warnings

        from ripser import ripser as ripser_py

        warnings.filterwarnings("ignore", message="The input point cloud has more columns than rows")
    except ImportError:
        ripser_py = None
    runs = {f"ours n_threads={t}": (lambda t=t: persistence_diagrams(
        X, maxdim=1, n_landmarks=m, generator=torch.Generator().manual_seed(0), n_threads=t)) for t in sorted({1, threads})}
    if ripser_py is not None:
        runs["ripser.py n_perm"] = lambda: ripser_py(Xnp, maxdim=1, n_perm=m)
    times: dict[str, list[float]] = {k: [] for k in runs}
    outs: dict[str, object] = {}
    for k in runs:
        outs[k] = runs[k]()  # warm-up
    for r in range(repeats):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    print("| method | median s | min-max s | d_B H0 | d_B H1 | H1 bars (full: %d) | bound 2 eps |" % len(full[1]))
    print("|---|---|---|---|---|---|---|")
    for k in runs:
        o = outs[k]
        dg = o["dgms"] if isinstance(o, dict) else [np.asarray(o[0]), np.asarray(o[1])]
        bound = f"{o.bottleneck_bound:.3f}" if hasattr(o, "bottleneck_bound") else "-"
        print(f"| {k} | {statistics.median(times[k]):.3f} | {min(times[k]):.3f}-{max(times[k]):.3f} | "
              f"{_bottleneck(dg[0], full[0]):.4f} | {_bottleneck(dg[1], full[1]):.4f} | {len(dg[1])} | {bound} |")
    if ripser_py is None:
        print("| ripser.py | - | - | - | - | - | not installed (pip install ripser) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--landmarks", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peer-n", type=int, default=800)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sections", default="main")
    ap.add_argument("--h0-sizes", type=int, nargs="+", default=[4000, 8000, 16000])
    ap.add_argument("--landmark-n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if "h0" in sections:
        h0_section(args.h0_sizes, args.dim, args.repeats)
    if "landmarks" in sections:
        landmark_section(args.landmark_n, args.dim, 128, args.repeats, args.threads)
    if "main" not in sections:
        return
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
