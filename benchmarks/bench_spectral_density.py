"""Hessian spectral density: stochastic Lanczos quadrature vs the dense Hessian.

Models: digits MLPs 64 -> h -> h -> 10 (tanh) at initialisation, cross-entropy on 256 digits,
for several widths h. Dense: ``torch.func.hessian`` of a float64 copy then
``torch.linalg.eigvalsh`` (P Hessian-vector products' worth of work, O(P^3) for the
eigenvalues). SLQ: ``spectral_density(n_iter, n_vectors, hvp="exact")`` in float32. Reported:
wall seconds (median over ``--repeats``), products, the 1-Wasserstein distance between the SLQ
measure and the true eigenvalue distribution divided by the spectral range, and the relative
error of the top node against lambda_max. The figure: seconds and products vs P, and the
smoothed density of the widest model against a histogram of its true eigenvalues.

Usage: python benchmarks/bench_spectral_density.py [--widths 8,16,32,48] [--n-iter 80]
       [--n-vectors 8] [--repeats 3] [--threads 1] [--out docs/figures/spectral_density.png]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from torch import nn
from torch.func import functional_call, hessian

from geomonitor.sharpness import spectral_density


def gap_rule(ev: np.ndarray, gap: float = 0.05) -> int:
    """The outlier rule of ``SpectralDensity.n_outliers`` on the true eigenvalues."""
    desc = ev[::-1]
    ok = [n for n in range(1, desc.size)
          if desc[n - 1] - desc[n] >= gap * (desc[0] - desc[-1]) and desc[n] >= np.median(ev)]
    return max(ok, default=0)


def model_and_data(width: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:256] / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target[:256])
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    return model, x, y


def dense_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    m64 = copy.deepcopy(model).double()
    names = [n for n, _ in m64.named_parameters()]
    shapes = [p.shape for _, p in m64.named_parameters()]
    sizes = [s.numel() for s in shapes]
    flat = torch.cat([p.detach().reshape(-1) for p in m64.parameters()])

    def f(v):
        ps = {n: t.reshape(s) for n, t, s in zip(names, torch.split(v, sizes), shapes)}
        return F.cross_entropy(functional_call(m64, ps, (x.double(),)), y)

    return torch.linalg.eigvalsh(hessian(f)(flat)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="8,16,32,48")
    ap.add_argument("--n-iter", type=int, default=80)
    ap.add_argument("--n-vectors", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/figures/spectral_density.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for width in [int(w) for w in args.widths.split(",")]:
        model, x, y = model_and_data(width)
        dense_t, slq_t = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ev = dense_eigenvalues(model, x, y)
            dense_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sd = spectral_density(model, lambda: F.cross_entropy(model(x), y), n_iter=args.n_iter,
                                  n_vectors=args.n_vectors, hvp="exact", seed=0)
            slq_t.append(time.perf_counter() - t0)
        span = ev[-1] - ev[0]
        w1 = wasserstein_distance(sd.nodes.numpy(), ev, u_weights=sd.weights.numpy()) / span
        top = abs(float(sd.nodes.max()) - ev[-1]) / ev[-1]
        rows.append(dict(width=width, P=ev.size, dense_s=statistics.median(dense_t),
                         slq_s=statistics.median(slq_t), n_hvp=sd.n_hvp, w1=w1, top=top,
                         trace=sd.trace, trace_true=float(ev.sum()), outliers=sd.n_outliers(),
                         ev=ev, sd=sd))
        r = rows[-1]
        print(f"h={width:3d} P={r['P']:5d}  dense {r['dense_s']:7.2f} s ({r['P']} HVP-equiv.)  "
              f"SLQ {r['slq_s']:6.2f} s ({r['n_hvp']} HVPs)  W1/range {w1:.4f}  top rel err {top:.1e}  "
              f"trace {r['trace']:.3f} +- {sd.trace_stderr:.3f} (exact {r['trace_true']:.3f})  outliers {r['outliers']} (dense {gap_rule(ev)})", flush=True)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    P = [r["P"] for r in rows]
    ax[0].loglog(P, [r["dense_s"] for r in rows], "o-", label="dense (torch.func.hessian + eigvalsh)")
    ax[0].loglog(P, [r["slq_s"] for r in rows], "s-", label=f"SLQ ({args.n_vectors} vectors x {args.n_iter} steps)")
    ax[0].set(xlabel="parameters P", ylabel="seconds", title=f"wall time ({args.threads} CPU thread)")
    ax[0].legend(fontsize=8)
    ax[1].loglog(P, P, "o-", label="dense: P products' worth")
    ax[1].loglog(P, [r["n_hvp"] for r in rows], "s-", label="SLQ: products")
    ax[1].set(xlabel="parameters P", ylabel="Hessian-vector products", title="cost in products")
    ax[1].legend(fontsize=8)
    r = rows[-1]
    ev, sd = r["ev"], r["sd"]
    span = ev[-1] - ev[0]
    grid = np.linspace(ev[0] - 0.05 * span, ev[-1] + 0.05 * span, 800)
    sigma = 0.01 * span
    ax[2].hist(ev, bins=120, density=True, alpha=0.4, label="dense eigenvalues")
    ax[2].semilogy(grid, sd.density(torch.from_numpy(grid), sigma).numpy() + 1e-6, label=f"SLQ, sigma={sigma:.3g}")
    ax[2].set(xlabel="eigenvalue", ylabel="density", ylim=(1e-4, None),
              title=f"P={r['P']}: W1/range {r['w1']:.3f}, {r['outliers']} outliers")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
