"""The models users bring, built from configs with random weights (no download), for benchmarks.

* :func:`resnet18` -- a ResNet-18 (He et al. 2016: BasicBlocks [2, 2, 2, 2], BatchNorm,
  residual connections; 11.2M parameters at 10 classes), written out so that no torchvision
  is needed; input (B, 3, 32, 32).
* :func:`transformer` -- ``nn.TransformerEncoder`` (batch first) with a token embedding and a
  linear head; input (B, T) token ids.
* :func:`gpt2` -- Hugging Face ``GPT2LMHeadModel`` from a small ``GPT2Config``; input
  ``{"input_ids": (B, T), "labels": (B, T)}``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["resnet18", "transformer", "gpt2"]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths, start=1):
            setattr(self, f"layer{i}", nn.Sequential(_Block(cin, w, 1 if i == 1 else 2), _Block(w, w, 1)))
            cin = w
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(num_classes: int = 10) -> nn.Module:
    return ResNet18(num_classes)


class _TokenTransformer(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


def transformer(vocab: int = 64, d: int = 128, layers: int = 4, heads: int = 4) -> nn.Module:
    return _TokenTransformer(vocab, d, layers, heads)


def gpt2(vocab: int = 256, d: int = 128, layers: int = 4, heads: int = 4, positions: int = 64) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads, n_positions=positions)
    return GPT2LMHeadModel(cfg)
