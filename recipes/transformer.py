"""A character-level transformer language model, seen block by block by the geometry monitor.

    python recipes/transformer.py                  # W&B offline, 2-3 minutes on a CPU core
    python recipes/transformer.py --online         # stream to W&B
    python recipes/transformer.py --logger csv     # or tensorboard

The text is the source code of the standard library's ``argparse`` module
(``inspect.getsource``: about 100,000 characters that ship with every Python), split 90/10
into training and held-out text. The model is a small GPT-style decoder built from
``nn.TransformerEncoder`` with a causal mask (pre-LayerNorm blocks, no dropout), trained with
AdamW on random windows.

The monitor is :class:`~geomonitor.callbacks.GeometryMonitor` with ``layers="auto"``: the
outputs of the repeated blocks ``blocks.layers.0 ... blocks.layers.{L-1}`` and the head
(:class:`geomonitor.monitor.LayerSelector`), each block output [B, T, D] averaged over tokens
(``reduce="mean"``, what ``"auto"`` does for token outputs). On a fixed probe set of held-out
windows it logs

* ``geometry/id/<block>``: TwoNN intrinsic dimension of each block's representation — the
  ID profile across depth (Valeriani et al., 2023, "The geometry of hidden representations of
  large transformer models", NeurIPS, follow it through the blocks of large trained
  transformers);
* ``geometry/sharpness`` and ``geometry/eos_ratio``: the top eigenvalue of the
  Adam-preconditioned Hessian of the training loss and its ratio to Adam's stability
  threshold (Cohen et al., 2022, "Adaptive Gradient Methods at the Edge of Stability");
* persistence summaries of the block representations and neural persistence of the weights,
  once per epoch.

The figure (``--out``, default ``recipes/out/transformer.png``) shows the losses, the ID of each
block over training, the ID profile across blocks at a few moments, and the preconditioned
sharpness against the threshold. Defaults: 4 blocks, d_model 64, 4 heads, context 32, batch 32,
AdamW lr 3e-3, 300 steps (an "epoch" is 100 steps), 512 probe windows; ID every 25 steps,
sharpness every 50. Measured with the defaults (``--seed 0 --logger csv``, one torch thread,
2-core CPU shared with other jobs: 102 s of training, 2 min 19 s wall in all)::

    train loss 3.15 (step 4) -> 1.39 (step 299); held-out loss 1.85 (step 99) -> 1.36 (step 299)
    ID profile (step 25): blocks.layers.0 7.4, blocks.layers.1 7.3, blocks.layers.2 7.5, blocks.layers.3 7.6, head 7.7
    ID profile (step 300): blocks.layers.0 8.3, blocks.layers.1 7.6, blocks.layers.2 7.7, blocks.layers.3 7.5, head 7.9
    preconditioned sharpness 2.17e+03 (step 50) -> 3.36e+03 (step 300)
    eos_ratio 0.171 (step 50) -> 0.266 (step 300)

What this shows, honestly: at this size and length the ID profile is nearly flat (7.2-9.1
over all blocks and times, moving by about 0.5 between neighbouring measurements). By the end the first block is the
highest-dimensional (8.3) and the later blocks sit lower (7.5-7.9), but there is no clear
structure across depth, as reported for much larger, longer-trained models.
The preconditioned sharpness rises during the first 200 steps (2.2e3 -> 4.0e3) and then
falls back a little; ``eos_ratio`` stays at 0.17-0.32, so AdamW at lr 3e-3 keeps well below its
stability threshold here.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MemoryLogger, add_common_args, make_logger, save_figure, where_it_landed  # noqa: E402


def corpus() -> str:
    """The source of the standard library's ``argparse`` module (same text for a given Python)."""
    import argparse as text_source

    return inspect.getsource(text_source)


class Vocabulary:
    """Characters of a text <-> ids (sorted, so the mapping depends on the text only)."""

    def __init__(self, text: str) -> None:
        if not text:
            raise ValueError("text must be a non-empty string")
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class RandomWindows(Dataset):
    """``n`` windows of ``context + 1`` characters at seeded random starts: (input, next chars)."""

    def __init__(self, ids: torch.Tensor, context: int, n: int, seed: int) -> None:
        if len(ids) <= context + 1:
            raise ValueError(f"text of {len(ids)} characters is too short for context {context}")
        g = torch.Generator().manual_seed(seed)
        self.starts = torch.randint(0, len(ids) - context - 1, (n,), generator=g)
        self.ids, self.context = ids, context

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        w = self.ids[s: s + self.context + 1]
        return w[:-1], w[1:]


def evenly_spaced_windows(ids: torch.Tensor, context: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows at evenly spaced starts (the probe set): inputs (n, T), targets (n, T)."""
    starts = torch.linspace(0, len(ids) - context - 1, n).long()
    w = torch.stack([ids[s: s + context + 1] for s in starts.tolist()])
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


class CharTransformer(pl.LightningModule):
    """Decoder-only transformer: token + learned position embeddings, ``n_layers`` pre-LN
    ``nn.TransformerEncoderLayer`` blocks under a causal mask, final LayerNorm, linear head.
    Modules: ``embed``, ``blocks`` (``blocks.layers.N``), ``norm``, ``head``."""

    def __init__(self, vocab: int, d_model: int = 64, n_layers: int = 4, n_heads: int = 4,
                 context: int = 32, lr: float = 3e-3, weight_decay: float = 0.01) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.lr, self.weight_decay, self.context = lr, weight_decay, context
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(context, d_model) * 0.02)
        block = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        h = self.embed(idx) + self.pos[:T]
        h = self.blocks(h, mask=self.causal[:T, :T], is_causal=True)
        return self.head(self.norm(h))

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def make_monitor(args: argparse.Namespace, probe: tuple[torch.Tensor, torch.Tensor]) -> pl.Callback:
    """``GeometryMonitor`` on the blocks and the head (``layers="auto"``) over held-out windows;
    a fixed schedule (``max_overhead=None``) so a short run has full curves."""
    from geomonitor.callbacks import GeometryMonitor

    return GeometryMonitor(
        layers="auto", reduce="mean", probe_data=probe, probe_size=len(probe[0]),
        probe_seed=args.seed, id_every_n_steps=args.every,
        sharpness_every_n_steps=args.sharpness_every, sharpness_max_hvp=20,
        sharpness_probe_size=64, sharpness_tol=1e-3, topology_every_n_steps=None,
        topology_every_n_epochs=1, np_every_n_steps=None, np_every_n_epochs=1,
        symmetry_every_n_steps=500, prog_bar=None, max_overhead=None)


def layer_order(model: nn.Module, series: dict[str, Any]) -> list[str]:
    """The layers with a ``geometry/id/<layer>`` series, in the model's module order."""
    logged = {k[len("geometry/id/"):] for k in series if k.startswith("geometry/id/")}
    return [n for n, _ in model.named_modules() if n in logged]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, out=os.path.join("recipes", "out", "transformer.png"))
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--epoch-steps", type=int, default=100,
                        help="steps per epoch (validation, persistence, neural persistence)")
    parser.add_argument("--every", type=int, default=25, help="steps between ID measurements")
    parser.add_argument("--sharpness-every", type=int, default=50)
    parser.add_argument("--probe-size", type=int, default=512, help="held-out probe windows")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: reproducible, and on a busy CPU several threads "
                             "spend their time waiting for each other)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    pl.seed_everything(args.seed, verbose=False)

    text = corpus()
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    cut = int(0.9 * len(ids))
    train_ids, held_ids = ids[:cut], ids[cut:]
    train = DataLoader(RandomWindows(train_ids, args.context, args.epoch_steps * args.batch_size,
                                     args.seed), batch_size=args.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(args.seed))
    val = DataLoader(RandomWindows(held_ids, args.context, 256, args.seed + 1), batch_size=128)
    probe = evenly_spaced_windows(held_ids, args.context, args.probe_size)
    model = CharTransformer(len(vocab), args.d_model, args.layers, args.heads, args.context, args.lr)

    monitor = make_monitor(args, probe)
    logger = make_logger(args.logger, args.save_dir, "transformer", online=args.online)
    memory = MemoryLogger()
    trainer = pl.Trainer(max_steps=args.max_steps, max_epochs=-1, accelerator="cpu",
                         logger=[logger, memory], callbacks=[monitor], log_every_n_steps=5,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, num_sanity_val_steps=0,
                         default_root_dir=args.save_dir)
    t0 = time.perf_counter()
    trainer.fit(model, train, val)
    seconds = time.perf_counter() - t0

    series = {k: list(v) for k, v in memory.series.items()}
    message = where_it_landed(logger)
    if args.logger == "wandb":
        logger.experiment.finish()
    layers = layer_order(model, series)
    summary = summarize(series, layers, seconds, len(text), len(vocab))
    figure(series, layers, args.out)
    print(summary)
    print(message)
    print(f"figure: {args.out}")
    return {"series": series, "layers": layers, "summary": summary, "out": args.out,
            "message": message, "errors": dict(monitor.errors), "model": model, "probe": probe}


def summarize(series: dict[str, list[tuple[int, float]]], layers: list[str], seconds: float,
              n_chars: int, n_vocab: int) -> str:
    """Losses, the ID profile at the first and last measurement, the sharpness ratio."""
    def first_last(key: str) -> str:
        s = series.get(key, [])
        return f"{s[0][1]:.3g} (step {s[0][0]}) -> {s[-1][1]:.3g} (step {s[-1][0]})" if s else "-"

    lines = [f"{n_chars} characters, {n_vocab} symbols; trained in {seconds:.0f} s",
             f"train loss {first_last('train/loss')}; held-out loss {first_last('val/loss')}"]
    for which in (0, -1) if layers else ():
        prof = [series[f"geometry/id/{n}"][which] for n in layers]
        lines.append(f"ID profile (step {prof[0][0]}): "
                     + ", ".join(f"{n} {v:.1f}" for n, (_, v) in zip(layers, prof)))
    lines.append(f"preconditioned sharpness {first_last('geometry/sharpness')}")
    lines.append(f"eos_ratio {first_last('geometry/eos_ratio')}")
    return "\n".join(lines)


def figure(series: dict[str, list[tuple[int, float]]], layers: list[str], out: str) -> None:
    """Losses; ID per block over steps; ID profile across blocks; sharpness / threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def xy(key: str) -> tuple[list[int], list[float]]:
        s = series.get(key, [])
        return [a for a, _ in s], [b for _, b in s]

    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    ax[0, 0].plot(*xy("train/loss"), lw=1, label="train")
    ax[0, 0].plot(*xy("val/loss"), "o-", ms=4, label="held out")
    ax[0, 0].set(title="cross-entropy (nats / character)", xlabel="step")
    ax[0, 0].legend()
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(layers):
        ax[0, 1].plot(*xy(f"geometry/id/{n}"), "o-", ms=3, color=cmap(0.85 * i / max(1, len(layers) - 1)),
                      label=n)
    ax[0, 1].set(title="intrinsic dimension (TwoNN) of each block, over training", xlabel="step")
    ax[0, 1].legend(fontsize=8)
    steps = [s for s, _ in series.get(f"geometry/id/{layers[0]}", [])] if layers else []
    picks = sorted({steps[round(i * (len(steps) - 1) / 3)] for i in range(4)}) if steps else []
    for j, st in enumerate(picks):
        prof = [dict(series[f"geometry/id/{n}"]).get(st, float("nan")) for n in layers]
        ax[1, 0].plot(range(len(layers)), prof, "o-", color=plt.get_cmap("plasma")(0.85 * j / max(1, len(picks) - 1)),
                      label=f"step {st}")
    ax[1, 0].set_xticks(range(len(layers)), [n.replace("blocks.layers.", "block ") for n in layers],
                        rotation=20)
    ax[1, 0].set(title="ID profile across depth (held-out windows, mean over tokens)",
                 ylabel="TwoNN ID")
    ax[1, 0].legend(fontsize=8)
    ax[1, 1].plot(*xy("geometry/eos_ratio"), "o-", ms=3, color="C4", label="eos_ratio")
    ax[1, 1].axhline(1.0, color="k", ls="--", lw=1, label="Adam stability threshold")
    ax[1, 1].set(title="Adam-preconditioned sharpness / threshold", xlabel="step")
    twin = ax[1, 1].twinx()
    twin.plot(*xy("geometry/sharpness"), ".:", color="grey", label="sharpness")
    twin.set_ylabel("preconditioned sharpness", color="grey")
    ax[1, 1].legend(fontsize=8, loc="upper right")
    save_figure(fig, out)


if __name__ == "__main__":
    main()
