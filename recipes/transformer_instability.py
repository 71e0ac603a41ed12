"""Transformer instability alerts, with their lead time over a loss-spike detector.

    python recipes/transformer_instability.py                     # 5 seeds x 2 learning rates
    python recipes/transformer_instability.py --seeds 10 --unstable-lr 0.5

A small causal character-level transformer (the decoder of ``recipes/transformer.py``:
pre-LayerNorm ``nn.TransformerEncoderLayer`` blocks under a causal mask, on the source of the
standard library's ``argparse`` module) is trained with AdamW (betas 0.9/0.95, no weight
decay, linear warmup) at two learning rates: an unstable one, where the loss spikes and
diverges (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities": small models reproduce the large-scale instabilities at high learning rates),
and a stable one. The monitor (:class:`geomonitor.monitor.Monitor` with the
:class:`~geomonitor.monitor.families.AttentionFamily` every ``--every`` steps, on fixed
held-out windows) feeds three rules (:mod:`geomonitor.monitor.attention_alerts`, default
arguments):

* ``attention_logit_growth`` -- a layer's max attention logit 10x its value 5 readings earlier
  (and above 10);
* ``attention_entropy_collapse`` -- a layer's mean attention entropy below half its early value
  (Zhai et al. 2023);
* ``output_logit_divergence`` -- the output logits' mean ``|logit|`` 3x its value 5 readings
  earlier (and above 5).

The baseline is the loss-spike rule of Lightning's ``SpikeDetection`` (``mode="min"``,
``window=10``, ``warmup=1``, ``rtol=2``, ``atol=None``, ``finite_only=True``), re-stated in
:func:`spike_step`: from the second batch on, a non-finite loss is a spike; a loss that is not
below the previous one is a spike when it is at least ``rtol`` x the running mean of the last
``window`` non-spike losses above that mean. The *spike step* is its first firing (Lightning
stops training there). An alert's *lead time* is ``spike step - alert step`` (positive: the
alert came first); the *false-alarm rate* is the share of stable-LR runs in which the rule fired
at all.

Output: a table per rule (seeds, detections before the spike, median and range of the lead
time, false-alarm rate) and the figure ``--out`` (default
``docs/figures/transformer_instability.png``): loss, max attention logit, attention entropy and
mean ``|logit|`` for the first seed at both learning rates, spike and alert steps marked.

Defaults: d_model 32, 2 blocks, 4 heads, context 32, batch 16, warmup 50 steps, 200 steps,
unstable lr 1.0, stable lr 1e-2, 5 seeds, probe of 16 held-out windows, attention readings every
2 steps; an unstable run stops 10 steps after its spike. Results: README section "Transformer
instability signals".
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections import deque
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import save_figure  # noqa: E402
from transformer import CharTransformer, Vocabulary, corpus, evenly_spaced_windows  # noqa: E402

from geomonitor.monitor import Every, Monitor  # noqa: E402
from geomonitor.monitor.attention_alerts import (AttentionEntropyCollapse,  # noqa: E402
                                                 AttentionLogitGrowth, OutputLogitDivergence)
from geomonitor.monitor.families import AttentionFamily  # noqa: E402

RULES = ("attention_logit_growth", "attention_entropy_collapse", "output_logit_divergence")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "figures",
                           "transformer_instability.png")


def spike_step(losses: list[float], *, window: int = 10, warmup: int = 1, rtol: float | None = 2.0,
               atol: float | None = None) -> int | None:
    """The first batch index (0-based) at which Lightning's ``SpikeDetection`` rule (mode
    ``"min"``, ``finite_only=True``) fires on ``losses``, or ``None``. See the module doc."""
    recent: deque[float] = deque(maxlen=window)
    last = 0.0
    for i, loss in enumerate(losses):
        if i >= warmup:
            if not math.isfinite(loss):
                return i
            mean = sum(recent) / len(recent) if recent else math.nan
            if loss > last and (atol is None or abs(loss - mean) >= abs(atol)) and (
                    rtol is None or abs(loss - mean) >= abs(rtol * mean)):
                return i
        if math.isfinite(loss):
            recent.append(loss)
            last = loss
    return None


def make_rules() -> dict[str, Any]:
    return {"attention_logit_growth": AttentionLogitGrowth(),
            "attention_entropy_collapse": AttentionEntropyCollapse(),
            "output_logit_divergence": OutputLogitDivergence()}


def train(lr: float, seed: int, args: argparse.Namespace, ids: torch.Tensor,
          probe: torch.Tensor, vocab: int) -> dict[str, Any]:
    """One run: per-step losses, the attention readings, and each rule's first alert step."""
    torch.manual_seed(seed)
    model = CharTransformer(vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                            context=args.context)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    monitor = Monitor(model, probe=probe, sink=lambda d, step=None: None, probe_size=len(probe),
                      families=[AttentionFamily(Every(n_steps=args.every))], max_overhead=None,
                      verbose=False)
    rules = make_rules()
    first: dict[str, int | None] = dict.fromkeys(RULES)
    g = torch.Generator().manual_seed(seed)
    T = args.context
    losses: list[float] = []
    readings: list[tuple[int, dict[str, float]]] = []
    stop_at = args.steps
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / args.warmup)
        starts = torch.randint(0, len(ids) - T - 1, (args.batch,), generator=g).tolist()
        w = torch.stack([ids[s: s + T + 1] for s in starts])
        logits = model(w[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        metrics = monitor.step(step)
        if metrics:
            readings.append((step, metrics))
            for name, rule in rules.items():
                sel = rule.select(metrics)
                if sel and rule.update(step, sel) is not None and first[name] is None:
                    first[name] = step
        if stop_at == args.steps and spike_step(losses, rtol=args.spike_rtol) is not None:
            stop_at = min(args.steps, step + 10)
        if step >= stop_at:
            break
    monitor.close()
    idx = spike_step(losses, rtol=args.spike_rtol)
    return {"lr": lr, "seed": seed, "losses": losses, "readings": readings,
            "spike": None if idx is None else idx + 1, "alerts": first}


def summarize(runs: list[dict[str, Any]], unstable: float, stable: float) -> list[dict[str, Any]]:
    """One row per rule (and the loss-spike baseline): lead times at the unstable learning
    rate, false-alarm rate at the stable one."""
    hot = [r for r in runs if r["lr"] == unstable]
    cold = [r for r in runs if r["lr"] == stable]
    rows = []
    for name in RULES:
        leads = [r["spike"] - r["alerts"][name] for r in hot
                 if r["spike"] is not None and r["alerts"][name] is not None]
        before = [x for x in leads if x > 0]
        rows.append({"rule": name, "seeds": len(hot), "spiked": sum(r["spike"] is not None for r in hot),
                     "before_spike": len(before), "leads": leads,
                     "median_lead": statistics.median(leads) if leads else None,
                     "min_lead": min(leads) if leads else None, "max_lead": max(leads) if leads else None,
                     "false_alarms": sum(r["alerts"][name] is not None for r in cold),
                     "stable_runs": len(cold)})
    rows.append({"rule": "loss spike (SpikeDetection)", "seeds": len(hot),
                 "spiked": sum(r["spike"] is not None for r in hot), "before_spike": 0,
                 "leads": [0 for r in hot if r["spike"] is not None], "median_lead": 0 if hot else None,
                 "min_lead": 0, "max_lead": 0, "false_alarms": sum(r["spike"] is not None for r in cold),
                 "stable_runs": len(cold)})
    return rows


def table(rows: list[dict[str, Any]], unstable: float, stable: float) -> str:
    out = [f"| rule | runs spiking at lr {unstable:g} | alert before the spike | lead time, median "
           f"(range) [steps] | false alarms at lr {stable:g} |", "|---|---|---|---|---|"]
    for r in rows:
        lead = ("--" if r["median_lead"] is None else
                f"{r['median_lead']:g} ({r['min_lead']:g} to {r['max_lead']:g})")
        out.append(f"| {r['rule']} | {r['spiked']}/{r['seeds']} | {r['before_spike']}/{r['spiked']} | "
                   f"{lead} | {r['false_alarms']}/{r['stable_runs']} |")
    return "\n".join(out)


def figure(runs: list[dict[str, Any]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    seed = runs[0]["seed"]
    for run, color in zip([r for r in runs if r["seed"] == seed], ("tab:red", "tab:blue")):
        label = f"lr {run['lr']:g}"
        axes[0].plot(range(1, len(run["losses"]) + 1), run["losses"], color=color, label=label)
        steps = [s for s, _ in run["readings"]]
        for ax, summary, pick in ((axes[1], "max_logit", max), (axes[2], "entropy", min)):
            vals = [pick(v for k, v in m.items() if k.endswith(f"/{summary}")) for _, m in run["readings"]]
            ax.plot(steps, vals, color=color, label=label)
        axes[3].plot(steps, [m.get("geometry/output_logits/mean_abs", math.nan) for _, m in run["readings"]],
                     color=color, label=label)
        for ax in axes:
            if run["spike"] is not None:
                ax.axvline(run["spike"], color="k", ls="--", lw=1)
            for name, style in zip(RULES, (":", "-.", (0, (1, 3)))):
                if run["alerts"][name] is not None:
                    ax.axvline(run["alerts"][name], color=color, ls=style, lw=1)
    axes[1].set_yscale("log")
    for ax, title in zip(axes, ("training loss", "max attention logit (max over layers)",
                                "attention entropy (min over layers)", "output mean |logit|")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"seed {seed}: dashed black = loss spike (SpikeDetection); coloured ':' logit growth, "
                 "'-.' entropy collapse, dotted output divergence", fontsize=9)
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--unstable-lr", type=float, default=1.0)
    p.add_argument("--stable-lr", type=float, default=1e-2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--probe", type=int, default=16)
    p.add_argument("--spike-rtol", type=float, default=1.0,
                   help="SpikeDetection's rtol (Lightning's default is 2.0; see the module doc)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=DEFAULT_OUT, help="path of the PNG figure ('' for none)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    text = corpus()
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    cut = int(0.9 * len(ids))
    probe, _ = evenly_spaced_windows(ids[cut:], args.context, args.probe)
    t0 = time.perf_counter()
    runs = [train(lr, seed, args, ids[:cut], probe, len(vocab))
            for seed in range(args.seeds) for lr in (args.unstable_lr, args.stable_lr)]
    seconds = time.perf_counter() - t0
    for r in runs:
        print(f"lr {r['lr']:g} seed {r['seed']}: spike at step {r['spike']}, alerts "
              + ", ".join(f"{k} {v}" for k, v in r["alerts"].items()))
    rows = summarize(runs, args.unstable_lr, args.stable_lr)
    print(table(rows, args.unstable_lr, args.stable_lr))
    print(f"{len(runs)} runs in {seconds:.0f} s")
    if args.out:
        figure(runs, args.out)
        print(f"figure: {args.out}")
    return {"runs": runs, "rows": rows, "seconds": seconds}


if __name__ == "__main__":
    main()
