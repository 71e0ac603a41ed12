"""Quick start: a small MLP on sklearn's digits with the geometry monitor, W&B offline.

    python recipes/quickstart.py                   # W&B offline, ~1 minute on 2 CPU cores
    python recipes/quickstart.py --online          # stream to W&B
    python recipes/quickstart.py --logger csv      # or tensorboard

At the end it prints where the run landed (and the ``wandb sync`` line for an offline run)
and saves a figure (``--out``, default ``recipes/out/quickstart.png``): the training loss,
sharpness against the gradient-descent stability threshold 2/η, the intrinsic dimension of
each layer over time, and a persistence diagram of the last hidden layer. It also writes the
run's report (``--report``, default ``recipes/out/quickstart.html``), the page that
``geomonitor report RUN`` makes from the run on disk; open it in a browser.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MemoryLogger, add_common_args, save_figure, digits_loaders, make_logger, where_it_landed  # noqa: E402

from geomonitor.callbacks import GeometryMonitor  # noqa: E402
from geomonitor.report import write_report  # noqa: E402

LAYERS = ["fc1", "fc2", "fc3"]


class DigitsMLP(pl.LightningModule):
    """64 → 128 → 64 → 10 ReLU MLP trained with plain SGD (so 2/η is the stability line)."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_monitor(max_steps: int | None = None) -> GeometryMonitor:
    """The quickstart's monitor: denser than the defaults, and on a fixed schedule
    (``max_overhead=None``), so a short run has full curves to look at."""
    return GeometryMonitor(layers=LAYERS, probe_size=256, sharpness_every_n_steps=10,
                           id_every_n_steps=20, topology_every_n_steps=None,
                           topology_every_n_epochs=2, np_every_n_steps=None, np_every_n_epochs=1,
                           symmetry_every_n_steps=500, sharpness_probe_size=64,
                           # forward() calls torch.relu, which sharpness_hvp="auto" cannot
                           # see: the exact products, not differences across the kinks
                           sharpness_tol=1e-3, sharpness_hvp="exact",
                           prog_bar=["eos_ratio", "sharpness"],
                           max_overhead=None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, out=os.path.join("recipes", "out", "quickstart.png"))
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--report", default=os.path.join("recipes", "out", "quickstart.html"),
                        help="the HTML report of the run to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pl.seed_everything(args.seed, verbose=False)

    train, val = digits_loaders(seed=args.seed)
    model = DigitsMLP(lr=args.lr)
    logger = make_logger(args.logger, args.save_dir, "quickstart", online=args.online)
    memory = MemoryLogger()
    monitor = make_monitor()
    trainer = pl.Trainer(max_epochs=args.max_epochs, max_steps=args.max_steps, accelerator="cpu",
                         logger=[logger, memory], callbacks=[monitor], log_every_n_steps=5,
                         enable_checkpointing=False, enable_model_summary=False,
                         default_root_dir=args.save_dir)
    trainer.fit(model, train, val)

    message = where_it_landed(logger)
    if args.logger == "wandb":
        logger.experiment.finish()
    figure(memory.series, model, monitor, args.lr, args.out)
    report = write_report(run_on_disk(logger), args.report)
    print(message)
    print(f"figure: {args.out}")
    print(f"report: {report}  (or: geomonitor report RUN -o report.html)")
    return {"series": dict(memory.series), "out": args.out, "message": message,
            "errors": dict(monitor.errors), "report": report}


def run_on_disk(logger: Any, timeout: float = 30.0) -> str:
    """The run's directory (a W&B run once its file is complete, else the logger's log_dir)."""
    from pytorch_lightning.loggers import WandbLogger

    from geomonitor.runs.wandb import find_run_file, finished

    if not isinstance(logger, WandbLogger):
        return logger.log_dir
    run_dir = os.path.dirname(logger.experiment.dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # W&B writes the run file's last records asynchronously
        try:
            if finished(find_run_file(run_dir)):
                break
        except ValueError:
            pass
        time.sleep(0.2)
    return run_dir


def figure(series: dict[str, list[tuple[int, float]]], model: nn.Module,
           monitor: GeometryMonitor, lr: float, out: str) -> None:
    """Loss, sharpness vs 2/η, ID per layer over time, and a persistence diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from geomonitor.topology import persistence_diagrams

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    s = series.get("train/loss", [])
    ax[0, 0].plot([a for a, _ in s], [b for _, b in s], lw=1)
    ax[0, 0].set(title="training loss", xlabel="step", yscale="log")
    s = series.get("geometry/sharpness", [])
    ax[0, 1].plot([a for a, _ in s], [b for _, b in s], "o-", ms=3, label="sharpness λ_max")
    ax[0, 1].axhline(2.0 / lr, color="k", ls="--", label=f"2/η = {2.0 / lr:g}")
    ax[0, 1].set(title="sharpness (edge of stability)", xlabel="step")
    ax[0, 1].legend()
    for layer in LAYERS:
        s = series.get(f"geometry/id/{layer}", [])
        ax[1, 0].plot([a for a, _ in s], [b for _, b in s], "o-", ms=3, label=layer)
    ax[1, 0].set(title="intrinsic dimension (TwoNN) per layer", xlabel="step")
    ax[1, 0].legend()

    # persistence diagram of the last hidden layer on the probe set, final weights
    probe = monitor.probe.batch[0] if monitor.probe is not None else None
    if probe is not None:
        with torch.no_grad():
            acts = torch.relu(model.fc2(torch.relu(model.fc1(probe.to(model.device))))).cpu()
        dgms = persistence_diagrams(acts, maxdim=1, n_landmarks=128,
                                    generator=torch.Generator().manual_seed(0))
        seq = getattr(dgms, "diagrams", dgms)
        top = 0.0
        for dim, d in enumerate(seq):
            d = np.asarray(d, dtype=float).reshape(-1, 2)
            d = d[np.isfinite(d[:, 1])]
            top = max(top, float(d.max()) if d.size else 0.0)
            ax[1, 1].scatter(d[:, 0], d[:, 1], s=10, label=f"H{dim} ({len(d)} bars)")
        ax[1, 1].plot([0, top], [0, top], "k:", lw=1)
        ax[1, 1].legend()
    ax[1, 1].set(title="persistence diagram, fc2 activations (end)", xlabel="birth",
                 ylabel="death")
    save_figure(fig, out)


if __name__ == "__main__":
    main()
