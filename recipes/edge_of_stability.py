"""Edge of stability: full-batch gradient descent drives the sharpness to 2/lr.

Reproduces the central observation of Cohen et al. (2021), "Gradient descent on neural
networks typically occurs at the edge of stability", ICLR: with full-batch GD at step size
lr, the top Hessian eigenvalue rises (progressive sharpening) until it reaches 2/lr and then
hovers there while the loss keeps decreasing non-monotonically. Setting as in the paper, at a
smaller scale: a tanh MLP, square loss on one-hot targets, here on a subset of scikit-learn's
digits (8x8 images, 10 classes).

Usage::

    python recipes/edge_of_stability.py --out recipes/out --steps 1500 --lrs 0.1 0.2

Writes ``<out>/edge_of_stability.png`` (sharpness vs step, dashed 2/lr lines), logs
``geometry/sharpness``, ``geometry/eos_ratio`` and ``train/loss`` to W&B (offline unless
``--online``) and prints, per lr, the median late-phase sharpness relative to 2/lr.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
from torch import nn

from geomonitor.sharpness import SharpnessEstimator


def digits_subset(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits images (standardised, float32, (n, 64)) and one-hot targets (n, 10)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)[:n]
    X = torch.as_tensor(X, dtype=torch.float32)[idx]
    X = (X - X.mean(0)) / (X.std(0) + 1.0)
    Y = nn.functional.one_hot(torch.as_tensor(y)[idx], 10).float()
    return X, Y


def tanh_mlp(width: int, seed: int) -> nn.Module:
    """64 -> width -> width -> 10 tanh network, initialised from its own generator."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=g)
                layer.bias.zero_()
    return model


def run_gd(
    lr: float,
    steps: int,
    *,
    n: int = 500,
    width: int = 64,
    measure_every: int = 10,
    seed: int = 0,
    log: Any = None,
) -> dict[str, list[float]]:
    """Full-batch GD on the digits subset; returns steps, sharpness, eos_ratio, loss lists.

    The loss is the square loss 0.5 * ||f(x) - y||^2 averaged over samples.
    """
    X, Y = digits_subset(n, seed)
    model = tanh_mlp(width, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    est = SharpnessEstimator(k=1, tol=1e-3, max_hvp=100, seed=seed)

    def loss_fn() -> torch.Tensor:
        return 0.5 * ((model(X) - Y) ** 2).sum(1).mean()

    out: dict[str, list[float]] = {"step": [], "sharpness": [], "eos_ratio": [], "loss": [], "n_hvp": []}
    for step in range(steps + 1):
        if step % measure_every == 0:
            r = est.measure(model, loss_fn, optimizer=opt)
            for key, val in (("step", step), ("sharpness", r.sharpness), ("eos_ratio", r.eos_ratio),
                             ("loss", r.loss), ("n_hvp", r.n_hvp)):
                out[key].append(val)
            if log is not None:
                log({f"lr_{lr}/geometry/sharpness": r.sharpness, f"lr_{lr}/geometry/eos_ratio": r.eos_ratio,
                     f"lr_{lr}/train/loss": r.loss, "step": step})
        if step < steps:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
    return out


def late_median(run: dict[str, list[float]], frac: float = 0.5) -> float:
    """Median sharpness over the last ``frac`` of the measurements."""
    s = run["sharpness"]
    return float(torch.tensor(s[int(len(s) * (1 - frac)):]).median())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="recipes/out", help="output directory (PNG, W&B files)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--n", type=int, default=1000, help="number of training samples")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--every", type=int, default=10, help="measure sharpness every this many steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small models: 1 is fastest)")
    p.add_argument("--online", action="store_true", help="stream to W&B instead of offline files")
    args = p.parse_args(argv)
    if not args.online:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import wandb

    wrun = wandb.init(project="geomonitor-recipes", name="edge_of_stability", dir=args.out, config=vars(args))
    wandb.define_metric("step")
    wandb.define_metric("*", step_metric="step")
    fig, (ax, axl) = plt.subplots(1, 2, figsize=(11, 4))
    for i, lr in enumerate(args.lrs):
        run = run_gd(lr, args.steps, n=args.n, width=args.width, measure_every=args.every, log=wrun.log)
        color = f"C{i}"
        ax.plot(run["step"], run["sharpness"], color=color, label=f"lr={lr}")
        ax.axhline(2 / lr, color=color, ls="--", lw=1)
        axl.plot(run["step"], run["loss"], color=color, label=f"lr={lr}")
        med = late_median(run)
        print(f"lr={lr}: 2/lr={2 / lr:.2f}, late median sharpness={med:.2f} ({med * lr / 2:.3f} x 2/lr), "
              f"final loss={run['loss'][-1]:.4f}, mean HVPs/measurement={sum(run['n_hvp']) / len(run['n_hvp']):.1f}")
    ax.set(xlabel="step", ylabel="sharpness (top Hessian eigenvalue)", title="full-batch GD: sharpness vs 2/lr")
    axl.set(xlabel="step", ylabel="train loss", yscale="log", title="train loss")
    ax.legend()
    axl.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "edge_of_stability.png")
    fig.savefig(path, dpi=110)
    wrun.finish()
    print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
