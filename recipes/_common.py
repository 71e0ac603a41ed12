"""Shared helpers for the recipes: digits data, logger choice (W&B offline by default), an
in-memory logger for the figures, and the "where did my run land" message."""
from __future__ import annotations

import argparse
import os
from collections import defaultdict
from typing import Any

import torch
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, TensorDataset

LOGGERS = ("wandb", "csv", "tensorboard")


def add_common_args(parser: argparse.ArgumentParser, *, out: str) -> argparse.ArgumentParser:
    parser.add_argument("--logger", choices=LOGGERS, default="wandb",
                        help="where the metrics go (default: W&B, offline unless --online)")
    parser.add_argument("--online", action="store_true", help="stream to W&B instead of offline")
    parser.add_argument("--save-dir", default=os.path.join("recipes", "out"),
                        help="logger output directory")
    parser.add_argument("--out", default=out, help="path of the PNG figure")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def wandb_mode(online: bool) -> None:
    """Offline by default (``WANDB_MODE`` respected when set); ``--online`` forces online."""
    if online:
        os.environ["WANDB_MODE"] = "online"
    else:
        os.environ.setdefault("WANDB_MODE", "offline")


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """sklearn's 8x8 digits (1797 images, 64 features in [0, 1], 10 classes): 80/20 split."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.as_tensor(X / 16.0, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(X))
    tr, va = perm[:n_train], perm[n_train:]
    train = DataLoader(TensorDataset(X[tr], y[tr]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(X[va], y[va]), batch_size=256)
    return train, val


def make_logger(kind: str, save_dir: str, name: str, online: bool = False) -> Logger:
    if kind == "wandb":
        wandb_mode(online)
        return WandbLogger(project="geomonitor", name=name, save_dir=save_dir,
                           offline=os.environ.get("WANDB_MODE") == "offline")
    if kind == "csv":
        return CSVLogger(save_dir, name=name)
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir, name=name)
    raise ValueError(f"logger must be one of {LOGGERS}, got {kind!r}")


class MemoryLogger(Logger):
    """Keeps every logged number in memory: ``series[key] -> [(step, value), ...]``."""

    def __init__(self) -> None:
        super().__init__()
        self.series: dict[str, list[tuple[int, float]]] = defaultdict(list)

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.series[k].append((int(step or 0), float(v)))


def where_it_landed(logger: Logger) -> str:
    """A human sentence: where the run is on disk and, for W&B offline, how to upload it."""
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        run_dir = os.path.dirname(run.dir)
        if run.settings.mode in ("offline", "dryrun"):
            return (f"W&B run saved offline in {run_dir}\n"
                    f"upload it with:  wandb sync {run_dir}")
        return f"W&B run streamed online: {getattr(run, 'url', run_dir)}"
    return f"{type(logger).__name__} output in {logger.log_dir}"


def save_figure(fig: Any, out: str, dpi: int = 110) -> None:
    """Lay out ``fig``, write it to ``out`` (folders created) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
