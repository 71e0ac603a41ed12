"""Cost of one measurement of each family, in training steps, on a small CNN and a char LM.

The unit of cost is the training step: forward, backward and AdamW step on a batch of 64
(``benchmarks/_models.py``: :func:`cnn_case` -- a 4-block CNN with BatchNorm, 33.6k
parameters, 3x32x32 images; :func:`char_lm_case` -- the 0.82M-parameter causal transformer
of ``recipes/transformer.py`` at d_model 128, 4 blocks, context 64). Each family (``id``,
``topology``, ``np`` = neural persistence, ``symmetry``) runs alone at the library defaults
(:func:`geomonitor.monitor.families.build_families` with only that family on, every step) in
a :class:`geomonitor.monitor.Monitor` with ``layers="auto"``, a probe set of 256 samples and
no cost cap. The loop is: a timed training step, then one measurement; ``--repeats``
measurements per family, the first one *cold* (pays set-up: structure discovery, a child
process start-up), the others *warm* (median reported).

Per measurement:

* ``thread``: wall seconds of the measurement on the training thread (what the engine's
  cost cap charges; includes the shared activation forward), in training steps;
* ``bg``: CPU seconds outside the training thread (the background worker's thread and the
  giotto-ph child process of topology), in training steps; it runs beside training on another
  core.

Training steps are timed in the same loop (after three warm-up steps, two before each
measurement; the median of them for that model and family), so a busy machine slows both
sides alike.

    python benchmarks/bench_family_steps.py --repeats 5 --threads 2
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _models  # noqa: E402

from geomonitor.monitor import Monitor  # noqa: E402
from geomonitor.monitor.families import DEFAULTS, build_families  # noqa: E402

FAMILIES = ("id", "topology", "np", "symmetry")
CASES = {"cnn": _models.cnn_case, "lm": _models.char_lm_case}


def _off() -> dict[str, None]:
    prefixes = {k.rsplit("_every_n_", 1)[0] for k in DEFAULTS if "_every_n_" in k}
    return {f"{p}_every_n_{u}": None for p in prefixes for u in ("steps", "epochs")}


def _wait(mon: Monitor, timeout: float = 120.0) -> None:
    """Let the background job finish and charge it (the engine would at its next step)."""
    t0 = time.perf_counter()
    while mon._worker.pending and time.perf_counter() - t0 < timeout:
        time.sleep(0.005)
    mon._drain()


def measure(case: str, family: str, repeats: int) -> dict[str, list[float]]:
    """Training-step seconds and, per measurement, thread and background seconds."""
    model, batch, probe, loss = CASES[case]()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fams = build_families(**{**_off(), f"{family}_every_n_steps": 1})
    name = fams[0].name
    mon = Monitor(model, probe=probe, families=fams, loss_fn=loss, layers="auto",
                  max_overhead=None)
    steps, thread, background = [], [], []

    def train_step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad()
        loss(model, batch).backward()
        opt.step()
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up: allocator, AdamW state
        train_step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(1, repeats + 1):
            steps += [train_step(), train_step()]
            mon.step(s, optimizer=opt)
            thread.append(mon.cap._thread.get(name, float("nan")))
            _wait(mon)
            background.append(mon.cap.cost.get(name, 0.0) - thread[-1])
        mon.close()
    if mon.errors:
        print(f"  {case}/{family}: errors {dict(mon.errors)}", file=sys.stderr)
    return {"step": steps, "thread": thread, "bg": background, "layers": list(mon.modules)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--repeats", type=int, default=5, help="measurements per family (first: cold)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.repeats < 2:
        ap.error("--repeats must be >= 2 (one cold, at least one warm)")
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} threads; {args.repeats} measurements per family "
          "(cold = first, warm = median of the others); cost in training steps (AdamW, batch 64)")
    print()
    print("| model | train step (ms) | family | layers | warm: thread | warm: bg CPU | "
          "cold: thread | cold: bg CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.models:
        for family in args.families:
            r = measure(case, family, args.repeats)
            step = statistics.median(r["step"])
            warm_t = statistics.median(r["thread"][1:]) / step
            warm_b = statistics.median(r["bg"][1:]) / step
            layers = len(r["layers"]) if family not in ("np",) else "-"
            print(f"| {case} | {1e3 * step:.0f} | {family} | {layers} | {warm_t:.2f} | {warm_b:.2f} | "
                  f"{r['thread'][0] / step:.2f} | {r['bg'][0] / step:.2f} |", flush=True)


if __name__ == "__main__":
    main()
