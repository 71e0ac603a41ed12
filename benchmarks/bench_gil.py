"""What persistence work beside training costs the training loop: a thread against a process.

A training loop (the quickstart MLP, SGD, one intra-op thread) runs ``--steps`` steps alone,
then again while a second thread computes landmark persistence diagrams (128 landmarks of 256
points in 128 dimensions, H1) without pause, (a) with giotto-ph called in that thread and
(b) with giotto-ph in a :class:`~geomonitor.topology.ripser_process.RipserProcess` (the
thread prepares H0 and the landmarks, then waits on the child). Reports, per round, the
training loop's extra wall time per second of background work, and the median over rounds.

    python benchmarks/bench_gil.py --rounds 5
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time

import torch

from _loop import sgd_steps

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(HERE, "..", "recipes"))
    from quickstart import DigitsMLP

    from geomonitor.topology import RipserProcess, prepare_diagrams

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
    cloud = torch.randn(256, 128, generator=g)
    train = sgd_steps(DigitsMLP(), [(X, y)], lr=0.1)

    def beside(ripser) -> tuple[float, float]:
        stop, busy = threading.Event(), [0.0]

        def work() -> None:
            torch.set_num_threads(1)
            while not stop.is_set():
                t = time.perf_counter()
                prep = prepare_diagrams(cloud, 1, n_landmarks=128,
                                        generator=torch.Generator().manual_seed(0))
                prep.complete(ripser)
                busy[0] += time.perf_counter() - t

        th = threading.Thread(target=work)
        th.start()
        wall = train(args.steps)
        stop.set()
        th.join()
        return wall, busy[0]

    child = RipserProcess(low_priority=True)  # as the monitor runs it
    child(torch.zeros(3, 3).double().numpy(), 1)  # started and warm
    train(200)
    rows = {"thread": [], "process": []}
    for _ in range(args.rounds):
        for name, ripser in (("thread", None), ("process", child)):
            alone = train(args.steps)
            wall, busy = beside(ripser)
            rows[name].append((wall - alone) / busy)
    child.close()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.steps} training steps per measurement, {args.rounds} rounds\n")
    print("| giotto-ph runs in | training-loop seconds lost per background second: median | rounds |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| a {name} | {statistics.median(r):.2f} | {', '.join(f'{x:.2f}' for x in r)} |")


if __name__ == "__main__":
    main()
