"""The models users bring, fitted with ``GeometryMonitor(layers="auto", strict=True)``.

A token transformer (``nn.TransformerEncoder``, dropout on), a Hugging Face GPT-2 built from
a tiny config, and a ResNet-style CNN with BatchNorm and residual blocks, each in a real
Lightning fit with every default family on a short schedule: the layers ``auto`` selects are
the blocks and the head (asserted by name), every family delivers its metrics, no
measurement fails (``strict=True`` re-raises), and the trained weights are bitwise those of
the same fit without the monitor.
"""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.callbacks import GeometryMonitor

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _TokenLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 32)
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 32)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(_Block(8, 8, 1), _Block(8, 8, 1))
        self.layer2 = nn.Sequential(_Block(8, 16, 2), _Block(16, 16, 1))
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _case(name: str):
    g = torch.Generator().manual_seed(0)
    if name == "transformer":
        x = torch.randint(0, 32, (64, 12), generator=g)
        rows = list(zip(x, torch.roll(x, -1, dims=1)))
        return (_TokenLM, rows, lambda m, b: F.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten()),
                ["encoder.layers.0", "encoder.layers.1", "head"])
    if name == "gpt2":
        ids = torch.randint(0, 50, (64, 12), generator=g)
        rows = [{"input_ids": r, "labels": r.clone()} for r in ids]
        return _gpt2, rows, lambda m, b: m(**b).loss, ["transformer.h.0", "transformer.h.1", "lm_head"]
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    return (_ResNet, list(zip(x, y)), lambda m, b: F.cross_entropy(m(b[0]), b[1]),
            ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "fc"])


class _Module(pl.LightningModule):
    def __init__(self, build, loss) -> None:
        super().__init__()
        self.net, self._loss = build(), loss

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def training_step(self, batch, batch_idx):
        return self._loss(self.net, batch)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _fit(name: str, monitor):
    build, rows, loss, _ = _case(name)
    torch.manual_seed(0)
    module = _Module(build, loss)
    trainer = pl.Trainer(max_steps=4, callbacks=[monitor] if monitor else [], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.fit(module, torch.utils.data.DataLoader(rows, batch_size=16, shuffle=True))
    return trainer, module


@pytest.mark.parametrize("name", ["transformer", "gpt2", "resnet"])
def test_auto_layers_every_family_and_no_observer_effect(name, tmp_path):
    expected_layers = [f"net.{layer}" for layer in _case(name)[3]]  # inside the LightningModule
    mon = GeometryMonitor(layers="auto", strict=True, max_overhead=None, probe_size=32,
                          sharpness_probe_size=16, sharpness_max_hvp=5, id_every_n_steps=2,
                          sharpness_every_n_steps=2, topology_every_n_steps=2,
                          topology_every_n_epochs=None, topology_landmarks=24, np_every_n_steps=2,
                          np_every_n_epochs=None, symmetry_every_n_steps=2, prog_bar=None)
    trainer, module = _fit(name, mon)
    assert list(mon.monitor.modules) == expected_layers
    keys = set(trainer.callback_metrics)
    for layer in expected_layers:
        assert f"geometry/id/{layer}" in keys
        assert f"geometry/ph/{layer}/h0_total_persistence" in keys
        assert f"geometry/symmetry/{layer}/rankme" in keys
    assert {"geometry/sharpness", "geometry/eos_ratio", "geometry/n_hvp",
            "geometry/neural_persistence/mean"} <= keys
    assert any(k.startswith("geometry/symmetry/") and k.endswith("/effective_rank") for k in keys)
    assert mon.errors == {}
    _, reference = _fit(name, None)
    for (k, a), (_, b) in zip(module.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), k
