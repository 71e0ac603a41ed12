"""Overhead of the default ``GeometryMonitor`` on the quickstart training (digits MLP, SGD).

Each run is a fresh subprocess (so peak RSS is per run): ``trainer.fit`` without a monitor,
with ``GeometryMonitor()`` at its defaults (5% overhead budget), and with the same schedule and
no budget, alternating, ``--repeats`` times each. Reports medians of
the fit wall time and of the peak resident memory (``ru_maxrss``), and the cost of one
measurement of each family (training-thread part and background part).

    python benchmarks/bench_monitor_overhead.py --repeats 5 --epochs 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = {"off": "without monitor", "on": "GeometryMonitor() defaults (max_overhead=0.05)",
         "fixed": "GeometryMonitor(max_overhead=None): every scheduled measurement"}


def _one_run(mode: str, epochs: int) -> dict:
    import warnings

    import pytorch_lightning as pl
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    sys.path.insert(0, os.path.join(HERE, "..", "recipes"))
    from _common import digits_loaders
    from quickstart import DigitsMLP

    from geomonitor.callbacks import GeometryMonitor

    pl.seed_everything(0, verbose=False)
    train, _ = digits_loaders()
    callbacks, timings = [], {}
    mon = None
    if mode != "off":
        mon = GeometryMonitor() if mode == "on" else GeometryMonitor(max_overhead=None)
        for fam in mon._families:
            _time_family(fam, timings)
        callbacks.append(mon)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                         callbacks=callbacks, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    t0 = time.perf_counter()
    trainer.fit(DigitsMLP(), train)
    wall = time.perf_counter() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    deferred = dict(mon.budget.deferred) if mon is not None else {}
    return {"wall": wall, "rss": rss_mib, "steps": trainer.global_step, "timings": timings,
            "deferred": deferred}


def _time_family(fam, timings: dict) -> None:
    run = fam.run

    def timed(ctx):
        t0 = time.perf_counter()
        out = run(ctx)
        timings.setdefault(f"{fam.name} (training thread)", []).append(time.perf_counter() - t0)
        if callable(out):
            job = out

            def timed_job():
                t1 = time.perf_counter()
                res = job()
                timings.setdefault(f"{fam.name} (background)", []).append(time.perf_counter() - t1)
                return res

            return timed_job
        return out

    fam.run = timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_one_run(args.worker, args.epochs)))
        return

    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:  # alternating
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--epochs",
                                  str(args.epochs)], env=env, capture_output=True, text=True,
                                 check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(mode, key):
        return statistics.median(r[key] for r in runs[mode])

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, torch threads 2")
    print(f"quickstart MLP on digits, {args.epochs} epochs ({runs['on'][0]['steps']} steps), "
          f"{args.repeats} alternating runs each, medians\n")
    print("| run | fit wall time (s) | peak RSS (MiB) | wall overhead | memory overhead |")
    print("|---|---|---|---|---|")
    for mode, label in MODES.items():
        wall = med(mode, "wall") / med("off", "wall") - 1
        rss = med(mode, "rss") / med("off", "rss") - 1
        print(f"| {label} | {med(mode, 'wall'):.2f} | {med(mode, 'rss'):.0f} | "
              f"{100 * wall:+.1f}% | {100 * rss:+.1f}% |")
    deferred = {k: statistics.median(r["deferred"].get(k, 0) for r in runs["on"])
                for r0 in runs["on"] for k in r0["deferred"]}
    print(f"\ndeferred by the 5% budget (median per run): {deferred}\n")
    print("| family part (GeometryMonitor() defaults) | measurements per run | median ms per measurement |")
    print("|---|---|---|")
    merged: dict[str, list[float]] = {}
    for r in runs["on"]:
        for k, v in r["timings"].items():
            merged.setdefault(k, []).extend(v)
    n = len(runs["on"])
    for k in sorted(merged):
        print(f"| {k} | {len(merged[k]) // n} | {1000 * statistics.median(merged[k]):.1f} |")


if __name__ == "__main__":
    main()
