"""Does a measurement leave training slower afterwards? Step time after each kind of measurement.

Two views, one intra-op thread, the quickstart MLP (digits, SGD):

* ``--loop torch`` (default): a plain torch loop. Each round runs, for every kind below, the
  measurement once and then times ``--steps`` training steps; the median over ``--rounds``
  rounds is compared with the control ("none": no measurement). Kinds: giotto-ph H1 on 128
  landmarks, ``prepare_diagrams`` (H0, landmarks, distances), sharpness (20 HVPs), TwoNN,
  neural persistence, all on 256 probe points.
* ``--loop lightning``: the Lightning fit with ``GeometryMonitor`` measuring one family
  every 25 steps (giotto-ph on the training thread, as under the budget), each step timed
  from ``on_train_batch_start`` to ``on_train_batch_end``. Per measurement, the excess of
  the steps after it over the mean of the 20 steps before it, in windows (the first step,
  steps 2-5, 6-16), as a share of the measurement's own time; the control puts the same
  windows at the same steps of a fit without measurements. Also what
  ``AfterEffectMeter`` charged per measurement in the same fits.

    python benchmarks/bench_after_effect.py --rounds 12
    python benchmarks/bench_after_effect.py --loop lightning --rounds 2
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

import torch

from _loop import sgd_steps

HERE = os.path.dirname(os.path.abspath(__file__))


WINDOWS = ((0, 1), (1, 5), (5, 16))


def _lightning_fit(family: str | None, epochs: int) -> tuple[list[float], list[tuple[int, float]], float]:
    """Step times, (step index, seconds) of each measurement, and what the meter charged."""
    import time

    import pytorch_lightning as pl
    from _common import digits_loaders
    from quickstart import DigitsMLP

    from geomonitor.callbacks import GeometryMonitor

    class Steps(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_train_batch_start(self, *args: object) -> None:
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, *args: object) -> None:
            self.times.append(time.perf_counter() - self._t0)

    never = dict(id_every_n_steps=None, sharpness_every_n_steps=None, topology_every_n_epochs=None,
                 np_every_n_epochs=None)
    every = {"TwoNN": dict(id_every_n_steps=25), "sharpness": dict(sharpness_every_n_steps=25),
             "topology": dict(topology_every_n_steps=25), "neural persistence": dict(np_every_n_steps=25)}
    steps, events, callbacks = Steps(), [], []
    callbacks.append(steps)
    mon = None
    if family is not None:
        mon = GeometryMonitor(max_overhead=None, prog_bar=None, **{**never, **every[family]})
        for fam in mon._families:
            run = fam.run

            def timed(ctx, run=run):
                ctx.credit = -1.0  # giotto-ph on the training thread, as under the budget
                t0 = time.perf_counter()
                out = run(ctx)
                events.append((len(steps.times), time.perf_counter() - t0))
                return out

            fam.run = timed
        callbacks.append(mon)
    pl.seed_everything(0, verbose=False)
    train, _ = digits_loaders()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         callbacks=callbacks, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(DigitsMLP(), train)
    return steps.times, events, (mon._meter.charged if mon is not None else 0.0)


def _windows(times: list[float], at: list[int]) -> list[float]:
    """Summed excess (s) of each window after each index in ``at`` over the 20 steps before."""
    rows = []
    for i in at:
        if i < 20 or i + WINDOWS[-1][1] > len(times):
            continue
        base = statistics.fmean(times[i - 20:i])
        rows.append([sum(t - base for t in times[i + a:i + b]) for a, b in WINDOWS])
    return [statistics.median(col) for col in zip(*rows)]


def lightning(args: argparse.Namespace) -> None:
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    families = ["TwoNN", "sharpness", "topology", "neural persistence"]
    for family in [None] + families:
        _lightning_fit(family, 1)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"Lightning fits of {args.epochs} epochs, one family measured every 25 steps, "
          f"{args.rounds} rounds\n")
    print("| measured | measurement (ms, median) | excess: step 1 | steps 2-5 | steps 6-16 | "
          "steps 1-16, share of the measurement | AfterEffectMeter charge per measurement (ms) |")
    print("|---|---|---|---|---|---|---|")
    for family in ["control"] + families:
        ex, cost, charged = [], [], []
        for _ in range(args.rounds):
            times, events, meter = _lightning_fit(None if family == "control" else family, args.epochs)
            at = [i for i, _ in events] if events else list(range(13, len(times), 25))
            ex.append(_windows(times, at))
            cost += [s for _, s in events]
            charged.append(meter / max(len(events), 1))
        w = [statistics.median(col) for col in zip(*ex)]
        c = statistics.median(cost) if cost else 0.0
        share = f"{100 * sum(w) / c:.0f}%" if c else "-"
        print(f"| {family} | {1000 * c:.1f} | " + " | ".join(f"{1000 * x:+.2f} ms" for x in w)
              + f" | {share} | {1000 * statistics.median(charged):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--loop", choices=["torch", "lightning"], default="torch")
    p.add_argument("--epochs", type=int, default=30, help="--loop lightning: epochs per fit")
    args = p.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(HERE, "..", "recipes"))
    if args.loop == "lightning":
        lightning(args)
        return
    sys.path.insert(0, os.path.join(HERE, "..", "recipes"))
    from _common import digits_loaders
    from gph import ripser_parallel
    from quickstart import DigitsMLP

    from geomonitor.intrinsic import intrinsic_dimension
    from geomonitor.sharpness import SharpnessEstimator
    from geomonitor.topology import neural_persistence_network, prepare_diagrams

    loader, _ = digits_loaders()
    batches = list(loader)
    torch.manual_seed(0)
    model = DigitsMLP()
    probe_x = torch.cat([b[0] for b in batches])[:256]
    probe_y = torch.cat([b[1] for b in batches])[:256]
    acts = torch.tanh(model.fc1(probe_x)).detach()
    est = SharpnessEstimator(max_hvp=20)

    train = sgd_steps(model, batches, lr=0.01)

    def probe_loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(probe_x), probe_y)

    kinds = {
        "none": lambda: None,
        "giotto-ph H1": lambda: ripser_parallel(prepare_diagrams(acts, 1, n_landmarks=128).distances,
                                                metric="precomputed", maxdim=1, n_threads=1),
        "prepare_diagrams": lambda: prepare_diagrams(acts, 1, n_landmarks=128),
        "sharpness": lambda: est.measure(model, probe_loss, lr=0.01),
        "TwoNN": lambda: intrinsic_dimension(acts),
        "neural persistence": lambda: neural_persistence_network(model),
    }
    for fn in kinds.values():
        fn()
    train(args.steps)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for name, fn in kinds.items():
            fn()
            times[name].append(train(args.steps))
    base = statistics.median(times["none"])
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{args.steps} steps, median of {args.rounds} rounds\n")
    print("| measurement before the steps | step time (ms) | vs none |")
    print("|---|---|---|")
    for name in kinds:
        t = statistics.median(times[name])
        print(f"| {name} | {1000 * t / args.steps:.3f} | {100 * (t / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
