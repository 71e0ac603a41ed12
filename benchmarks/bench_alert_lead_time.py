"""Lead time of the alerts before a diverging run's loss turns non-finite.

Setup: full-batch gradient descent on sklearn's digits (MSE on one-hot targets, MLP 64-32-10
with tanh, as in Cohen et al. 2021's experiments) whose learning rate grows by ``--growth``
per step from a stable ``lr0`` (a runaway schedule). Every ``--every`` steps the top Hessian
eigenvalue is measured with :func:`geomonitor.sharpness.spectrum.hessian_eigenvalues`
(Lanczos, warm-started) and ``eos_ratio = sharpness * lr / 2`` is fed to
:class:`~geomonitor.monitor.alerts.EdgeOfStability`; the loss goes to :class:`LossSpike` and
the gradient norm to :class:`GradNormExplosion` (the usual loss-based and gradient-based
detectors, side by side). Reported: the step of the first alert of each rule, the step at which
the loss first becomes non-finite, and the lead time (non-finite step minus alert step).

Run: ``python benchmarks/bench_alert_lead_time.py`` (about a minute on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics

import torch

from geomonitor.monitor.alerts import EdgeOfStability, GradNormExplosion, LossSpike
from geomonitor.sharpness.spectrum import hessian_eigenvalues


def _data():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    return x, torch.nn.functional.one_hot(torch.tensor(y), 10).float()


def run(seed: int, *, lr0: float, growth: float, every: int, max_steps: int) -> dict[str, float]:
    x, y = _data()
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.0))
    loss_fn = lambda: 0.5 * (model(x) - y).pow(2).sum(1).mean()  # noqa: E731
    rules = {"eos": EdgeOfStability(), "loss_spike": LossSpike(), "grad_norm": GradNormExplosion()}
    first = {k: math.nan for k in rules}
    nonfinite, init, lr = math.nan, None, lr0
    sharp0 = None
    for step in range(1, max_steps + 1):
        model.zero_grad()
        loss = loss_fn()
        if not math.isfinite(float(loss.detach())):
            nonfinite = step
            break
        loss.backward()
        gnorm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        if not math.isfinite(gnorm):
            nonfinite = step
            break
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        values = {"loss_spike": float(loss.detach()), "grad_norm": gnorm}
        if step % every == 0:
            try:
                spec = hessian_eigenvalues(loss_fn, model, k=1, tol=1e-3, max_hvp=40, init=init,
                                           generator=torch.Generator().manual_seed(seed))
                init = spec.eigenvectors
                sharp = float(spec.eigenvalues[0])
            except ValueError:  # non-finite loss at the measurement
                sharp = math.inf
            sharp0 = sharp if sharp0 is None else sharp0
            values["eos"] = sharp * lr / 2.0
        for name, v in values.items():
            if rules[name].update(step, v) is not None and math.isnan(first[name]):
                first[name] = step
        lr *= growth
    return {"seed": seed, "nonfinite": nonfinite, "lr_at_nonfinite": lr, "sharpness0": sharp0,
            **{f"alert_{k}": v for k, v in first.items()}}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lr0", type=float, default=0.05)
    ap.add_argument("--growth", type=float, default=1.02)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = [run(s, lr0=args.lr0, growth=args.growth, every=args.every, max_steps=args.max_steps)
            for s in range(args.seeds)]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, Python {platform.python_version()}")
    print(f"full-batch GD, digits MLP 64-32-10 tanh, MSE; lr = {args.lr0} x {args.growth}^step; "
          f"sharpness every {args.every} steps\n")
    print("| seed | sharpness at start | loss non-finite at step | EoS alert (lead) | loss-spike alert (lead) | grad-norm alert (lead) |")
    print("|---|---|---|---|---|---|")

    def cell(r, k):
        a = r[f"alert_{k}"]
        return "none" if math.isnan(a) else f"{a:.0f} ({r['nonfinite'] - a:.0f})"

    for r in rows:
        print(f"| {r['seed']} | {r['sharpness0']:.3g} | {r['nonfinite']:.0f} | {cell(r, 'eos')} | "
              f"{cell(r, 'loss_spike')} | {cell(r, 'grad_norm')} |")
    for k in ("eos", "loss_spike", "grad_norm"):
        leads = [r["nonfinite"] - r[f"alert_{k}"] for r in rows if not math.isnan(r[f"alert_{k}"])]
        med = statistics.median(leads) if leads else math.nan
        print(f"\nmedian lead time, {k}: {med} steps (fired in {len(leads)}/{len(rows)} runs)", end="")
    print()
    return rows


if __name__ == "__main__":
    main()
