"""Intrinsic-dimension profile of an MLP on sklearn's digits, across layers and over training.

    python recipes/id_profile.py                   # W&B offline, ~15 s on 2 CPU cores
    python recipes/id_profile.py --online          # stream to W&B
    python recipes/id_profile.py --logger csv      # or tensorboard

A 64-256-128-64-32-10 ReLU MLP (Adam, lr 1e-3, batch 64) learns the 8x8 digits. After every
epoch :class:`~geomonitor.callbacks.IntrinsicDimensionMonitor` measures the TwoNN intrinsic
dimension (Facco et al., 2017) of each layer's representation on one fixed probe set of
training images: the input, the output of each hidden block (after its ReLU) and the logits
(``geometry/id/<layer>``; under W&B also the profile across layers as a table and a plot).
The initial profile (before the first step) and the profile on held-out images at the end
are measured directly with :func:`geomonitor.intrinsic.intrinsic_dimension`.

Ansuini et al., 2019 ("Intrinsic dimension of data representations in deep neural networks",
NeurIPS) found, for deep convolutional networks on images, that the ID first rises and then
falls across layers (a "hunchback"), that the last hidden layer's ID is much lower than the
input's, and that across trained networks a lower last-layer ID goes with a lower test error.

What this small setting shows (defaults, ``--seed 0``, 512 probe images; 13 s wall on a
2-core CPU; printed again at the end of a run)::

    TwoNN ID    inp    h1    h2    h3    h4   out
    init       7.34  7.50  7.65  7.38  6.35  5.78
    epoch 1    7.34  7.01  6.05  5.12  4.38  3.63
    epoch 5    7.34  6.54  4.52  4.01  3.93  3.59
    epoch 40   7.34  6.44  4.96  4.64  4.44  4.10   (validation accuracy 0.969)
    held-out   6.73  6.57  5.56  4.80  4.56  4.25   (360 validation images, end of training)

* Reproduced: training compresses the representation with depth; the last hidden layer
  (4.4) and the logits (4.1) end far below the input (7.3) and below their values at
  initialisation (6.4, 5.8), and the compression appears within the first epochs.
* Not reproduced: the hunchback. After training the profile decreases monotonically from the
  input; only the untrained network has a faint rise (7.34 -> 7.65 at h2). Ansuini et al.'s
  hump comes from convolutional networks on natural images whose first layers expand the
  representation; an MLP on 8x8 digits, whose input ID is already low (about 7), has nothing
  comparable to expand.
* Not tested: last-layer ID against generalisation, which Ansuini et al. establish across
  many trained networks. Within this one run, after a drop in the first 8 epochs, the ID of
  h4 drifts back up (3.7 -> 4.4) while validation accuracy still rises slightly; the
  correlation over the 40 epochs is +0.20, which says nothing about their claim either way.
* TwoNN on 512 points has a statistical error of a few tenths here; differences below about
  0.3 are not meaningful.

Saved figure (``--out``, default ``recipes/out/id_profile.png``): ID against depth at several
epochs, ID of each layer over training, and accuracy against the last hidden layer's ID.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from geomonitor.monitor.probe import ProbeSet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MemoryLogger, add_common_args, save_figure, digits_loaders, make_logger, where_it_landed  # noqa: E402

WIDTHS = (64, 256, 128, 64, 32, 10)
LAYERS = ["inp", "h1", "h2", "h3", "h4", "out"]  # depth order; "inp" is the input itself


class DeepMLP(pl.LightningModule):
    """64-256-128-64-32-10 ReLU MLP. ``inp`` (an identity) exposes the input to the layer
    hooks; ``h1``..``h4`` are Linear+ReLU blocks, so their outputs are post-activation
    representations as in Ansuini et al. (2019); ``out`` gives the logits."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.inp = nn.Identity()
        for i in range(1, 5):
            setattr(self, f"h{i}", nn.Sequential(nn.Linear(WIDTHS[i - 1], WIDTHS[i]), nn.ReLU()))
        self.out = nn.Linear(WIDTHS[4], WIDTHS[5])

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer's output on ``x`` (N, 64), in depth order."""
        reps = {"inp": self.inp(x)}
        h = reps["inp"]
        for i in range(1, 5):
            h = reps[f"h{i}"] = getattr(self, f"h{i}")(h)
        reps["out"] = self.out(h)
        return reps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.representations(x)["out"]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def profile(model: DeepMLP, x: torch.Tensor) -> list[float]:
    """TwoNN ID of every layer's representation of ``x``, in ``LAYERS`` order."""
    from geomonitor.intrinsic import intrinsic_dimension

    was_training = model.training
    model.eval()
    with torch.no_grad():
        reps = model.representations(x)
    model.train(was_training)
    return [float(intrinsic_dimension(reps[k], method="twonn")) for k in LAYERS]


def make_monitor(probe_size: int, seed: int) -> pl.Callback:
    """``IntrinsicDimensionMonitor`` on every layer, every epoch, on a fixed probe set drawn
    (seeded, by index) from the training data."""
    from geomonitor.callbacks import IntrinsicDimensionMonitor

    return IntrinsicDimensionMonitor(layers=LAYERS, method="twonn", every_n_steps=None,
                                     every_n_epochs=1, probe_size=probe_size, probe_seed=seed,
                                     max_overhead=None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, out=os.path.join("recipes", "out", "id_profile.png"))
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--probe-size", type=int, default=512,
                        help="training images the ID is measured on (fixed for the whole run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pl.seed_everything(args.seed, verbose=False)

    train, val = digits_loaders(batch_size=64, seed=args.seed)
    model = DeepMLP(lr=args.lr)
    monitor = make_monitor(args.probe_size, args.seed)
    # the monitor's own draw (same loader, size and seed): the initial profile uses its points
    probe_x = ProbeSet.from_dataloader(train, args.probe_size, seed=args.seed).batch[0]
    initial = profile(model, probe_x)

    logger = make_logger(args.logger, args.save_dir, "id_profile", online=args.online)
    memory = MemoryLogger()
    trainer = pl.Trainer(max_epochs=args.max_epochs, max_steps=args.max_steps, accelerator="cpu",
                         logger=[logger, memory], callbacks=[monitor], log_every_n_steps=10,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, default_root_dir=args.save_dir)
    trainer.fit(model, train, val)
    held_out = profile(model, val.dataset.tensors[0])

    series = {k: list(v) for k, v in memory.series.items()}
    message = where_it_landed(logger)
    if args.logger == "wandb":
        logger.experiment.finish()
    summary = summarize(series, initial, held_out, steps_per_epoch=len(train))
    figure(series, initial, steps_per_epoch=len(train), out=args.out)
    print(summary)
    print(message)
    print(f"figure: {args.out}")
    return {"series": series, "initial": initial, "held_out": held_out, "probe": probe_x, "summary": summary,
            "out": args.out, "message": message, "errors": dict(monitor.errors)}


def _profiles(series: dict[str, list[tuple[int, float]]]) -> dict[int, list[float]]:
    """step -> ID of every layer (only steps where all layers were measured)."""
    by_step: dict[int, dict[str, float]] = {}
    for layer in LAYERS:
        for step, v in series.get(f"geometry/id/{layer}", []):
            by_step.setdefault(step, {})[layer] = v
    return {s: [d[k] for k in LAYERS] for s, d in sorted(by_step.items()) if len(d) == len(LAYERS)}


def _at(series: list[tuple[int, float]], step: int) -> float | None:
    """The value logged at ``step`` or one step before it (Lightning logs a validation run
    that follows optimizer step s at step s - 1), the last one if several; else None."""
    vals = [v for s, v in series if step - 1 <= s <= step]
    return vals[-1] if vals else None


def summarize(series: dict[str, list[tuple[int, float]]], initial: list[float],
              held_out: list[float], *, steps_per_epoch: int) -> str:
    """A plain-text account of the measured profile (peak layer, input vs last hidden, and
    the correlation of the last hidden layer's ID with validation accuracy over epochs)."""
    import numpy as np

    profiles = _profiles(series)
    lines = ["ID profile (TwoNN), layers " + " -> ".join(LAYERS)]
    lines.append("  init      : " + "  ".join(f"{v:6.2f}" for v in initial))
    for step, vals in profiles.items():
        if step in list(profiles)[:3] or step == list(profiles)[-1] or step // steps_per_epoch in (5, 10, 20):
            lines.append(f"  epoch {step // steps_per_epoch:3d}: " + "  ".join(f"{v:6.2f}" for v in vals))
    lines.append("  held-out  : " + "  ".join(f"{v:6.2f}" for v in held_out))
    if profiles:
        final = list(profiles.values())[-1]
        peak = int(np.argmax(final))
        hunch = 0 < peak < len(LAYERS) - 1
        lines.append(f"final profile peaks at '{LAYERS[peak]}' ({final[peak]:.2f}); "
                     f"{'rise-then-fall (hunchback)' if hunch else 'no interior peak (no hunchback)'}"
                     f"; input {final[0]:.2f} -> last hidden 'h4' {final[4]:.2f} -> logits {final[5]:.2f}")
        acc = series.get("val/acc", [])
        if acc:
            lines.append(f"final validation accuracy {acc[-1][1]:.3f}")
        pairs = [(profiles[s][4], _at(acc, s)) for s in profiles if _at(acc, s) is not None]
        if len(pairs) >= 3:
            ids, accs = np.array(pairs).T
            if ids.std() > 0 and accs.std() > 0:
                r = float(np.corrcoef(ids, accs)[0, 1])
                lines.append(f"over {len(pairs)} epochs, corr(ID of h4, val accuracy) = {r:+.2f} "
                             "(one network over time, not Ansuini et al.'s comparison across "
                             "trained networks)")
    return "\n".join(lines)


def figure(series: dict[str, list[tuple[int, float]]], initial: list[float], *,
           steps_per_epoch: int, out: str) -> None:
    """ID vs depth at several epochs; ID of each layer over epochs; accuracy vs h4's ID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = _profiles(series)
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    depth = range(len(LAYERS))
    ax[0].plot(depth, initial, "o--", color="grey", label="init")
    steps = list(profiles)
    picks = sorted({steps[i] for i in (0, 1, 3, len(steps) // 4, len(steps) // 2, -1)
                    if -len(steps) <= i < len(steps)}) if steps else []
    cmap = plt.get_cmap("viridis")
    for j, s in enumerate(picks):
        ax[0].plot(depth, profiles[s], "o-", color=cmap(j / max(1, len(picks) - 1)),
                   label=f"epoch {s // steps_per_epoch}")
    ax[0].set_xticks(list(depth), [f"{n}\n({w})" for n, w in zip(LAYERS, WIDTHS)])
    ax[0].set(title="ID across layers (width in brackets)", ylabel="TwoNN intrinsic dimension")
    ax[0].legend(fontsize=8)
    for layer in LAYERS:
        s = series.get(f"geometry/id/{layer}", [])
        ax[1].plot([a / steps_per_epoch for a, _ in s], [b for _, b in s], "o-", ms=2, label=layer)
    ax[1].set(title="ID of each layer over training", xlabel="epoch", ylabel="TwoNN ID")
    ax[1].legend(fontsize=8, ncol=3, loc="center right")
    for key, style in (("train/acc_epoch", "-"), ("train/acc", "-"), ("val/acc", "--")):
        s = series.get(key, [])
        if s:
            ax[2].plot([a / steps_per_epoch for a, _ in s], [b for _, b in s], style,
                       label=key.replace("_epoch", ""))
    ax[2].set(title="accuracy, and the last hidden layer's ID", xlabel="epoch", ylabel="accuracy")
    ax[2].legend(loc="lower left", fontsize=8)
    twin = ax[2].twinx()
    s = series.get("geometry/id/h4", [])
    twin.plot([a / steps_per_epoch for a, _ in s], [b for _, b in s], "o-", ms=2, color="C3")
    twin.set_ylabel("ID of h4", color="C3")
    save_figure(fig, out)


if __name__ == "__main__":
    main()
