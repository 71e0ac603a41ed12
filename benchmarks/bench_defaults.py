"""What the defaults cost and give: overhead, points per curve, cost per family in training
steps, and the sharpness backends side by side.

Models (``benchmarks/_models.py``): the 4-block CNN with BatchNorm (33.6k parameters, batch 64
of 3x32x32 images) and the 0.82M-parameter causal transformer LM of ``recipes/transformer.py``
(d_model 128, 4 blocks, context 64, batch 64 windows), both trained with AdamW.

1. **Overhead at defaults.** ``--rounds`` alternating rounds of the same seeded fit (a plain
   loop of ``--cnn-steps`` / ``--lm-steps`` optimizer steps) without and with
   ``geomonitor.monitor.Monitor(model, probe, loss_fn=..., total_steps=N)`` at its defaults
   (every default family asked every 10 steps, ``max_overhead=0.05``; the Lightning and
   Hugging Face adapters pass ``total_steps`` the same way). Reported: the wall-time
   overhead (median and range over rounds), the points each family measured, and each
   family's last cost in training steps (``Monitor.summary()``).
2. **Sharpness backends.** On the LM (ReLU feed-forward, as in the recipe) and the same LM
   with GELU: a cold measurement after 30 AdamW steps and a warm one 10 optimizer steps
   later, by ``hvp="fd"`` (central differences) and ``hvp="exact"`` (double backward), at
   the family's defaults (32 probe windows, tol 1e-2, at most 20 products, 6 before a cold
   start may stop). Cost in training steps (the measurement's wall time over the median
   training step measured beside it), products, and the relative error against an
   independent eigensolver: SciPy's ARPACK (``eigsh``, tol 1e-6) on the exact
   Adam-preconditioned Hessian-vector products.

    python benchmarks/bench_defaults.py --rounds 3 --threads 2
    python benchmarks/bench_defaults.py --rounds 3 --device cuda     # on a GPU
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _models  # noqa: E402

from geomonitor.monitor import Monitor  # noqa: E402
from geomonitor.monitor.summary import period_text  # noqa: E402
from geomonitor.sharpness import HVPOperator, SharpnessEstimator  # noqa: E402
from geomonitor.sharpness.isolation import isolated  # noqa: E402
from geomonitor.sharpness.preconditioned import adam_preconditioner  # noqa: E402

CASES = {"cnn": _models.cnn_case, "lm": _models.char_lm_case}


DEVICE = torch.device("cpu")


def _to(x):
    return tuple(t.to(DEVICE) for t in x)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _fit(case: str, steps: int, monitored: bool, seed: int) -> tuple[float, dict | None]:
    model, _, probe, loss = CASES[case](seed=seed)
    model, probe = model.to(DEVICE), _to(probe)
    data = _to(CASES[case](seed=seed + 1, batch_size=64 * 16)[1])   # 16 batches, cycled
    _sync()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = Monitor(model, probe=probe, loss_fn=loss, total_steps=steps, verbose=False) if monitored else None
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        i = (s - 1) % 16
        batch = tuple(t[64 * i: 64 * (i + 1)] for t in data)
        opt.zero_grad()
        loss(model, batch).backward()
        opt.step()
        if mon is not None:
            mon.step(s, optimizer=opt)
    if mon is not None:
        mon.close()
    _sync()
    return time.perf_counter() - t0, (mon.summary() if mon is not None else None)


def overhead(case: str, steps: int, rounds: int) -> None:
    base, with_mon, summaries = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(rounds):
            base.append(_fit(case, steps, False, r)[0])
            t, summary = _fit(case, steps, True, r)
            with_mon.append(t)
            summaries.append(summary)
    over = [m / b - 1 for m, b in zip(with_mon, base)]
    print(f"\n### {case}: {steps} steps, {rounds} rounds; training step {statistics.median(base) / steps * 1e3:.1f} ms")
    print(f"overhead median {statistics.median(over):+.1%} (rounds {', '.join(f'{o:+.1%}' for o in over)}); "
          f"the cap's own account {statistics.median(s['overhead'] for s in summaries):.1%}")
    print("| family | points per curve (rounds) | cost of its last measurement, training steps (rounds) | period in force |")
    print("|---|---|---|---|")
    for name in summaries[0]["families"]:
        fams = [s["families"][name] for s in summaries]
        pts = ", ".join(str(f["points"]) for f in fams)
        cost = ", ".join("-" if f["cost_steps"] is None else f"{f['cost_steps']:.1f}" for f in fams)
        print(f"| {name} | {pts} | {cost} | {period_text(fams[-1]['period'])} |")


def _lm(gelu: bool, seed: int = 0):
    model, batch, probe, loss = _models.char_lm_case(seed=seed)
    model, batch, probe = model.to(DEVICE), _to(batch), _to(probe)
    if gelu:
        for layer in model.blocks.layers:
            layer.activation, layer.activation_relu_or_gelu = F.gelu, 2
    return model, batch, probe, loss


def _reference(model, lossf, opt) -> float:
    """Top eigenvalue of P^-1/2 H P^-1/2 by ARPACK on exact products (float64 vectors)."""
    import scipy.sparse.linalg as sla

    params = [p for p in model.parameters() if p.requires_grad]
    d = adam_preconditioner(opt, params).rsqrt().float()
    dev = d.device
    with isolated(model) as m:
        op = HVPOperator(lossf, params)

        def mv(x):
            v = torch.from_numpy(np.asarray(x, dtype=np.float32).ravel()).to(dev)
            return (d * op(d * v)).double().cpu().numpy()

        val = sla.eigsh(sla.LinearOperator((op.dim, op.dim), matvec=mv), k=1, which="LA", tol=1e-6)[0][0]
        op.release()
    return float(val)


def backends(threads: int) -> None:
    print("\n### sharpness backends on the LM: cold (after 30 AdamW steps), warm (10 steps later)")
    print("| LM activation | backend | cold: steps / products / rel. error | warm: steps / products / rel. error |")
    print("|---|---|---|---|")
    for gelu in (False, True):
        model, batch, probe, loss = _lm(gelu)
        data = _to(_models.char_lm_case(seed=1, batch_size=64 * 40)[1])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sharp_batch = tuple(t[:32] for t in probe)
        lossf = lambda: loss(model, sharp_batch)  # noqa: E731
        ests = {b: SharpnessEstimator(tol=1e-2, max_hvp=20, seed=0, hvp=b, min_cold=6) for b in ("fd", "exact")}
        cells = {b: [] for b in ests}
        step = 0

        def train(n: int) -> float:
            nonlocal step
            times = []
            for _ in range(n):
                i = step % 40
                step += 1
                _sync()
                t0 = time.perf_counter()
                opt.zero_grad()
                loss(model, tuple(t[64 * i: 64 * (i + 1)] for t in data)).backward()
                opt.step()
                _sync()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        for phase, n in (("cold", 30), ("warm", 10)):
            t_step = train(n)
            ref = _reference(model, lossf, opt)
            for b, est in ests.items():
                _sync()
                t0 = time.perf_counter()
                r = est.measure(model, lossf, optimizer=opt)
                _sync()
                t = time.perf_counter() - t0
                cells[b].append(f"{t / t_step:.1f} / {r.n_hvp} / {abs(r.sharpness - ref) / ref:.1e}")
        for b in ests:
            print(f"| {'GELU' if gelu else 'ReLU (recipe)'} | {b} | {cells[b][0]} | {cells[b][1]} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cnn-steps", type=int, default=1000)
    ap.add_argument("--lm-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--skip", nargs="*", default=[], choices=["cnn", "lm", "backends"])
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "none"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} threads, device {DEVICE} (GPU: {gpu})")
    if "cnn" not in args.skip:
        overhead("cnn", args.cnn_steps, args.rounds)
    if "lm" not in args.skip:
        overhead("lm", args.lm_steps, args.rounds)
    if "backends" not in args.skip:
        backends(args.threads)


if __name__ == "__main__":
    main()
