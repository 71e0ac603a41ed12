"""Overhead of the default ``GeometryMonitor`` on the quickstart training (digits MLP, SGD).

Each run is a fresh subprocess (so peak RSS is per run): ``trainer.fit`` without a monitor,
with ``GeometryMonitor()`` at its defaults (5% overhead budget), and with the same schedule and
no budget, alternating, ``--repeats`` times each, for each torch intra-op thread count in
``--threads``. Reports the median fit wall time, the median of the per-repeat ratios to the
run without monitor just before it (neighbours in time share the machine's state, which
varies by tens of percent between runs), the peak resident memory of the training process
and of its largest child (the giotto-ph process), how many measurements of each family ran
and their median cost (training-thread part in wall time; background part as the CPU time of
the worker thread, which is what the budget charges: not the giotto-ph child's time).

    python benchmarks/bench_monitor_overhead.py --repeats 7 --epochs 20 --threads 1 2
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


def _one_run(mode: str, epochs: int, threads: int) -> dict:
    import warnings

    import pytorch_lightning as pl
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
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
    child_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    deferred = dict(mon.budget.deferred) if mon is not None else {}
    return {"wall": wall, "rss": rss_mib, "child_rss": child_mib, "steps": trainer.global_step,
            "timings": timings, "deferred": deferred}


def _time_family(fam, timings: dict) -> None:
    run = fam.run

    def timed(ctx):
        t0 = time.perf_counter()
        out = run(ctx)
        timings.setdefault(f"{fam.name} (training thread)", []).append(time.perf_counter() - t0)
        if callable(out):
            job = out

            def timed_job():
                t1 = time.thread_time()
                res = job()
                timings.setdefault(f"{fam.name} (background)", []).append(time.thread_time() - t1)
                return res

            return timed_job
        return out

    fam.run = timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_one_run(args.worker, args.epochs, args.threads[0])))
        return

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    for threads in args.threads:
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:  # alternating
                out = subprocess.run([sys.executable, __file__, "--worker", mode, "--epochs",
                                      str(args.epochs), "--threads", str(threads)], env=env,
                                     capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        _report(runs, args, threads)


def _report(runs: dict[str, list[dict]], args: argparse.Namespace, threads: int) -> None:
    def med(mode, key):
        return statistics.median(r[key] for r in runs[mode])

    print(f"\n## torch intra-op threads: {threads}\n")
    print(f"quickstart MLP on digits, {args.epochs} epochs ({runs['on'][0]['steps']} steps), "
          f"{args.repeats} alternating runs each, medians\n")
    print("| run | fit wall time (s) | wall overhead (median of paired ratios) | "
          "peak RSS (MiB) | child peak RSS (MiB) | memory overhead |")
    print("|---|---|---|---|---|---|")
    for mode, label in MODES.items():
        ratio = statistics.median(a["wall"] / b["wall"] - 1 for a, b in zip(runs[mode], runs["off"]))
        rss = med(mode, "rss") / med("off", "rss") - 1
        print(f"| {label} | {med(mode, 'wall'):.3f} | {100 * ratio:+.1f}% | "
              f"{med(mode, 'rss'):.0f} | {med(mode, 'child_rss'):.0f} | {100 * rss:+.1f}% |")
    walls = {m: ", ".join(f"{r['wall']:.2f}" for r in runs[m]) for m in MODES}
    print(f"\nall fit wall times (s): {walls}")
    deferred = {k: statistics.median(r["deferred"].get(k, 0) for r in runs["on"])
                for r0 in runs["on"] for k in r0["deferred"]}
    print(f"deferred by the 5% budget (median per run): {deferred}\n")
    for mode in ("on", "fixed"):
        print(f"| family part ({MODES[mode]}) | measurements per run (median) | median ms per measurement |")
        print("|---|---|---|")
        names = sorted({k for r in runs[mode] for k in r["timings"]})
        for k in names:
            counts = [len(r["timings"].get(k, [])) for r in runs[mode]]
            values = [v for r in runs[mode] for v in r["timings"].get(k, [])]
            print(f"| {k} | {statistics.median(counts):g} | {1000 * statistics.median(values):.1f} |")
        print()


if __name__ == "__main__":
    main()
