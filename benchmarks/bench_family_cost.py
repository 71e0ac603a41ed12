"""Cost of one measurement of each family on the models users bring, at the defaults.

Models built from configs with random weights (``benchmarks/_models.py``): a 4-layer
``nn.TransformerEncoder`` language model, a Hugging Face GPT-2 (4 layers, width 128) and a
ResNet-18 with BatchNorm on 32×32 images. Each family runs alone in a
``geomonitor.monitor.Monitor`` with ``layers="auto"`` and the default probe sizes (256
probe samples; sharpness on the first 64; topology on 128 landmarks), measured at every step
of ``--repeats`` steps (no training in between: the cost of a measurement, not of a run).
Reported: the median training-thread seconds per measurement (what the engine's cost cap
charges on the thread) and, for topology, the CPU seconds of its background part (the giotto-ph
child, whose start-up is paid once), next to one training step (forward, backward, SGD
step) on a batch of 64.

    python benchmarks/bench_family_cost.py --repeats 3
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
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _models  # noqa: E402

from geomonitor.monitor import Monitor  # noqa: E402
from geomonitor.monitor.families import build_families  # noqa: E402

FAMILIES = ("id", "sharpness", "topology", "np")


def _case(name: str, gen: torch.Generator):
    n = 256
    if name == "transformer":
        model = _models.transformer()
        x = torch.randint(0, 64, (n, 32), generator=gen)
        y = torch.randint(0, 64, (n, 32), generator=gen)
        probe = (x, y)

        def loss(m, b):
            return F.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten())
    elif name == "gpt2":
        model = _models.gpt2()
        ids = torch.randint(0, 256, (n, 32), generator=gen)
        probe = [{"input_ids": r, "labels": r.clone()} for r in ids]
        probe = torch.utils.data.DataLoader(probe, batch_size=8)

        def loss(m, b):
            return m(**b).loss
    else:
        model = _models.resnet18()
        probe = (torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))

        def loss(m, b):
            return F.cross_entropy(m(b[0]), b[1])
    return model, probe, loss


def _train_step(model, probe, loss) -> float:
    batch = probe if not isinstance(probe, tuple) else tuple(t[:64] for t in probe)
    if isinstance(probe, torch.utils.data.DataLoader):
        rows = [probe.dataset[i] for i in range(64)]
        batch = probe.collate_fn(rows)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss(model, batch).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, family: str, repeats: int) -> tuple[float, float, list[str]]:
    gen = torch.Generator().manual_seed(0)
    model, probe, loss = _case(name, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    off = {f"{f}_every_n_{u}": None for f in FAMILIES for u in ("steps", "epochs")}
    fams = build_families(**{**off, f"{family}_every_n_steps": 1})
    mon = Monitor(model, probe=probe, families=fams, loss_fn=loss, layers="auto", reduce="mean",
                  max_overhead=None)
    loss(model, probe if isinstance(probe, tuple) else next(iter(probe))).backward()
    opt.step()  # Adam state exists: preconditioned sharpness
    thread = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(1, repeats + 1):
            mon.step(s, optimizer=opt)
            thread.append(mon.cap._thread.get(fams[0].name, float("nan")))
        mon.close()
    background = mon.cap.cost.get(fams[0].name, 0.0) - thread[-1]
    if mon.errors:
        print(f"  {name}/{family}: errors {mon.errors}", file=sys.stderr)
    return statistics.median(thread), background, list(mon.modules)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["transformer", "gpt2", "resnet18"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} threads; median of {args.repeats} measurements")
    print("| model | parameters | train step, batch 64 (s) | ID (s) | sharpness (s) | topology: thread (s) / child CPU (s) | neural persistence (s) | layers (auto) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        gen = torch.Generator().manual_seed(0)
        model, probe, loss = _case(name, gen)
        step = _train_step(model, probe, loss)
        params = sum(p.numel() for p in model.parameters())
        cells, layers = [], []
        for family in FAMILIES:
            thread, background, selected = measure(name, family, args.repeats)
            layers = selected if family == "id" else layers
            cells.append(f"{thread:.2f} / {background:.2f}" if family == "topology" else f"{thread:.2f}")
        print(f"| {name} | {params / 1e6:.2f}M | {step:.3f} | {' | '.join(cells)} | {len(layers)}: "
              f"{', '.join(layers[:3])}{', ...' if len(layers) > 3 else ''} |", flush=True)


if __name__ == "__main__":
    main()
