"""Grokking on modular addition, seen through the geometry monitor.

    python recipes/grokking.py                     # W&B offline, about a minute on a CPU core
    python recipes/grokking.py --online            # stream to W&B
    python recipes/grokking.py --logger csv        # or tensorboard

A one-layer transformer learns ``a + b mod p`` from a fraction of all p^2 pairs (Power et al.,
2022, "Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets"), trained
full-batch with AdamW and strong weight decay. It first memorises the training pairs; much
later the test accuracy jumps ("grokking"). Nanda et al., 2023 ("Progress measures for grokking
via mechanistic interpretability", ICLR) show that the generalising solution embeds the tokens
on circles, one per key frequency k: token a sits at angle 2*pi*k*a/p.

The monitor (:class:`~geomonitor.callbacks.GeometryMonitor`) watches the token-embedding matrix
W_E (its p rows, one point per token, in d_model dimensions) and the loss landscape:

* ``geometry/id/embed``: TwoNN intrinsic dimension of the p embedding vectors;
* ``geometry/ph/embed/h1_max_persistence``, ``.../h1_n_bars``: Vietoris-Rips H1 of the same
  points (giotto-ph) - loops such as Nanda et al.'s circles;
* ``geometry/sharpness`` and ``geometry/eos_ratio``: top eigenvalue of the Adam-preconditioned
  Hessian of the full-batch training loss and its ratio to AdamW's stability threshold
  (Cohen et al., 2022, "Adaptive Gradient Methods at the Edge of Stability");

against ``train/acc`` and ``test/acc``. The figure (``--out``, default
``recipes/out/grokking.png``) plots them over steps (log-x), the final persistence diagram of
W_E, and W_E projected on the plane of its strongest Fourier frequency (a circle when the
model has grokked).

Defaults: p = 59, 40% of the 3481 pairs for training (1392), d_model 64, 4 heads, AdamW
lr 1e-3, weight decay 3, full batch, 3000 steps; ID and persistence every 50 steps, sharpness
(<= 20 Hessian-vector products) every 100. Measured with the defaults (``--seed 0``, one torch
thread: 64 s wall on a loaded 2-core CPU; the summary is printed at the end of a run)::

    memorised (train acc >= 0.99) at step 299; grokked (test acc >= 0.95) at step 899
    final train acc 1.000, test acc 0.986
              ID of W_E: 29.9 (step 50), 15.6 (memorised), 8.77 (grokked), 16.6 (step 3000)
     H1 max persistence: 0.101 (step 50), 0.206 (memorised), 0.345 (grokked), 0.578 (step 3000)
                H1 bars: 48, 52, 38, 39
              eos_ratio: 3.55 (step 100), 0.941 (memorised), 0.829 (grokked), 0.836 (step 3000)
    final W_E: strongest Fourier frequency k=21 holds 40% of the embedding energy

What this shows, honestly: generalisation is *delayed* (test accuracy reaches 0.95 three
times later than train accuracy reaches 0.99) but not the textbook grokking plateau at chance:
test accuracy climbs steadily from 0.4 at memorisation. Smaller training fractions give the
long flat plateau but did not generalise within the time budget here (``--train-frac 0.3``:
test accuracy 0.02-0.05 after 2400 steps at weight decay 3 and after 9300 steps at weight
decay 1). The embedding geometry moves with generalisation: the largest H1 bar grows
throughout (0.21 -> 0.35 -> 0.58) as the tokens settle on circles (the last panel: W_E on
its strongest Fourier plane is a circle ordered by 21a mod p), and the TwoNN dimension of the
59 embedding vectors falls to its minimum (about 8) near the test-accuracy jump, then rises
again while weight decay keeps reshaping W_E. The preconditioned sharpness settles below
AdamW's stability threshold by memorisation and stays flat through the jump: it does not mark
grokking here. TwoNN on 59 points is a coarse estimate; the numbers move by about 100 steps
with 2 torch threads (non-deterministic CPU reductions).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MemoryLogger, add_common_args, save_figure, make_logger, where_it_landed  # noqa: E402


def modular_addition(p: int, train_frac: float, seed: int) -> tuple[torch.Tensor, ...]:
    """All pairs (a, b, '=') with label (a + b) mod p, split at random into train and test.

    Returns ``x_train (n, 3), y_train (n,), x_test (p^2 - n, 3), y_test``; token ``p`` is '='.
    """
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)
    y = (x[:, 0] + x[:, 1]) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n = int(round(train_frac * p * p))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


class FullBatch(Dataset):
    """``length`` copies of one full batch: one item is one optimizer step, so a Lightning
    "epoch" is ``length`` full-batch steps (and validation runs once per epoch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, length: int) -> None:
        self.x, self.y, self.length = x, y, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


class ModAddTransformer(pl.LightningModule):
    """One pre-readout transformer block (no LayerNorm, as in Nanda et al. 2023), written out.

    Input (B, 3) token ids; only the last position ('=') is read out, so attention is computed
    for that query only, and keys/values come from a (token, position) table: the linear maps
    act on p+1 tokens x 3 positions instead of 3B rows (exact, and cheap enough for CPUs).
    Modules: ``embed`` (p+1, d) token embedding W_E, ``pos`` (3, d), ``qkv``, ``o``, ``mlp``
    (d -> 4d -> d, ReLU), ``unembed`` (d -> p).
    """

    def __init__(self, p: int, d_model: int = 64, n_heads: int = 4, lr: float = 1e-3,
                 weight_decay: float = 1.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.p, self.d, self.h = p, d_model, n_heads
        self.lr, self.weight_decay = lr, weight_decay
        self.embed = nn.Embedding(p + 1, d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        self.pos = nn.Parameter(torch.randn(3, d_model) * d_model ** -0.5)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.ReLU(),
                                 nn.Linear(4 * d_model, d_model))
        self.unembed = nn.Linear(d_model, p, bias=False)
        self.register_buffer("tokens", torch.arange(p), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, d, h = x.shape[0], self.d, self.h
        table = self.qkv(self.embed.weight[:, None, :] + self.pos[None])  # (p+1, 3, 3d)
        q, k, v = table[x, torch.arange(3, device=x.device)].chunk(3, dim=-1)  # (B, 3, d) each
        q = q[:, -1].reshape(B, h, 1, d // h)
        k = k.reshape(B, 3, h, d // h).transpose(1, 2)
        v = v.reshape(B, 3, h, d // h).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        z = self.embed.weight[x[:, -1]] + self.pos[-1] + self.o((att @ v).reshape(B, d))
        return self.unembed(z + self.mlp(z))

    def _step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x.reshape(-1, 3))
        y = y.reshape(-1)
        return nn.functional.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, acc = self._step(batch)
        self.log("train/loss", loss)
        self.log("train/acc", acc)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc = self._step(batch)
        self.log("test/loss", loss)
        self.log("test/acc", acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                 betas=(0.9, 0.98))


def embedding_rows(module: ModAddTransformer, batch: Any) -> torch.Tensor:
    """``forward_fn`` for the monitor: look up the p number tokens, so the ``embed`` hook sees
    W_E[:p] (p, d) whatever the probe batch is."""
    return module.embed(module.tokens)


def fourier_circle(W: torch.Tensor) -> tuple[int, torch.Tensor, float]:
    """The frequency k whose cos/sin pair carries most of W's energy (W: (p, d) embedding rows),
    W projected on the plane of that pair (p, 2), and k's share of the total energy.

    For frequency k the rows are correlated with c_k(a) = cos(2 pi k a / p) and
    s_k(a) = sin(2 pi k a / p) (Nanda et al. 2023 do this with the full discrete Fourier basis);
    the plane spanned by W^T c_k and W^T s_k contains the circle on which a generalising model
    places the tokens.
    """
    p = W.shape[0]
    W = W.double() - W.double().mean(0)
    a = torch.arange(p, dtype=torch.float64)
    energy = []
    for k in range(1, (p - 1) // 2 + 1):
        c, s = torch.cos(2 * math.pi * k * a / p), torch.sin(2 * math.pi * k * a / p)
        energy.append(float((W.T @ c).square().sum() + (W.T @ s).square().sum()))
    k = int(torch.tensor(energy).argmax()) + 1
    c, s = torch.cos(2 * math.pi * k * a / p), torch.sin(2 * math.pi * k * a / p)
    basis, _ = torch.linalg.qr(torch.stack([W.T @ c, W.T @ s], dim=1))  # (d, 2) orthonormal
    share = energy[k - 1] / max(float(W.square().sum()) * p / 2, 1e-300)
    return k, (W @ basis).float(), share


def make_monitor(args: argparse.Namespace, probe: tuple[torch.Tensor, ...]) -> pl.Callback:
    """``GeometryMonitor`` on the embedding rows (ID, persistence) and the full-batch training
    loss (Adam-preconditioned sharpness); neural persistence off."""
    from geomonitor.callbacks import GeometryMonitor

    return GeometryMonitor(
        max_overhead=None, layers=["embed"], probe_data=probe, probe_size=len(probe[0]), probe_seed=args.seed,
        forward_fn=embedding_rows,
        id_every_n_steps=args.every, sharpness_every_n_steps=args.sharpness_every,
        sharpness_max_hvp=20, topology_every_n_steps=args.every, topology_every_n_epochs=None,
        topology_landmarks=None, np_every_n_steps=None, np_every_n_epochs=None,
        symmetry_every_n_steps=500, sharpness_probe_size=64, sharpness_tol=1e-3, prog_bar=None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, out=os.path.join("recipes", "out", "grokking.png"))
    parser.add_argument("--p", type=int, default=59, help="modulus (a prime)")
    parser.add_argument("--train-frac", type=float, default=0.4)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=50,
                        help="steps between test evaluations and ID/persistence measurements")
    parser.add_argument("--sharpness-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 makes the run bit-for-bit reproducible (with "
                             "more, CPU reductions change order and the step of the test-"
                             "accuracy jump moves by about a hundred steps)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    pl.seed_everything(args.seed, verbose=False)

    x_tr, y_tr, x_te, y_te = modular_addition(args.p, args.train_frac, args.seed)
    model = ModAddTransformer(args.p, args.d_model, lr=args.lr, weight_decay=args.weight_decay)
    train = DataLoader(FullBatch(x_tr, y_tr, args.every), batch_size=None, shuffle=False)
    test = DataLoader(FullBatch(x_te, y_te, 1), batch_size=None)
    monitor = make_monitor(args, (x_tr, y_tr))
    logger = make_logger(args.logger, args.save_dir, "grokking", online=args.online)
    memory = MemoryLogger()
    trainer = pl.Trainer(max_steps=args.max_steps, max_epochs=-1, accelerator="cpu",
                         logger=[logger, memory], callbacks=[monitor],
                         log_every_n_steps=max(1, args.every // 5), enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, default_root_dir=args.save_dir)
    t0 = time.perf_counter()
    trainer.fit(model, train, test)
    seconds = time.perf_counter() - t0

    series = {k: list(v) for k, v in memory.series.items()}
    message = where_it_landed(logger)
    if args.logger == "wandb":
        logger.experiment.finish()
    W = model.embed.weight.detach()[: args.p].cpu()
    summary = summarize(series, W, seconds)
    figure(series, W, args.lr, args.out)
    print(summary["text"])
    print(message)
    print(f"figure: {args.out}")
    return {"series": series, "summary": summary, "out": args.out, "message": message,
            "errors": dict(monitor.errors), "embedding": W}


def first_step(series: list[tuple[int, float]], threshold: float) -> int | None:
    """The first logged step whose value is at least ``threshold``, else None."""
    return next((s for s, v in series if v >= threshold), None)


def summarize(series: dict[str, list[tuple[int, float]]], W: torch.Tensor,
              seconds: float) -> dict[str, Any]:
    """Memorisation step (train acc >= 0.99), grokking step (test acc >= 0.95), and the
    geometry before memorisation, at memorisation, and at the end."""
    mem = first_step(series.get("train/acc", []), 0.99)
    grok = first_step(series.get("test/acc", []), 0.95)
    k, _, share = fourier_circle(W)
    lines = [f"trained {series['train/acc'][-1][0] if series.get('train/acc') else 0} steps "
             f"in {seconds:.0f} s; final train acc "
             f"{series.get('train/acc', [(0, float('nan'))])[-1][1]:.3f}, test acc "
             f"{series.get('test/acc', [(0, float('nan'))])[-1][1]:.3f}",
             f"memorised (train acc >= 0.99) at step {mem}; "
             + (f"grokked (test acc >= 0.95) at step {grok}" if grok is not None
                else "did NOT grok (test acc never reached 0.95)")]
    for name, key in (("ID of W_E", "geometry/id/embed"),
                      ("H1 max persistence", "geometry/ph/embed/h1_max_persistence"),
                      ("H1 bars", "geometry/ph/embed/h1_n_bars"),
                      ("sharpness", "geometry/sharpness"), ("eos_ratio", "geometry/eos_ratio")):
        s = series.get(key, [])
        if not s:
            continue
        picks = [("first", s[0])]
        for label, step in (("memorised", mem), ("grokked", grok)):
            if step is not None:
                picks.append((label, min(s, key=lambda sv: abs(sv[0] - step))))
        picks.append(("last", s[-1]))
        lines.append(f"{name:>19}: " + ", ".join(f"{lab} {v:.3g} (step {st})"
                                                  for lab, (st, v) in picks))
    lines.append(f"final W_E: strongest Fourier frequency k={k} holds {100 * share:.0f}% of the "
                 "embedding energy")
    return {"memorised": mem, "grokked": grok, "seconds": seconds, "frequency": k,
            "frequency_share": share, "text": "\n".join(lines)}


def figure(series: dict[str, list[tuple[int, float]]], W: torch.Tensor, lr: float,
           out: str) -> None:
    """Accuracies, ID, H1, sharpness over steps (log-x); final diagram; Fourier-plane view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    from geomonitor.topology import persistence_diagrams

    def plot(ax: Any, key: str, *a: Any, **kw: Any) -> None:
        s = series.get(key, [])
        if s:
            ax.plot([max(x, 1) for x, _ in s], [y for _, y in s], *a, **kw)

    mem = first_step(series.get("train/acc", []), 0.99)
    grok = first_step(series.get("test/acc", []), 0.95)
    fig, ax = plt.subplots(2, 3, figsize=(16, 9))
    panels = [ax[0, 0], ax[0, 1], ax[0, 2], ax[1, 0]]
    plot(ax[0, 0], "train/acc", label="train")
    plot(ax[0, 0], "test/acc", "o-", ms=2, label="test")
    ax[0, 0].set(title="accuracy", ylabel="accuracy")
    plot(ax[0, 1], "geometry/id/embed", "o-", ms=2, color="C2")
    ax[0, 1].set(title="intrinsic dimension (TwoNN) of the token embeddings W_E")
    plot(ax[0, 2], "geometry/ph/embed/h1_max_persistence", "o-", ms=2, color="C3")
    ax[0, 2].set(title="H1 of W_E rows: max persistence (red), number of bars (grey)")
    ax[0, 2].set_ylabel("H1 max persistence", color="C3")
    twin = ax[0, 2].twinx()
    plot(twin, "geometry/ph/embed/h1_n_bars", ".-", ms=2, color="grey")
    twin.set_ylabel("H1 bars", color="grey")
    plot(ax[1, 0], "geometry/eos_ratio", "o-", ms=3, color="C4", label="eos_ratio")
    ax[1, 0].axhline(1.0, color="k", ls="--", lw=1, label="stability threshold")
    ax[1, 0].set(title="Adam-preconditioned sharpness / threshold (eos_ratio)")
    ax[1, 0].legend(fontsize=8)
    last = max((st for v in series.values() for st, _ in v), default=10)
    for a_ in panels:
        a_.set(xscale="log", xlabel="step", xlim=(5, 1.2 * last))
        a_.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for step, style in ((mem, ":"), (grok, "--")):
            if step is not None:
                a_.axvline(step, color="k", ls=style, lw=0.8)
    ax[0, 0].legend(title=f"memorised {mem} (:), grokked {grok} (--)", fontsize=8)

    dgms = persistence_diagrams(W, maxdim=1)
    top = 0.0
    for dim, d in enumerate(getattr(dgms, "diagrams", dgms)):
        d = np.asarray(d, dtype=float).reshape(-1, 2)
        d = d[np.isfinite(d[:, 1])]
        top = max(top, float(d.max()) if d.size else 0.0)
        ax[1, 1].scatter(d[:, 0], d[:, 1], s=12, label=f"H{dim} ({len(d)} finite bars)")
    ax[1, 1].plot([0, top], [0, top], "k:", lw=1)
    ax[1, 1].set(title="final persistence diagram of W_E rows", xlabel="birth", ylabel="death")
    ax[1, 1].legend(fontsize=8)

    k, xy, share = fourier_circle(W)
    sc = ax[1, 2].scatter(xy[:, 0], xy[:, 1], c=(np.arange(len(W)) * k) % len(W), cmap="hsv", s=18)
    fig.colorbar(sc, ax=ax[1, 2], label=f"{k}·a mod p")
    ax[1, 2].set(title=f"final W_E on its frequency-{k} Fourier plane ({100 * share:.0f}% of energy)",
                 aspect="equal")
    save_figure(fig, out)


if __name__ == "__main__":
    main()
