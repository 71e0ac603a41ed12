"""Hessian top eigenvalue: thick-restart Lanczos vs power iteration as PyHessian runs it.

Peer: power iteration as in PyHessian (Yao et al. 2020, "PyHessian: Neural networks through
the lens of the Hessian"): v <- Hv / ||Hv||, eigenvalue v.Hv, stop when the relative change
|lam - lam_prev| / (|lam_prev| + 1e-6) < 1e-3, at most 100 iterations. Ours:
``hessian_eigenvalues(k=1, tol=1e-3, max_hvp=100)``. Both use the same HVP operator.

Sections (``--sections``, comma separated):

* ``small``: four small models scored against ``torch.linalg.eigvalsh`` of the dense float64
  Hessian: HVPs and wall time at each method's own stopping rule, and HVPs to reach a
  relative error of 1e-4 (equal accuracy). "cold": random start; "warm": one SGD step
  (lr 0.1) later, started from the previous top eigenvector.
* ``overhead``: the solver's own work per product, measured with a nearly free operator (a
  diagonal matrix, the product's own time subtracted) at P = 1e5, 1.1e6 and 1.1e7, beside the
  HVP time of a real model of that size (digits MLPs of width 280 and 1024, a ResNet-18 on
  32 images of 32x32): the ratio solver / HVP is the overhead of one product.
* ``large``: those three models, cold and warm (one SGD step, lr 0.01, later), wall time of
  each method at its own stopping rule (operator build included), its error, and the time
  power iteration needs to reach Lanczos's error ("equal accuracy"). The reference is the
  largest Rayleigh quotient either method produced (a lower bound on lambda_max, so errors
  are lower bounds too).

Runs are interleaved (peer and ours alternate, in alternating order), medians over seeds.

Usage: python benchmarks/bench_hessian.py [--seeds 5] [--large-seeds 3] [--resnet-seeds 1]
       [--sections small,overhead,large] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, hessian

from geomonitor.sharpness import HVPOperator, hessian_eigenvalues, lanczos_top
from geomonitor.sharpness.isolation import measurement_mode

med = statistics.median


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


class Block(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv + BatchNorm, identity or 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def resnet18(num_classes: int = 10) -> nn.Module:
    """The ResNet-18 layout of torchvision (7x7 stem, max-pool, 2-2-2-2 blocks): 11.18M params."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers.append(nn.Sequential(Block(cin, cout, stride), Block(cout, cout, 1)))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def large_models(seed: int) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)  # benchmark script only
    X, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(X), generator=g)[:512]
    xd, yd = torch.tensor(X, dtype=torch.float32)[idx] / 16.0, torch.tensor(y)[idx]
    mlp = lambda w: nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10))  # noqa: E731
    xr, yr = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    return {
        "digits MLP w=280": (mlp(280), xd, yd),
        "digits MLP w=1024": (mlp(1024), xd, yd),
        "ResNet-18 (BN, 32 imgs)": (resnet18(), xr, yr),
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


def power_iteration(matvec, v: torch.Tensor, max_iter: int = 100, tol: float = 1e-3, stop_below=None, t0=None):
    """PyHessian's power iteration; returns (lam, v, n, trajectory [(seconds, estimate)]).

    With ``stop_below`` (a callable on the estimate) it runs past its own rule until
    ``stop_below(estimate)`` also holds (to time equal accuracy); ``n`` stays the rule's count.
    """
    t0 = time.perf_counter() if t0 is None else t0
    v = v / v.norm()
    lam, n_rule, lam_rule, v_rule, traj = None, None, None, None, []
    for i in range(max_iter):
        hv = matvec(v)
        new = float(v @ hv)
        v = hv / hv.norm()
        traj.append((time.perf_counter() - t0, new))
        if n_rule is None and lam is not None and abs(new - lam) / (abs(lam) + 1e-6) < tol:
            n_rule, lam_rule, v_rule = i + 1, new, v
        lam = new
        if n_rule is not None and (stop_below is None or stop_below(new)):
            break
    if n_rule is None:
        n_rule, lam_rule, v_rule = max_iter, lam, v
    return lam_rule, v_rule, n_rule, traj


TARGET = 1e-4


def power_to_target(op, v: torch.Tensor, ref: float, max_iter: int = 300) -> int:
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


def small(seeds: int) -> None:
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    keys = ["pw", "pw_err", "ours", "ours_err", "pw_t", "ours_t", "pw_s", "ours_s"]
    for seed in range(seeds):
        for name, (model, x, y) in models(seed).items():
            lo = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
            params = list(model.parameters())
            gen = torch.Generator().manual_seed(100 + seed)
            P = sum(p.numel() for p in params)
            v0 = torch.randn(P, generator=gen)
            prev, vec_p = None, v0
            for start in ("cold", "warm"):
                if start == "warm":
                    opt = torch.optim.SGD(params, lr=0.1)
                    opt.zero_grad(); lo().backward(); opt.step(); opt.zero_grad(set_to_none=True)
                ref = dense_top(model, x, y)
                r = rows.setdefault((name, start), {k: [] for k in keys})
                for turn in ((0, 1) if seed % 2 == 0 else (1, 0)):
                    if turn == 0:
                        t = time.perf_counter()
                        with measurement_mode():
                            lam_p, vec_new, n_p, _ = power_iteration(HVPOperator(lo, params), vec_p)
                        r["pw_s"].append(time.perf_counter() - t)
                    else:
                        t = time.perf_counter()
                        spec = hessian_eigenvalues(lo, params, 1, init=prev, generator=torch.Generator().manual_seed(seed))
                        r["ours_s"].append(time.perf_counter() - t)
                with measurement_mode():
                    r["pw_t"].append(power_to_target(HVPOperator(lo, params), vec_p, ref))
                r["ours_t"].append(lanczos_to_target(lo, params, ref, prev, seed))
                r["pw"].append(n_p); r["pw_err"].append(abs(lam_p / ref - 1))
                r["ours"].append(spec.n_hvp); r["ours_err"].append(abs(spec.eigenvalues[0].item() / ref - 1))
                prev, vec_p = spec.eigenvectors, vec_new
    print("Small models: stopping rules (PyHessian's 1e-3 change rule vs our tol=1e-3) with wall time, and HVPs")
    print(f"to reach a relative error <= {TARGET:g} against the dense eigvalsh (equal accuracy):\n")
    print("| model | start | power HVPs (rule) | power ms | power rel. err | Lanczos HVPs (tol) | Lanczos ms "
          f"| Lanczos rel. err | power HVPs to {TARGET:g} | Lanczos HVPs to {TARGET:g} | ratio at equal accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, start), r in rows.items():
        print(f"| {name} | {start} | {med(r['pw']):.0f} | {1e3 * med(r['pw_s']):.1f} | {med(r['pw_err']):.1e} | "
              f"{med(r['ours']):.0f} | {1e3 * med(r['ours_s']):.1f} | {med(r['ours_err']):.1e} | "
              f"{med(r['pw_t']):.0f} | {med(r['ours_t']):.0f} | {med(r['pw_t']) / med(r['ours_t']):.1f}x |")
    print()


def hvp_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int) -> float:
    with measurement_mode():
        op = HVPOperator(lambda: nn.functional.cross_entropy(model(x), y), list(model.parameters()))
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
        times = []
        for _ in range(reps):
            t = time.perf_counter(); op(v); times.append(time.perf_counter() - t)
        op.release()
    return med(times)


def overhead(reps: int) -> None:
    """Solver seconds per product with a diagonal operator (its own time subtracted)."""
    print("Solver overhead per product (diagonal operator, spectrum d_i = u_i^3 on [0, 1] plus one 1.5; both from")
    print("the same random vector; Lanczos tol=1e-3, at most 20 products; power iteration 20 steps), against the")
    print("HVP of a model of that size:\n")
    print("Columns: wall per product with the diagonal operator (its own time included, the same for both),")
    print("min over reps (the machine is shared), and the solver's share: (wall - operator) / HVP.\n")
    print("| P | model for the HVP | HVP ms | operator ms | Lanczos ms/product | power ms/product "
          "| Lanczos / power | Lanczos solver / HVP | power solver / HVP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (model, x, y) in large_models(0).items():
        P = sum(p.numel() for p in model.parameters())
        t_hvp = hvp_seconds(model, x, y, 3)
        g = torch.Generator().manual_seed(0)
        d = torch.rand(P, generator=g) ** 3
        d[0] = 1.5
        t_op = []
        v = torch.randn(P, generator=g)
        for _ in range(5):
            t = time.perf_counter(); d * v; t_op.append(time.perf_counter() - t)
        t_op = min(t_op)
        ours, peer = [], []
        for rep in range(reps):
            for turn in ((0, 1) if rep % 2 == 0 else (1, 0)):
                v0 = torch.randn(P, generator=torch.Generator().manual_seed(rep))
                if turn == 0:  # same start vector as power iteration (drawn outside the timing)
                    t = time.perf_counter()
                    r = lanczos_top(lambda v: d * v, P, 1, tol=1e-3, init=v0, max_matvec=20)
                    ours.append((time.perf_counter() - t) / r.n_matvec)
                else:
                    t = time.perf_counter()
                    power_iteration(lambda v: d * v, v0, max_iter=20, tol=0.0)
                    peer.append((time.perf_counter() - t) / 20)
        lo, pw = min(ours), min(peer)
        print(f"| {P:.2e} | {name} | {1e3 * t_hvp:.1f} | {1e3 * t_op:.2f} | {1e3 * lo:.2f} | {1e3 * pw:.2f} | "
              f"{lo / pw:.2f} | {max(lo - t_op, 0) / t_hvp:.1%} | {max(pw - t_op, 0) / t_hvp:.1%} |", flush=True)
    print()


def large(seeds: int, resnet_seeds: int) -> None:
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    keys = ["pw_n", "pw_s", "pw_err", "ours_n", "ours_s", "ours_err", "pw_eq_s"]
    for seed in range(max(seeds, resnet_seeds)):
        for name, (model, x, y) in large_models(seed).items():
            if seed >= (resnet_seeds if "ResNet" in name else seeds):
                continue
            model.train()
            lo = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
            params = list(model.parameters())
            P = sum(p.numel() for p in params)
            cap = 40 if "ResNet" in name else 100
            prev, vec_p = None, torch.randn(P, generator=torch.Generator().manual_seed(100 + seed))
            for start in ("cold", "warm"):
                if start == "warm":
                    opt = torch.optim.SGD(params, lr=0.01)
                    opt.zero_grad(); lo().backward(); opt.step(); opt.zero_grad(set_to_none=True)
                t = time.perf_counter()
                spec = hessian_eigenvalues(lo, params, 1, init=prev, generator=torch.Generator().manual_seed(seed))
                t_ours = time.perf_counter() - t
                lam_o = spec.eigenvalues[0].item()
                t0 = time.perf_counter()
                with measurement_mode():
                    op = HVPOperator(lo, params)
                    lam_p, vec_new, n_p, traj = power_iteration(op, vec_p, max_iter=cap, stop_below=lambda e: e >= lam_o, t0=t0)
                    op.release()
                ref = max([lam_o] + [e for _, e in traj])
                r = rows.setdefault((name, start), {k: [] for k in keys})
                r["ours_n"].append(spec.n_hvp); r["ours_s"].append(t_ours); r["ours_err"].append(abs(lam_o / ref - 1))
                r["pw_n"].append(n_p); r["pw_s"].append(traj[n_p - 1][0]); r["pw_err"].append(abs(lam_p / ref - 1))
                reach = [s for s, e in traj if abs(e / ref - 1) <= abs(lam_o / ref - 1)]
                r["pw_eq_s"].append(reach[0] if reach else float("inf"))
                prev, vec_p = spec.eigenvectors, vec_new
                print(f"  [{name} seed {seed} {start}] ours {spec.n_hvp} HVPs {t_ours:.2f}s err {abs(lam_o / ref - 1):.1e}; "
                      f"power {n_p} HVPs {traj[n_p - 1][0]:.2f}s err {abs(lam_p / ref - 1):.1e}; "
                      f"power to our error {r['pw_eq_s'][-1]:.2f}s", flush=True)
    print("\nLarge models, wall time (operator build included) at each method's own rule, and power iteration's")
    print("time to reach Lanczos's error (equal accuracy; power capped at 100 products, 40 on the ResNet):\n")
    print("| model | P | start | power HVPs | power s | power rel. err | Lanczos HVPs | Lanczos s | Lanczos rel. err "
          "| power s to Lanczos's err | speed-up at own rules | speed-up at equal accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    sizes = {n: sum(p.numel() for p in m.parameters()) for n, (m, _, _) in large_models(0).items()}
    for (name, start), r in rows.items():
        print(f"| {name} | {sizes[name]:.2e} | {start} | {med(r['pw_n']):.0f} | {med(r['pw_s']):.2f} | {med(r['pw_err']):.1e} | "
              f"{med(r['ours_n']):.0f} | {med(r['ours_s']):.2f} | {med(r['ours_err']):.1e} | {med(r['pw_eq_s']):.2f} | "
              f"{med(r['pw_s']) / med(r['ours_s']):.2f}x | {med(r['pw_eq_s']) / med(r['ours_s']):.2f}x |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--large-seeds", type=int, default=3)
    ap.add_argument("--resnet-seeds", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sections", default="small,overhead,large")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()} (medians)\n")
    sections = args.sections.split(",")
    if "small" in sections:
        small(args.seeds)
    if "overhead" in sections:
        overhead(args.reps)
    if "large" in sections:
        large(args.large_seeds, args.resnet_seeds)


if __name__ == "__main__":
    main()
