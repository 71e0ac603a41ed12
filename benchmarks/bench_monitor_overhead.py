"""Overhead of the monitor engine on two trainings: the quickstart MLP (~1 ms steps) and a
CNN whose steps take >= 10 ms, in a plain PyTorch loop driving ``geomonitor.monitor.Monitor``.

Modes, alternated in rounds in one process after a warm-up of each (the machine's speed
drifts between seconds, so overheads are per-round ratios to the run without monitor of
the same round, summarised by their median and quartiles):

* ``off``: no monitor;
* ``on``: ``Monitor`` defaults (``max_overhead=0.05``: the cost cap);
* ``fixed``: the same schedule, ``max_overhead=None`` (every scheduled measurement).

For ``on`` it also reports the cap's own account (``cap.spent / cap.training_time()``) and
the measurements run and skipped per family.

    python benchmarks/bench_monitor_overhead.py --model mlp --steps 2000 --rounds 7
    python benchmarks/bench_monitor_overhead.py --model cnn --steps 300 --rounds 5
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.monitor import Monitor


def _data(model: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if model == "mlp":
        from sklearn.datasets import load_digits

        d = load_digits()
        return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    return torch.randn(2048, 3, 32, 32, generator=gen), torch.randint(0, 10, (2048,), generator=gen)


def _model(model: str) -> nn.Module:
    if model == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                             nn.Linear(64, 10))
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def run(model_name: str, mode: str, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    X, y = _data(model_name, gen)
    model = _model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = None
    if mode != "off":
        mon = Monitor(model, probe=(X, y), loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                      max_overhead=0.05 if mode == "on" else None, reduce="mean",
                      id_every_n_steps=100, sharpness_every_n_steps=50,
                      topology_every_n_steps=200, topology_every_n_epochs=None,
                      np_every_n_steps=200, np_every_n_epochs=None)
    n = X.shape[0]
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        idx = torch.randint(0, n, (batch,), generator=gen)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(s, optimizer=opt)
    if mon is not None:
        mon.close()
    wall = time.perf_counter() - t0
    out = {"wall": wall}
    if mon is not None:
        out["cap"] = mon.cap.spent / max(mon.cap.training_time(), 1e-9)
        out["skipped"] = dict(mon.skipped)
        out["last"] = dict(mon._last)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    modes = ("off", "on", "fixed")
    for mode in modes:  # warm-up
        run(args.model, mode, max(50, args.steps // 10), args.batch)
    rows = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            rows[mode].append(run(args.model, mode, args.steps, args.batch))
    base = [r["wall"] for r in rows["off"]]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads; model {args.model}, {args.steps} steps, batch {args.batch}, "
          f"{args.rounds} rounds")
    print(f"off: median {statistics.median(base):.3f} s ({1e3 * statistics.median(base) / args.steps:.2f} ms/step)")
    for mode in ("on", "fixed"):
        ratios = sorted(r["wall"] / b - 1 for r, b in zip(rows[mode], base))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        line = (f"{mode}: overhead median {100 * statistics.median(ratios):+.1f}% "
                f"(quartiles {100 * q[0]:+.1f}%, {100 * q[2]:+.1f}%)")
        if mode == "on":
            line += (f"; cap's account {100 * statistics.median(r['cap'] for r in rows[mode]):.1f}%;"
                     f" skipped (last round) {rows[mode][-1]['skipped']}")
        print(line)


if __name__ == "__main__":
    main()
