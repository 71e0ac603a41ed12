"""Does a measurement leave training slower afterwards? Step time after each kind of measurement.

A plain torch loop trains the quickstart MLP (digits, SGD, one intra-op thread). Each round
runs, for every kind below, the measurement once and then times ``--steps`` training steps;
the median over ``--rounds`` rounds is compared with the control ("none": no measurement).
Kinds: giotto-ph H1 on 128 landmarks, ``prepare_diagrams`` (H0, landmarks, distances),
sharpness (20 HVPs), TwoNN, neural persistence, all on 256 probe points.

    python benchmarks/bench_after_effect.py --rounds 12
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(1)
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
