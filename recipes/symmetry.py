"""Parameter symmetry on sklearn's digits: balance, dead and duplicate units, rank, collapse.

    python recipes/symmetry.py                        # 4 weight decays, ~1 minute on 2 CPU cores
    python recipes/symmetry.py --steps 500 --out /tmp/s.png

The same 64-128-128-10 ReLU MLP (``fc1``, ``fc2``, ``fc3``) is trained with plain SGD (lr
0.05, batch 64, no momentum) and coupled weight decay lambda in {0, 1e-3, 1e-2, 3e-2}, in a
plain PyTorch loop. Every ``--every`` steps :class:`~geomonitor.monitor.families.symmetry.
SymmetryFamily` measures, on a fixed probe set of 512 training images with their labels: the
rescaling imbalance of the hidden units of ``fc1`` and ``fc2``, their dead fraction and
duplicate count, the effective and stable rank of every weight, RankMe of both hidden
representations, and neural collapse at ``fc3``.

Theory (Du, Hu & Lee 2018; Ziyin, Xu, Poggio & Chuang 2025): under SGD with weight decay the
per-unit imbalance obeys D(t+1) = (1 - eta lambda)^2 D(t) + eta^2 (|g_in|^2 - |g_out|^2), so
``||D||`` decays like (1 - eta lambda)^(2t) until the eta^2 term balances it; without weight
decay only the eta^2 term acts. Stronger weight decay should restore symmetries: more dead
units, more duplicate units, lower rank (Ziyin 2024).

What the default run shows is printed at the end (``summary``) and drawn in the figure
(``--out``, default ``recipes/out/symmetry.png``): imbalance of fc1's units over training
against the predicted geometric decay, dead/duplicate units and ranks against weight decay,
accuracy and NC1. The README's symmetry section reports the numbers of the default run and
where they differ from the theory.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from geomonitor.monitor.families.symmetry import SymmetryFamily
from geomonitor.monitor.family import Context
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.layers import capture_activations
from geomonitor.monitor.schedule import Every

WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 3e-2)
HIDDEN = ("fc1", "fc2")


class MLP(nn.Module):
    """64-128-128-10 with ReLU modules ``act1``, ``act2`` (the representations measured)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(64, 128), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(128, 128), nn.ReLU()
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def digits(seed: int) -> tuple[torch.Tensor, ...]:
    """sklearn's 8x8 digits scaled to [0, 1]: an 80/20 split (seeded)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.as_tensor(X / 16.0, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    n = int(0.8 * len(X))
    return X[perm[:n]], y[perm[:n]], X[perm[n:]], y[perm[n:]]


def train_one(wd: float, data: tuple[torch.Tensor, ...], *, steps: int, every: int, lr: float,
              seed: int, probe_size: int = 512) -> dict[str, Any]:
    """Train with weight decay ``wd``; return the family's metrics per measured step."""
    Xtr, ytr, Xva, yva = data
    torch.manual_seed(seed)  # the same initialisation for every weight decay
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(seed)
    probe = (Xtr[:probe_size], ytr[:probe_size])
    family = SymmetryFamily(Every(n_steps=every))
    forward = lambda m, b: m(b[0])  # noqa: E731
    acts = {"act1": model.act1, "act2": model.act2}
    history: dict[int, dict[str, float]] = {}

    def measure(step: int) -> None:
        ctx = Context(model, step, probe, lambda: capture_activations(
            model, acts, lambda: forward(model, probe)), forward=forward)
        m = family.run(ctx)
        if m.errors:
            raise RuntimeError(f"measurement errors at step {step}: {m.errors}")
        with torch.no_grad():
            m.metrics["val/acc"] = float((model(Xva).argmax(1) == yva).float().mean())
        history[step] = m.metrics

    measure(0)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(Xtr), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
        opt.step()
        if step % every == 0 or step == steps:
            measure(step)
    return {"wd": wd, "history": history}


def series(run: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = sorted(s for s, m in run["history"].items() if key in m)
    return np.array(steps), np.array([run["history"][s][key] for s in steps])


def decay_rate(run: dict[str, Any], layer: str, floor: float = 0.05) -> float:
    """Least-squares slope of log ||D|| per step, over the measured steps before ||D|| first
    falls below ``floor`` x its initial value (after that the eta^2 term holds it up)."""
    s, v = series(run, metric_key("symmetry", layer, "imbalance"))
    below = np.nonzero(v < floor * v[0])[0]
    end = int(below[0]) if below.size else len(v)
    end = max(end, 2)
    return float(np.polyfit(s[:end], np.log(v[:end]), 1)[0])


def summarize(runs: list[dict[str, Any]], lr: float) -> str:
    lines = ["weight decay | log-decay/step of fc1's ||D|| while > 5% of start (predicted) "
             "| ||D|| fc1 start -> end | dead fc1/fc2 | duplicates fc1/fc2 | erank fc1/fc2/fc3 "
             "| RankMe act1/act2 | NC1 | val acc"]
    for r in runs:
        wd = r["wd"]
        last = r["history"][max(r["history"])]
        first = r["history"][0]
        k = lambda layer, s: last[metric_key("symmetry", layer, s)]  # noqa: E731
        imb = metric_key("symmetry", "fc1", "imbalance")
        lines.append(
            f"{wd:<12g} | {decay_rate(r, 'fc1'):+.2e} ({2 * math.log(1 - lr * wd):+.2e})"
            f" | {first[imb]:.3f} -> {last[imb]:.3g}"
            f" | {k('fc1', 'dead_fraction'):.2f}/{k('fc2', 'dead_fraction'):.2f}"
            f" | {k('fc1', 'duplicates'):.0f}/{k('fc2', 'duplicates'):.0f}"
            f" | {k('fc1', 'effective_rank'):.1f}/{k('fc2', 'effective_rank'):.1f}/"
            f"{k('fc3', 'effective_rank'):.1f}"
            f" | {k('act1', 'rankme'):.1f}/{k('act2', 'rankme'):.1f}"
            f" | {last[metric_key('neural_collapse', 'fc3', 'nc1')]:.3f} | {last['val/acc']:.3f}")
    return "\n".join(lines)


def figure(runs: list[dict[str, Any]], lr: float, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(16, 8.5))
    wds = [r["wd"] for r in runs]
    xs = np.arange(len(runs))
    for i, r in enumerate(runs):
        s, v = series(r, metric_key("symmetry", "fc1", "imbalance"))
        c = f"C{i}"
        ax[0, 0].semilogy(s, v, "o-", ms=2, color=c, label=f"wd {r['wd']:g}")
        ax[0, 0].semilogy(s, v[0] * (1 - lr * r["wd"]) ** (2 * s), "--", color=c, lw=1)
        s, v = series(r, metric_key("symmetry", "fc2", "imbalance_rel"))
        ax[0, 1].semilogy(s, v, "o-", ms=2, color=c, label=f"wd {r['wd']:g}")
        s, v = series(r, metric_key("neural_collapse", "fc3", "nc1"))
        ax[1, 2].semilogy(s, v, "o-", ms=2, color=c, label=f"NC1, wd {r['wd']:g}")
    ax[0, 0].set(title="||D|| of fc1's units (dashed: (1 - lr wd)^(2t) ||D_0||)",
                 xlabel="step", ylabel="imbalance norm")
    ax[0, 0].legend(fontsize=8)
    ax[0, 1].set(title="relative imbalance of fc2's units", xlabel="step")
    ax[0, 1].legend(fontsize=8)
    final = [r["history"][max(r["history"])] for r in runs]
    for j, layer in enumerate(HIDDEN):
        ax[0, 2].bar(xs + (j - 0.5) * 0.35, [f[metric_key("symmetry", layer, "dead_fraction")] for f in final],
                     0.35, label=f"dead fraction {layer}")
    ax[0, 2].set_xticks(xs, [f"{w:g}" for w in wds])
    ax[0, 2].set(title="dead units (end of training)", xlabel="weight decay", ylabel="fraction")
    twin = ax[0, 2].twinx()
    for j, layer in enumerate(HIDDEN):
        twin.plot(xs, [f[metric_key("symmetry", layer, "duplicates")] for f in final], "s-",
                  color=f"C{j + 3}", label=f"duplicates {layer}")
    twin.set_ylabel("duplicate units")
    ax[0, 2].legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper center", fontsize=8)
    for layer in ("fc1", "fc2", "fc3"):
        ax[1, 0].plot(xs, [f[metric_key("symmetry", layer, "effective_rank")] for f in final], "o-",
                      label=f"erank W {layer}")
    for layer in ("act1", "act2"):
        ax[1, 0].plot(xs, [f[metric_key("symmetry", layer, "rankme")] for f in final], "s--",
                      label=f"RankMe {layer}")
    ax[1, 0].set_xticks(xs, [f"{w:g}" for w in wds])
    ax[1, 0].set(title="rank (end of training)", xlabel="weight decay")
    ax[1, 0].legend(fontsize=8)
    for i, r in enumerate(runs):
        s, v = series(r, "val/acc")
        ax[1, 1].plot(s, v, "-", color=f"C{i}", label=f"wd {r['wd']:g}")
    ax[1, 1].set(title="validation accuracy", xlabel="step", ylim=(0, 1))
    ax[1, 1].legend(fontsize=8)
    ax[1, 2].set(title="NC1 at fc3's input", xlabel="step")
    ax[1, 2].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="SGD steps per weight decay")
    parser.add_argument("--every", type=int, default=100, help="steps between measurements")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decays", type=float, nargs="+", default=list(WEIGHT_DECAYS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("recipes", "out", "symmetry.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and spares a shared machine
    t0 = time.perf_counter()
    data = digits(args.seed)
    runs = [train_one(wd, data, steps=args.steps, every=args.every, lr=args.lr, seed=args.seed)
            for wd in args.weight_decays]
    summary = summarize(runs, args.lr)
    figure(runs, args.lr, args.out)
    print(summary)
    print(f"figure: {args.out} ({time.perf_counter() - t0:.0f} s)")
    return {"runs": runs, "summary": summary, "out": args.out}


if __name__ == "__main__":
    main()
