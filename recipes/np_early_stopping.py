"""Early stopping on neural persistence vs on validation loss, sklearn digits, several seeds.

    python recipes/np_early_stopping.py               # 5 seeds, W&B offline, a few minutes on 2 cores
    python recipes/np_early_stopping.py --online      # stream to W&B
    python recipes/np_early_stopping.py --sweep --max-epochs 150   # patience sweep, about 2 min

Both runs of a seed start from the same initialisation and see the same batches: an MLP
64-128-64-10 (ReLU, Adam 1e-3, batch 32) on a 60/20/20 train/validation/test split, at most
``--max-epochs`` epochs. One stops with :class:`NeuralPersistenceEarlyStopping` (Rieck et al.
2019, Algorithm 2: no validation data), the other with Lightning's ``EarlyStopping`` on
``val_loss``; both with patience 3 and min_delta 0. Printed: a markdown table of the epochs
trained, the epochs saved (``max_epochs`` - trained) and the test accuracy at the stop; saved:
``<out>/np_early_stopping.png`` and ``<out>/np_early_stopping.md``.

``--sweep``: the same MLP, initialisation and split trained once per seed for ``--max-epochs``
epochs in a plain loop (Adam 1e-3, batch 32, a seeded shuffle), recording per epoch the mean
normalised neural persistence, the validation loss and the test accuracy; then both criteria
are applied to the recorded sequences for each patience in ``--patience`` (a criterion only
reads the past, so this equals stopping the run there) -- the neural-persistence one with
:class:`~geomonitor.monitor.early_stopping.NeuralPersistenceStopping`. Printed: a markdown table
per patience (mean epochs trained, runs stopped before the end, test accuracy at the stop) and
the epoch of each run's largest neural persistence; saved: ``<out>/np_early_stopping_sweep.md``.
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from geomonitor.callbacks.early_stopping import NeuralPersistenceEarlyStopping
from geomonitor.monitor.early_stopping import NP_KEY, NeuralPersistenceStopping
from geomonitor.monitor.families.neural_persistence import neural_persistence_metrics


class MLP(pl.LightningModule):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def splits(seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x / 16.0, dtype=torch.float32)
    y = torch.as_tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    idx = perm[:a], perm[a:b], perm[b:]
    return tuple(TensorDataset(x[i], y[i]) for i in idx)  # type: ignore[return-value]


def fit_one(method: str, seed: int, max_epochs: int, logger: Any) -> dict[str, float]:
    train, val, test = splits(seed)
    init = MLP()
    with torch.no_grad():  # the same initialisation for both methods of a seed
        gen = torch.Generator().manual_seed(1000 + seed)
        for p in init.parameters():
            bound = 1.0 / p.shape[-1] ** 0.5
            p.uniform_(-bound, bound, generator=gen)
    model = init
    stopper = (NeuralPersistenceEarlyStopping(patience=3, min_delta=0.0) if method == "neural persistence"
               else EarlyStopping(monitor="val_loss", mode="min", patience=3, min_delta=0.0))
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[stopper], logger=logger, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, log_every_n_steps=10)
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val, batch_size=512)
    if method == "neural persistence":
        trainer.fit(model, loader)  # no validation data needed
    else:
        trainer.fit(model, loader, val_loader)
    with torch.no_grad():
        x, y = test.tensors
        acc = float((model(x).argmax(1) == y).float().mean())
    epochs = trainer.current_epoch
    if logger:
        for lg in trainer.loggers:
            lg.log_metrics({"test_acc": acc, "epochs_trained": epochs}, step=trainer.global_step)
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    return {"method": method, "seed": seed, "epochs": epochs, "saved": max_epochs - epochs, "test_acc": acc}


def table(rows: list[dict[str, float]], max_epochs: int) -> str:
    lines = [f"| seed | method | epochs trained (of {max_epochs}) | epochs saved | test accuracy |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['method']} | {r['epochs']} | {r['saved']} | {r['test_acc']:.4f} |" for r in rows]
    for m in ("neural persistence", "validation loss"):
        sel = [r for r in rows if r["method"] == m]
        if sel:
            acc = [r["test_acc"] for r in sel]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            lines.append(f"| mean | {m} | {statistics.mean(r['epochs'] for r in sel):.1f} | "
                         f"{statistics.mean(r['saved'] for r in sel):.1f} | {statistics.mean(acc):.4f} ± {sd:.4f} |")
    return "\n".join(lines)


def figure(rows: list[dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m, marker in (("neural persistence", "o"), ("validation loss", "s")):
        sel = [r for r in rows if r["method"] == m]
        ax.scatter([r["epochs"] for r in sel], [r["test_acc"] for r in sel], marker=marker, label=m)
    ax.set_xlabel("epochs trained before the stop")
    ax.set_ylabel("test accuracy at the stop")
    ax.set_title("Early stopping on digits: neural persistence vs validation loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def record(seed: int, epochs: int) -> dict[str, list[float]]:
    """Per epoch: neural persistence, validation loss and test accuracy of one plain-loop run."""
    train, val, test = splits(seed)
    model = MLP()
    with torch.no_grad():  # the initialisation of fit_one
        gen = torch.Generator().manual_seed(1000 + seed)
        for p in model.parameters():
            bound = 1.0 / p.shape[-1] ** 0.5
            p.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=model.lr)
    order = torch.Generator().manual_seed(seed)
    x, y = train.tensors
    out: dict[str, list[float]] = {"np": [], "val_loss": [], "test_acc": []}
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out["np"].append(neural_persistence_metrics(model, per_layer=False)[NP_KEY])
            out["val_loss"].append(float(nn.functional.cross_entropy(model(val.tensors[0]), val.tensors[1])))
            out["test_acc"].append(float((model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean()))
    return out


def stop_epochs(values: list[float], patience: int, mode: str) -> int:
    """Epochs trained when stopping on ``values`` with ``patience`` (``len(values)``: no stop)."""
    if mode == "max":
        rule = NeuralPersistenceStopping(patience=patience)
        hit = next((e for e, v in enumerate(values) if rule.update(e, v) is not None), None)
        return len(values) if hit is None else hit + 1
    best, wait = float("inf"), 0  # Lightning's EarlyStopping(mode="min", min_delta=0)
    for e, v in enumerate(values):
        best, wait = (v, 0) if v < best else (best, wait + 1)
        if wait >= patience:
            return e + 1
    return len(values)


def sweep(seeds: int, epochs: int, patiences: list[int]) -> str:
    runs = [record(seed, epochs) for seed in range(seeds)]
    lines = [f"| patience | NP: epochs trained (of {epochs}) | NP: stopped before the end | NP: test accuracy "
             "| val loss: epochs trained | val loss: test accuracy |", "|---|---|---|---|---|---|"]
    for pat in patiences:
        cells = []
        for key, mode in (("np", "max"), ("val_loss", "min")):
            ks = [stop_epochs(r[key], pat, mode) for r in runs]
            acc = [r["test_acc"][k - 1] for r, k in zip(runs, ks)]
            cells.append((statistics.mean(ks), sum(k < epochs for k in ks), statistics.mean(acc)))
        (ne, nstop, nacc), (ve, _, vacc) = cells
        lines.append(f"| {pat} | {ne:.1f} | {nstop}/{seeds} | {nacc:.4f} | {ve:.1f} | {vacc:.4f} |")
    peaks = [max(range(epochs), key=lambda e, r=r: r["np"][e]) + 1 for r in runs]
    lines.append("")
    lines.append(f"epoch of the largest neural persistence, per seed: {peaks}; first -> last value: "
                 + ", ".join(f"{r['np'][0]:.3f} -> {r['np'][-1]:.3f}" for r in runs))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--out", default=os.path.join("recipes", "out"), help="output folder")
    ap.add_argument("--online", action="store_true", help="stream to W&B instead of offline")
    ap.add_argument("--no-wandb", action="store_true", help="no logger at all")
    ap.add_argument("--sweep", action="store_true", help="plain-loop patience sweep (see the docstring)")
    ap.add_argument("--patience", type=int, nargs="+", default=[1, 2, 3, 5], help="patiences of --sweep")
    args = ap.parse_args(argv)
    if args.sweep:
        torch.set_num_threads(2)
        os.makedirs(args.out, exist_ok=True)
        md = sweep(args.seeds, args.max_epochs, args.patience)
        print(md)
        with open(os.path.join(args.out, "np_early_stopping_sweep.md"), "w") as f:
            f.write(md + "\n")
        return []
    if args.online:
        os.environ["WANDB_MODE"] = "online"
    else:
        os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for seed in range(args.seeds):
        for method in ("neural persistence", "validation loss"):
            logger: Any = False
            if not args.no_wandb:
                from pytorch_lightning.loggers import WandbLogger

                logger = WandbLogger(project="geomonitor-np-early-stopping", save_dir=args.out,
                                     name=f"{method.replace(' ', '-')}-seed{seed}",
                                     offline=os.environ.get("WANDB_MODE") == "offline")
            rows.append(fit_one(method, seed, args.max_epochs, logger))
    md = table(rows, args.max_epochs)
    print(md)
    with open(os.path.join(args.out, "np_early_stopping.md"), "w") as f:
        f.write(md + "\n")
    png = os.path.join(args.out, "np_early_stopping.png")
    figure(rows, png)
    print(f"\nfigure: {png}")
    return rows


if __name__ == "__main__":
    main()
