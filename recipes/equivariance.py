"""Learned translation equivariance of a small CNN on sklearn's digits, with and without
shift augmentation, per layer over training.

    python recipes/equivariance.py                   # ~1 min on 2 cores
    python recipes/equivariance.py --epochs 2        # a few seconds

A CNN conv(1->16, 3x3) - ReLU - maxpool 2 - conv(16->32, 3x3) - ReLU - flatten -
linear(512->10), with circular padding (so the convolutions are exactly equivariant to
``torch.roll`` and every error comes from the subsampling and the head: the final linear layer
sees every position), is trained twice with Adam (lr 3e-3, batch 64) from the same
initialisation and data order on 80% of the 8x8 digits: once on the images as they are, once
with every image rolled by a random (dy, dx) in {-1, 0, 1}^2. Every ``--every`` steps
:class:`~geomonitor.monitor.families.equivariance.EquivarianceFamily` measures, on 256
held-out images, the mean relative equivariance error (Gruver et al. 2023) for a roll of the
input by one pixel along both axes, ``geometry/equivariance/shift1/<layer>``: for the 8x8
feature maps (``act1``) the output action is the same roll, after the 2x2 pooling (``pool1``,
``act2``, 4x4) a shift by half a sample (Fourier phase; no integer roll matches), and for the
logits (``output``) the identity (invariance). It also logs the Lie derivative of the logits
along a sub-pixel horizontal translation (``fourier_shift``),
``geometry/equivariance/subpixel/lie_derivative``.

Measured with the defaults (``--seed 0``, 15 epochs; printed at the end of a run; 2-core CPU
shared with other jobs: 90 s wall, 20 s CPU)::

    run                  act1   pool1  act2   output  Lie deriv.  test acc  acc, shifted by 1
    no augmentation      0.000  0.301  0.360  0.930   15.8        0.986     0.203
    shift augmentation   0.000  0.330  0.443  0.539    6.8        0.978     0.925

* The circular convolutions are equivariant at float precision (``act1``: 0) throughout.
* The stride-2 pooling breaks equivariance (Zhang 2019; Azulay & Weiss 2019): about 0.3 from
  the first measurement on, in both runs; training does not reduce it, augmentation neither.
* The head is where augmentation acts: the output's invariance error falls from 0.93 to
  0.54 and the Lie derivative from 15.8 to 6.8, and the accuracy on shifted test images
  rises from 0.20 to 0.93, while the hidden feature maps become, if anything, slightly less
  equivariant (0.44 against 0.36 at ``act2``): the network learns invariance in its last
  layer, not equivariant features.

Saved figure (``--out``, default ``recipes/out/equivariance.png``): the error of each layer
over training, with and without augmentation.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.equivariance import fourier_shift
from geomonitor.monitor.families.equivariance import EquivarianceFamily
from geomonitor.monitor.family import Context
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import save_figure  # noqa: E402

LAYERS = ("act1", "pool1", "act2", "output")


class CNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, padding_mode="circular")
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, padding_mode="circular")
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.pool1(self.act1(self.conv1(x)))))
        return self.fc(h.flatten(1))


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.as_tensor(X / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.as_tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    n = int(0.8 * len(X))
    return X[perm[:n]], y[perm[:n]], X[perm[n:]], y[perm[n:]]


def roll(s: int):
    return lambda x: torch.roll(x, (s, s), dims=(-2, -1))


def half_shift(y: torch.Tensor) -> torch.Tensor:
    """A shift by half a sample along both axes of a (N, C, H, W) map (Fourier phase)."""
    return fourier_shift(fourier_shift(y, 0.5, dim=-2), 0.5, dim=-1)


def family(every: int) -> EquivarianceFamily:
    return EquivarianceFamily(
        Every(n_steps=every), {"shift1": (roll(1), None)},
        {"shift1": {"act1": roll(1), "pool1": half_shift, "act2": half_shift}},
        flows={"subpixel": (lambda x, t: fourier_shift(x, t, dim=-1), None)})


def random_shifts(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    s = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=g)
    return torch.stack([torch.roll(xi, (int(a), int(b)), dims=(-2, -1)) for xi, (a, b) in zip(x, s)])


def train(augment: bool, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(args.seed)  # the same initialisation for both runs
    model = CNN(args.width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(args.seed + 1)
    shifts = torch.Generator().manual_seed(args.seed + 2)
    fam = family(args.every)
    probe = (Xte[:256], yte[:256])
    series: dict[str, list[tuple[int, float]]] = {}
    step = 0
    for _ in range(args.epochs):
        perm = torch.randperm(len(Xtr), generator=order)
        for i in range(0, len(Xtr), 64):
            idx = perm[i:i + 64]
            x = random_shifts(Xtr[idx], shifts) if augment else Xtr[idx]
            opt.zero_grad()
            F.cross_entropy(model(x), ytr[idx]).backward()
            opt.step()
            step += 1
            if fam.schedule.due_step(step):
                out = fam.run(Context(model, step, probe, lambda: {}, optimizer=opt))
                for e in out.errors:
                    print(f"step {step}: equivariance error: {e}")
                for k, v in out.metrics.items():
                    series.setdefault(k, []).append((step, v))
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).float().mean())
        acc_shift = float((model(roll(1)(Xte)).argmax(1) == yte).float().mean())
    return {"series": series, "acc": acc, "acc_shifted": acc_shift}


def table(runs: dict[str, dict[str, Any]]) -> str:
    keys = [metric_key("equivariance", "shift1", layer) for layer in LAYERS]
    lie = metric_key("equivariance", "subpixel", "lie_derivative")
    head = "| run | " + " | ".join(LAYERS) + " | Lie derivative | test acc | acc, shifted by 1 |"
    lines = [head, "|" + "---|" * (len(LAYERS) + 4)]
    for name, r in runs.items():
        vals = [r["series"][k][-1][1] if r["series"].get(k) else float("nan") for k in keys]
        lv = r["series"][lie][-1][1] if r["series"].get(lie) else float("nan")
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals)
                     + f" | {lv:.3f} | {r['acc']:.3f} | {r['acc_shifted']:.3f} |")
    return "\n".join(lines)


def figure(runs: dict[str, dict[str, Any]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LAYERS), figsize=(3.2 * len(LAYERS), 3.2), sharey=True)
    for ax, layer in zip(axes, LAYERS):
        key = metric_key("equivariance", "shift1", layer)
        for (name, r), style in zip(runs.items(), ("-", "--")):
            if r["series"].get(key):
                ax.plot(*zip(*r["series"][key]), style, label=name)
        ax.set_title(f"{layer}" + (" (invariance)" if layer == "output" else ""))
        ax.set_xlabel("step")
    axes[0].set_ylabel("relative equivariance error, shift by 1")
    axes[0].legend(fontsize=8)
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--every", type=int, default=25, help="EquivarianceFamily cadence in steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join("recipes", "out", "equivariance.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = digits(args.seed)
    runs = {"no augmentation": train(False, args, data), "shift augmentation": train(True, args, data)}
    print(table(runs))
    figure(runs, args.out)
    print(f"\nfigure: {args.out}")
    return runs


if __name__ == "__main__":
    main()
