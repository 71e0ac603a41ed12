"""Overhead of the default ``GeometryMonitor`` on the quickstart training (digits MLP, SGD).

Three runs of ``trainer.fit``: without a monitor, with ``GeometryMonitor()`` at its defaults
(5% overhead budget), and with the same schedule and no budget, for each torch intra-op
thread count in ``--threads``.

* Wall time: in one process, after one warm-up fit of each run, ``--repeats`` rounds that
  alternate the three. The machine's speed drifts by tens of percent between seconds, so the
  overhead reported is the median (and quartiles) of the per-round ratios to the fit without
  monitor of the same round.
* CPU time: the same rounds, counted as CPU seconds of the training process (all its
  threads) and of its reaped children (the giotto-ph process): time the VM's neighbours take
  from it does not count, so this is the steadier measure of the monitor's extra work.
* Paired (``--paired R``, one torch thread): the machine's speed also drifts between its two
  CPUs and within seconds, so two processes pinned to one CPU each run the same fit at the
  same time, one without and one with the monitor, and swap CPUs every round: the overhead
  is the median (and quartiles) of the ``R`` per-round ratios, and the median of the means of
  each two consecutive rounds (one on each CPU).
* Cold start and memory: ``--cold`` fresh processes per run (imports, lazy initialisations
  and the giotto-ph child's start included), alternating; median fit wall time, peak RSS of
  the training process and of its largest child (the giotto-ph process).
* Per family: measurements per fit and median cost (training-thread part in wall time;
  background part as the worker thread's CPU time, which is what the budget charges), and
  ``budget.spent / fit time``.

    python benchmarks/bench_monitor_overhead.py --epochs 20 --repeats 15 --cold 3 --threads 1 2
    python benchmarks/bench_monitor_overhead.py --epochs 200 --paired 30 --threads 1 --modes off on
    python benchmarks/bench_monitor_overhead.py --accelerator gpu ...   # also peak GPU memory
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = {"off": "without monitor", "on": "`GeometryMonitor()` defaults (`max_overhead=0.04`)",
         "fixed": "`GeometryMonitor(max_overhead=None)`: every scheduled measurement"}


def _fit(mode: str, epochs: int, timings: dict | None = None, accelerator: str = "cpu") -> dict:
    import pytorch_lightning as pl

    sys.path.insert(0, os.path.join(HERE, "..", "recipes"))
    from _common import digits_loaders
    from quickstart import DigitsMLP

    from geomonitor.callbacks import GeometryMonitor

    pl.seed_everything(0, verbose=False)
    train, _ = digits_loaders()
    mon, child = None, {}
    if mode != "off":
        mon = GeometryMonitor() if mode == "on" else GeometryMonitor(max_overhead=None)
        for fam in mon._families:
            if timings is not None:
                _time_family(fam, timings)
            if fam.name == "topology":
                _record_child_peak(fam, child)
    trainer = pl.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                         callbacks=[mon] if mon is not None else [], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    ru0, c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), time.perf_counter()
    trainer.fit(DigitsMLP(), train)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - c0 + (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"wall": wall, "cpu": cpu, "steps": trainer.global_step, "child_rss": child.get("rss", 0.0),
            "child_pss": child.get("pss", 0.0),
            "spent": mon.budget.spent if mon is not None else 0.0,
            "hooks_us": 1e6 * mon._dispatch.per_batch if mon is not None else 0.0}


def _record_child_peak(fam, child: dict) -> None:
    """Peak RSS (VmHWM) and proportional set size (Pss: shared library pages split between
    the processes sharing them) of the giotto-ph child, Linux, read just before the fit closes it.
    (``RUSAGE_CHILDREN`` would report the parent's size: it counts the pages shared before
    the child's ``exec``.)"""
    close = fam.close

    def recorded():
        pid = fam._ripser.pid
        if pid is not None:
            for key, path, field in (("rss", "status", "VmHWM:"), ("pss", "smaps_rollup", "Pss:")):
                try:
                    with open(f"/proc/{pid}/{path}") as f:
                        line = next(x for x in f if x.startswith(field))
                    child[key] = int(line.split()[1]) / 1024
                except (OSError, StopIteration):
                    pass
        close()

    fam.close = recorded


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


def _cold(mode: str, epochs: int, accelerator: str) -> dict:
    import torch

    out = _fit(mode, epochs, accelerator=accelerator)
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["gpu"] = torch.cuda.max_memory_allocated() / 2**20 if accelerator == "gpu" else 0.0
    return out


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def _warm(args: argparse.Namespace) -> tuple[dict, dict]:
    walls: dict[str, list[dict]] = {m: [] for m in args.modes}
    timings: dict[str, dict] = {m: {} for m in args.modes if m != "off"}
    for mode in args.modes:
        _fit(mode, 1, accelerator=args.accelerator)
    for _ in range(args.repeats):
        for mode in args.modes:
            per_fit: dict = {}
            walls[mode].append(_fit(mode, args.epochs, per_fit if mode != "off" else None,
                                    args.accelerator))
            for k, v in per_fit.items():
                timings[mode].setdefault(k, []).append(v)
    return walls, timings


def _pair_worker(cpu: int, modes: list[str], epochs: int, barrier: object, results: object) -> None:
    os.sched_setaffinity(0, {cpu})
    warnings.filterwarnings("ignore")
    import logging

    import pytorch_lightning  # noqa: F401 - configures its loggers on import
    import torch

    for name in ("pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)

    torch.set_num_threads(1)
    for mode in sorted(set(modes)):
        _fit(mode, 1)
    for i, mode in enumerate(modes):
        barrier.wait()
        results.put((i, mode, cpu, _fit(mode, epochs)))


def _paired(args: argparse.Namespace, mode: str) -> list[tuple[dict, dict]]:
    """``args.paired`` rounds of (without monitor, ``mode``) run at the same time on CPUs 0
    and 1, swapping CPUs every round; returns (off, mode) fit results per round."""
    rounds = args.paired
    plan = {0: ["off" if r % 2 == 0 else mode for r in range(rounds)],
            1: [mode if r % 2 == 0 else "off" for r in range(rounds)]}
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_pair_worker, args=(cpu, plan[cpu], args.epochs, barrier, results))
             for cpu in (0, 1)]
    for proc in procs:
        proc.start()
    got: dict[int, dict[str, dict]] = {}
    for _ in range(2 * rounds):
        i, m, _cpu, out = results.get()
        got.setdefault(i, {})[m] = out
        if len(got[i]) == 2:
            print(f"paired round {i}: off {got[i]['off']['wall']:.3f} s, {m if m != 'off' else mode} "
                  f"{got[i][mode]['wall']:.3f} s", file=sys.stderr, flush=True)
    for proc in procs:
        proc.join()
    return [(got[i]["off"], got[i][mode]) for i in range(rounds)]


def _report_paired(args: argparse.Namespace, pairs: dict[str, list[tuple[dict, dict]]]) -> None:
    print(f"\n## paired: {args.paired} rounds, two processes pinned to CPUs 0 and 1 at the same time "
          f"(one torch thread each), swapping CPUs every round, {args.epochs} epochs\n")
    print("| run | fit wall without monitor, median (s) | wall overhead: median [quartiles] of rounds "
          "| median of two-round means (one per CPU) | monitor's own time / fit "
          "| Lightning's hook calls, charged per batch (us) |")
    print("|---|---|---|---|---|---|")
    for mode, rounds in pairs.items():
        ratios = [100 * (on["wall"] / off["wall"] - 1) for off, on in rounds]
        lo, mid, hi = _quartiles(ratios)
        means = [(a + b) / 2 for a, b in zip(ratios[::2], ratios[1::2])]
        own = statistics.median(100 * on["spent"] / on["wall"] for _, on in rounds)
        print(f"| {MODES[mode]} | {statistics.median(off['wall'] for off, _ in rounds):.3f} | "
              f"{mid:+.1f}% [{lo:+.1f}, {hi:+.1f}] | "
              f"{statistics.median(means) if means else float('nan'):+.1f}% | {own:.1f}% | "
              f"{statistics.median(on['hooks_us'] for _, on in rounds):.1f} |")


def _report(threads: int, args: argparse.Namespace, walls: dict, timings: dict, cold: dict) -> None:
    print(f"\n## torch intra-op threads: {threads}\n")
    print(f"quickstart MLP on digits, {args.epochs} epochs ({walls['on'][0]['steps']} steps); "
          f"warm: {args.repeats} alternating rounds in one process; cold: {args.cold} fresh "
          "processes per run\n")
    print("| run | fit wall, warm (s) | wall overhead, warm: median [quartiles] | CPU-time "
          "overhead, warm: median [quartiles] | monitor's own time / fit | fit wall, cold (s) "
          "| cold overhead | peak RSS (MiB) | giotto-ph child peak RSS / PSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    cold_off = statistics.median(r["wall"] for r in cold["off"])
    rss_off = statistics.median(r["rss"] for r in cold["off"])
    for mode, label in ((m, MODES[m]) for m in args.modes):
        ratios = [100 * (a["wall"] / b["wall"] - 1) for a, b in zip(walls[mode], walls["off"])]
        lo, mid, hi = _quartiles(ratios)
        clo, cmid, chi = _quartiles([100 * (a["cpu"] / b["cpu"] - 1)
                                     for a, b in zip(walls[mode], walls["off"])])
        own = statistics.median(100 * r["spent"] / r["wall"] for r in walls[mode])
        cw = statistics.median(r["wall"] for r in cold[mode])
        rss = statistics.median(r["rss"] for r in cold[mode])
        child = statistics.median(r["child_rss"] for r in cold[mode])
        pss = statistics.median(r["child_pss"] for r in cold[mode])
        print(f"| {label} | {statistics.median(r['wall'] for r in walls[mode]):.3f} | "
              f"{mid:+.1f}% [{lo:+.1f}, {hi:+.1f}] | {cmid:+.1f}% [{clo:+.1f}, {chi:+.1f}] | "
              f"{own:.1f}% | {cw:.3f} | "
              f"{100 * (cw / cold_off - 1):+.1f}% | {rss:.0f} ({100 * (rss / rss_off - 1):+.1f}%) "
              f"| {child:.0f} / {pss:.0f} |")
    if args.accelerator == "gpu":
        gpu_off = statistics.median(r["gpu"] for r in cold["off"])
        for mode, label in ((m, MODES[m]) for m in args.modes):
            gpu = statistics.median(r["gpu"] for r in cold[mode])
            print(f"\npeak GPU memory allocated, {label}: {gpu:.1f} MiB "
                  f"({100 * (gpu / gpu_off - 1):+.1f}%)")
    for mode in (m for m in args.modes if m != "off"):
        print(f"\n| family part, {MODES[mode]} | measurements per fit (median) | median ms each |")
        print("|---|---|---|")
        for k in sorted(timings[mode]):
            counts = [len(v) for v in timings[mode][k]]
            counts += [0] * (args.repeats - len(counts))
            values = [x for v in timings[mode][k] for x in v]
            print(f"| {k} | {statistics.median(counts):g} | {1000 * statistics.median(values):.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--cold", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                   help="runs to compare (off is always included)")
    p.add_argument("--paired", type=int, default=0, metavar="R",
                   help="also R concurrent pinned rounds per mode (one torch thread, 2+ CPUs)")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.modes = ["off"] + [m for m in args.modes if m != "off"]
    if args.paired and (args.accelerator != "cpu" or (os.cpu_count() or 1) < 2):
        p.error("--paired needs the CPU accelerator and at least 2 CPUs")
    warnings.filterwarnings("ignore")
    import logging

    import pytorch_lightning  # noqa: F401 - configures its loggers on import
    import torch

    for name in ("pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)

    if args.worker:
        torch.set_num_threads(args.threads[0])
        print(json.dumps(_cold(args.worker, args.epochs, args.accelerator)))
        return
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, torch {torch.__version__}, "
          f"accelerator {args.accelerator}"
          + (f" ({torch.cuda.get_device_name()})" if args.accelerator == "gpu" else ""))
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    if args.paired:
        _report_paired(args, {m: _paired(args, m) for m in args.modes if m != "off"})
    for threads in args.threads if args.repeats and args.cold else ():  # the alternating runs
        cold: dict[str, list[dict]] = {m: [] for m in args.modes}
        for _ in range(args.cold):
            for mode in args.modes:
                out = subprocess.run([sys.executable, __file__, "--worker", mode, "--epochs",
                                      str(args.epochs), "--threads", str(threads),
                                      "--accelerator", args.accelerator], env=env,
                                     capture_output=True, text=True, check=True)
                cold[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"cold {mode}: {cold[mode][-1]['wall']:.3f} s", file=sys.stderr, flush=True)
        torch.set_num_threads(threads)
        walls, timings = _warm(args)
        _report(threads, args, walls, timings, cold)


if __name__ == "__main__":
    main()
