"""Hessian top eigenvalue: HVPs of thick-restart Lanczos vs power iteration as PyHessian runs it.

Peer: power iteration as in PyHessian (Yao et al. 2020, "PyHessian: Neural networks through
the lens of the Hessian"): v <- Hv / ||Hv||, eigenvalue v.Hv, stop when the relative change
|lam - lam_prev| / (|lam_prev| + 1e-6) < 1e-3, at most 100 iterations. Ours:
``hessian_eigenvalues(k=1, tol=1e-3, max_hvp=100)``. Both use the same HVP operator, on the
same small models, and are scored against ``torch.linalg.eigvalsh`` of the dense float64
Hessian, both at each method's own stopping rule and at equal accuracy (the products each
needs before its estimate is within 1e-4 of the dense value). "cold": random start; "warm": one SGD step (lr 0.1) later, started from the
previous top eigenvector. Median over seeds.

Usage: python benchmarks/bench_hessian.py [--seeds 5]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics

import torch
from torch import nn
from torch.func import functional_call, hessian

from geomonitor.sharpness import HVPOperator, hessian_eigenvalues


def models(seed: int) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)  # benchmark script only: module init uses the global stream
    g = torch.Generator().manual_seed(seed)
    x8, x64 = torch.randn(64, 8, generator=g), torch.randn(64, 64, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    cnn = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(),
                        nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(96, 3))
    bn = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.Tanh(), nn.Linear(32, 3)).eval()
    return {
        "tanh MLP": (nn.Sequential(nn.Linear(8, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 3)), x8, y),
        "ReLU MLP": (nn.Sequential(nn.Linear(8, 28), nn.ReLU(), nn.Linear(28, 28), nn.ReLU(), nn.Linear(28, 3)), x8, y),
        "CNN": (cnn, x64, y),
        "BN MLP (eval)": (bn, x8, y),
    }


def dense_top(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    m = copy.deepcopy(model).double()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    buffers = dict(m.named_buffers())
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def f(v):
        ps = {n: t.reshape(s) for n, t, s in zip(names, torch.split(v, [s.numel() for s in shapes]), shapes)}
        return nn.functional.cross_entropy(functional_call(m, ps | buffers, (x.double(),)), y)

    return torch.linalg.eigvalsh(hessian(f)(flat))[-1].item()


def power_iteration(op: HVPOperator, v: torch.Tensor, max_iter: int = 100, tol: float = 1e-3):
    v = v / v.norm()
    lam = None
    for i in range(max_iter):
        hv = op(v)
        new = float(v @ hv)
        v = hv / hv.norm()
        if lam is not None and abs(new - lam) / (abs(lam) + 1e-6) < tol:
            return new, v, i + 1
        lam = new
    return lam, v, max_iter


TARGET = 1e-4


def power_to_target(op: HVPOperator, v: torch.Tensor, ref: float, max_iter: int = 300) -> int:
    """Products power iteration needs before its eigenvalue is within TARGET of ``ref``."""
    v = v / v.norm()
    for i in range(max_iter):
        hv = op(v)
        if abs(float(v @ hv) / ref - 1) <= TARGET:
            return i + 1
        v = hv / hv.norm()
    return max_iter


def lanczos_to_target(lo, params, ref: float, init, seed: int, max_iter: int = 100) -> int:
    """Products Lanczos needs before its top Ritz value is within TARGET of ``ref``."""
    for m in range(1, max_iter + 1):
        spec = hessian_eigenvalues(lo, params, 1, tol=1e-12, max_hvp=m, init=init,
                                   generator=torch.Generator().manual_seed(seed))
        if abs(spec.eigenvalues[0].item() / ref - 1) <= TARGET:
            return m
    return max_iter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        for name, (model, x, y) in models(seed).items():
            lo = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
            params = list(model.parameters())
            gen = torch.Generator().manual_seed(100 + seed)
            ref = dense_top(model, x, y)
            P = sum(p.numel() for p in params)
            v0 = torch.randn(P, generator=gen)
            lam_p, vec_p, n_p = power_iteration(HVPOperator(lo, params), v0)
            spec = hessian_eigenvalues(lo, params, 1, generator=torch.Generator().manual_seed(seed))
            cold = rows.setdefault((name, "cold"), {"pw": [], "pw_err": [], "ours": [], "ours_err": [], "pw_t": [], "ours_t": []})
            cold["pw_t"].append(power_to_target(HVPOperator(lo, params), v0, ref))
            cold["ours_t"].append(lanczos_to_target(lo, params, ref, None, seed))
            cold["pw"].append(n_p); cold["pw_err"].append(abs(lam_p / ref - 1))
            cold["ours"].append(spec.n_hvp); cold["ours_err"].append(abs(spec.eigenvalues[0].item() / ref - 1))
            opt = torch.optim.SGD(params, lr=0.1)
            opt.zero_grad(); lo().backward(); opt.step(); opt.zero_grad(set_to_none=True)
            ref = dense_top(model, x, y)
            lam_p, _, n_p = power_iteration(HVPOperator(lo, params), vec_p)
            prev = spec.eigenvectors
            spec = hessian_eigenvalues(lo, params, 1, init=prev, generator=gen)
            warm = rows.setdefault((name, "warm"), {"pw": [], "pw_err": [], "ours": [], "ours_err": [], "pw_t": [], "ours_t": []})
            warm["pw_t"].append(power_to_target(HVPOperator(lo, params), vec_p, ref))
            warm["ours_t"].append(lanczos_to_target(lo, params, ref, prev, seed))
            warm["pw"].append(n_p); warm["pw_err"].append(abs(lam_p / ref - 1))
            warm["ours"].append(spec.n_hvp); warm["ours_err"].append(abs(spec.eigenvalues[0].item() / ref - 1))
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, seeds {args.seeds} (medians)\n")
    print("Stopping rules (PyHessian's 1e-3 change rule vs our tol=1e-3), and HVPs to reach a relative")
    print(f"error <= {TARGET:g} against the dense eigvalsh (equal accuracy):\n")
    print("| model | start | power HVPs (rule) | power rel. err | Lanczos HVPs (tol) | Lanczos rel. err "
          f"| power HVPs to {TARGET:g} | Lanczos HVPs to {TARGET:g} | ratio at equal accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = statistics.median
    for (name, start), r in rows.items():
        print(f"| {name} | {start} | {med(r['pw']):.0f} | {med(r['pw_err']):.1e} | {med(r['ours']):.0f} | "
              f"{med(r['ours_err']):.1e} | {med(r['pw_t']):.0f} | {med(r['ours_t']):.0f} | "
              f"{med(r['pw_t']) / med(r['ours_t']):.1f}x |")


if __name__ == "__main__":
    main()
