"""How many Hessian-vector products the sharpness estimator needs on the 4-block CNN, and how
far it lands from an independent eigensolver, warm and cold, along one training run.

The CNN of ``benchmarks/_models.py`` (33.6k parameters, BatchNorm, ReLU, max-pooling: the
``"auto"`` backend is the exact double backward) trains with AdamW (lr 1e-3, batch 64). At
each checkpoint the Adam-preconditioned sharpness of the loss on 32 probe images is measured
by :class:`geomonitor.sharpness.SharpnessEstimator` at each ``tol`` (the family defaults: 1e-2,
``min_cold=6``, at most 20 products) twice: *warm* (one estimator carried across checkpoints,
as the monitor does) and *cold* (a fresh estimator, seeded per checkpoint); the reference is
SciPy's ARPACK (``eigsh``, tol 1e-6) on the same products (``bench_defaults._reference``).

    python benchmarks/bench_sharpness_cnn.py --steps 10,200,400,600,800,1000
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _models  # noqa: E402
from bench_defaults import _reference  # noqa: E402

from geomonitor.sharpness import SharpnessEstimator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="10,200,400,600,800,1000")
    ap.add_argument("--tols", default="0.01,0.03,0.1")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model, _, probe, loss = _models.cnn_case(seed=0)
    data = _models.cnn_case(seed=1, batch_size=64 * 16)[1]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sharp_batch = tuple(t[:32] for t in probe)
    lossf = lambda: loss(model, sharp_batch)  # noqa: E731
    tols = [float(t) for t in args.tols.split(",")]
    warm = {t: SharpnessEstimator(tol=t, max_hvp=20, seed=0, min_cold=6) for t in tols}
    print("| step | ARPACK | " + " | ".join(f"tol {t}: warm products / error, cold products / error" for t in tols) + " |")
    print("|---|---|" + "---|" * len(tols))
    s = 0
    for c in (int(x) for x in args.steps.split(",")):
        while s < c:
            i = s % 16
            s += 1
            opt.zero_grad()
            loss(model, tuple(t[64 * i: 64 * (i + 1)] for t in data)).backward()
            opt.step()
        ref = _reference(model, lossf, opt)
        cells = []
        for t in tols:
            rw = warm[t].measure(model, lossf, optimizer=opt)
            rc = SharpnessEstimator(tol=t, max_hvp=20, seed=c, min_cold=6).measure(model, lossf, optimizer=opt)
            cells.append(f"{rw.n_hvp} / {abs(rw.sharpness - ref) / ref:.1e}, {rc.n_hvp} / {abs(rc.sharpness - ref) / ref:.1e}")
        print(f"| {c} | {ref:.4g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
