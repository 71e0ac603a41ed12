"""The README's "Use it from" examples, executed as written on small real data.

Each ```python block of that section is run with ``exec`` in a namespace that supplies what
the text leaves to the reader (a model, a loader, probe tensors, an optimizer); W&B runs
offline. A README edit that breaks an example fails here.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> dict[str, str]:
    text = README.read_text()
    section = text.split("### Use it from", 1)[1].split("\n### ", 1)[0]
    out = {}
    for chunk in re.split(r"\n(?=\*\*)", section)[1:]:  # one paragraph per entry point
        title = chunk[2:chunk.index("**", 2)]
        code = re.search(r"```python\n(.*?)```", chunk, flags=re.S)
        if code:
            out[title.strip()] = code.group(1)
    return out


def _digits(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return (torch.tensor(d.data[:n] / 16.0, dtype=torch.float32), torch.tensor(d.target[:n]))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_the_section_has_every_entry_point():
    assert {"PyTorch Lightning", "Plain PyTorch", "Lightning Fabric",
            "Hugging Face `Trainer`"} <= set(_examples())


def test_plain_pytorch_example(wandb_dir):
    torch.manual_seed(0)
    X, y = _digits()
    model = _mlp()
    ns = {"model": model, "X_probe": X[:128], "y_probe": y[:128],
          "loader": DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True),
          "opt": torch.optim.SGD(model.parameters(), lr=0.05)}
    exec(_examples()["Plain PyTorch"], ns)  # noqa: S102 - the README's own text
    import wandb

    wandb.finish()
    latest = ns["monitor"].latest
    assert {"geometry/sharpness", "geometry/eos_ratio", "geometry/id/0", "geometry/id/2"} <= set(latest)


def test_fabric_example():
    import lightning as L

    torch.manual_seed(0)
    X, y = _digits()
    model = _mlp()
    ns = {"L": L, "F": F, "model": model, "X_probe": X[:128], "y_probe": y[:128],
          "loader": DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True),
          "opt": torch.optim.SGD(model.parameters(), lr=0.05)}
    from geomonitor.monitor import Monitor

    ns["Monitor"] = Monitor
    exec(_examples()["Lightning Fabric"], ns)  # noqa: S102
    assert {"geometry/sharpness", "geometry/id/0"} <= set(ns["monitor"].latest)


def test_lightning_example(wandb_dir):
    import lightning as L

    class Digits(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    X, y = _digits(256)
    ns = {"model": Digits(), "train_loader": DataLoader(TensorDataset(X, y), batch_size=16)}
    code = _examples()["PyTorch Lightning"].replace(
        "L.Trainer(", "L.Trainer(enable_progress_bar=False, enable_model_summary=False, ")
    exec(code, ns)  # noqa: S102
    import wandb

    wandb.finish()
    metrics = ns["trainer"].callback_metrics
    assert {"geometry/neural_persistence/mean", "geometry/ph/net.0/h1_n_bars"} <= set(metrics)


def test_hugging_face_example(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.chdir(tmp_path)  # output_dir="out" lands in tmp_path
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                       n_positions=32, bos_token_id=0, eos_token_id=0))
    train_ds = []
    for i in range(40):
        ids = (7 * i + (1 + i % 3) * torch.arange(16)) % 64
        train_ds.append({"input_ids": ids, "labels": ids.clone()})
    code = _examples()["Hugging Face `Trainer`"].replace(
        "TrainingArguments(", "TrainingArguments(max_steps=4, per_device_train_batch_size=8, "
        "use_cpu=True, save_strategy='no', disable_tqdm=True, ").replace(
        "id_every_n_steps=100, sharpness_every_n_steps=50", "id_every_n_steps=2, sharpness_every_n_steps=2"
    ).replace('report_to=["wandb"]', "report_to=[]")  # W&B through the Trainer: test_hf_trainer.py
    ns = {"model": model, "train_ds": train_ds}
    exec(code, ns)  # noqa: S102 - the README's own text
    keys = {k for r in ns["geometry_rows"] for k in r}
    assert {"geometry/sharpness", "geometry/eos_ratio", "geometry/id/transformer.h.0"} <= keys
