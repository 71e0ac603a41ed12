"""The models users bring, built from configs with random weights (no download), for benchmarks.

* :func:`resnet18` -- a ResNet-18 (He et al. 2016: BasicBlocks [2, 2, 2, 2], BatchNorm,
  residual connections; 11.2M parameters at 10 classes), written out so that no torchvision
  is needed; input (B, 3, 32, 32).
* :func:`transformer` -- ``nn.TransformerEncoder`` (batch first) with a token embedding and a
  linear head; input (B, T) token ids.
* :func:`gpt2` -- Hugging Face ``GPT2LMHeadModel`` from a small ``GPT2Config``; input
  ``{"input_ids": (B, T), "labels": (B, T)}``.
* :func:`cnn` -- a small 4-block CNN with BatchNorm (33.6k parameters); input (B, 3, 32, 32).
* :func:`char_lm` -- the character transformer LM of ``recipes/transformer.py`` at
  d_model 128, 4 blocks, 4 heads, context 64 (0.82M parameters at the 88 symbols of
  :func:`char_corpus`); input (B, T) token ids, T <= 64.

:func:`cnn_case` and :func:`char_lm_case` return ``(model, batch, probe, loss_fn)``: the model,
a training batch of 64 samples, a probe set of 256 samples and ``loss_fn(model, batch)``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["resnet18", "transformer", "gpt2", "cnn", "char_lm", "cnn_case", "char_lm_case",
           "char_corpus"]


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


class SmallCNN(nn.Module):
    """Four conv(3x3)-BatchNorm-ReLU-maxpool(2) blocks of widths 16/32/32/64 on a
    (B, 3, 32, 32) input (32 -> 16 -> 8 -> 4 -> 2 pixels), global average pool, linear head to
    ``num_classes`` (B, num_classes). Modules: ``blocks.0 ... blocks.3``, ``head``."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 32, 64)) -> None:
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers.append(nn.Sequential(nn.Conv2d(cin, w, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)))
            cin = w
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.blocks(x)), 1))


def cnn(num_classes: int = 10) -> nn.Module:
    """:class:`SmallCNN`: input (B, 3, 32, 32) float images, output (B, num_classes) logits;
    33.6k parameters at 10 classes."""
    return SmallCNN(num_classes)


def _recipe():
    """``recipes/transformer.py`` as a module (its model, text and vocabulary are the LM's)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "transformer.py")
    spec = importlib.util.spec_from_file_location("_recipe_transformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def char_lm(vocab: int) -> nn.Module:
    """The recipe's ``CharTransformer`` at d_model 128, 4 blocks, 4 heads, context 64 (0.82M
    parameters at ``vocab`` = 88, :func:`char_corpus`): input (B, T) int64 token ids in
    [0, vocab), T <= 64; output (B, T, vocab) logits. Modules: ``embed``, ``blocks.layers.N``,
    ``norm``, ``head``."""
    return _recipe().CharTransformer(vocab, d_model=128, n_layers=4, n_heads=4, context=64)


def char_corpus() -> tuple[str, torch.Tensor, int]:
    """The recipe's text (the source of the ``argparse`` module): the text, its ids (the
    recipe's ``Vocabulary``: characters sorted) and the vocabulary size."""
    recipe = _recipe()
    text = recipe.corpus()
    vocab = recipe.Vocabulary(text)
    return text, vocab.encode(text), len(vocab)


def _windows(ids: torch.Tensor, context: int, n: int, gen: torch.Generator):
    """``n`` windows at seeded random starts (the recipe's ``RandomWindows``): (n, T) inputs
    and (n, T) next characters."""
    starts = torch.randint(0, len(ids) - context - 1, (n,), generator=gen)
    w = torch.stack([ids[s: s + context + 1] for s in starts.tolist()])
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def _xent(model: nn.Module, batch) -> torch.Tensor:
    logits = model(batch[0])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1))


def cnn_case(seed: int = 0, batch_size: int = 64, probe_size: int = 256):
    """``(model, batch, probe, loss_fn)`` for :func:`cnn`: random images (B, 3, 32, 32) and
    labels in [0, 10); the training batch has ``batch_size`` samples, the probe ``probe_size``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cnn()
    batch = (torch.randn(batch_size, 3, 32, 32, generator=gen),
             torch.randint(0, 10, (batch_size,), generator=gen))
    probe = (torch.randn(probe_size, 3, 32, 32, generator=gen),
             torch.randint(0, 10, (probe_size,), generator=gen))
    return model, batch, probe, _xent


def char_lm_case(seed: int = 0, batch_size: int = 64, probe_size: int = 256):
    """``(model, batch, probe, loss_fn)`` for :func:`char_lm`: windows of 64 characters of
    :func:`char_corpus` (90/10 split as in the recipe): the training batch, ``batch_size``
    random windows of the training text; the probe, ``probe_size`` random held-out windows;
    both ``(inputs (B, 64), next characters (B, 64))``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    _, ids, vocab = char_corpus()
    cut = int(0.9 * len(ids))
    model = char_lm(vocab)
    batch = _windows(ids[:cut], 64, batch_size, gen)
    probe = _windows(ids[cut:], 64, probe_size, gen)
    return model, batch, probe, _xent
