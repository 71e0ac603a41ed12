"""weight_matching: exact recovery of a hidden permutation, brute force on one hidden layer,
and the architectures it refuses."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from geomonitor.connectivity import (apply_permutations, loss_barrier, match_permutations,
                                     weight_matching)


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.BatchNorm1d(12),
                         nn.Tanh(), nn.Dropout(0.1), nn.Linear(12, 3))


def _permute_mlp(model: nn.Sequential, p1: torch.Tensor, p2: torch.Tensor) -> nn.Sequential:
    """An independent, hand-written hidden-unit permutation of _mlp: unit i of the result is
    unit p[i] of ``model``."""
    out = copy.deepcopy(model)
    s = model.state_dict()
    with torch.no_grad():
        out[0].weight.copy_(s["0.weight"][p1]); out[0].bias.copy_(s["0.bias"][p1])
        out[2].weight.copy_(s["2.weight"][p2][:, p1]); out[2].bias.copy_(s["2.bias"][p2])
        for k in ("weight", "bias", "running_mean", "running_var"):
            getattr(out[3], k).copy_(s[f"3.{k}"][p2])
        out[6].weight.copy_(s["6.weight"][:, p2])
    return out


def test_permuted_network_is_recovered_exactly():
    a = _mlp(0)
    with torch.no_grad():
        a[3].running_mean.normal_(); a[3].running_var.uniform_(0.5, 2)
    g = torch.Generator().manual_seed(1)
    p1, p2 = torch.randperm(16, generator=g), torch.randperm(12, generator=g)
    b = _permute_mlp(a, p1, p2).eval()
    a.eval()
    x = torch.randn(32, 6)
    assert torch.allclose(a(x), b(x), atol=1e-6)  # same function
    b_before = {k: v.clone() for k, v in b.state_dict().items()}
    perms = match_permutations(a, b)
    # unit i of a is unit perm[i] of b, and unit j of b is unit p[j] of a: perm = p^-1
    assert torch.equal(perms["0"], torch.argsort(p1)) and torch.equal(perms["2"], torch.argsort(p2))
    aligned = weight_matching(a, b)
    assert all(torch.equal(aligned[k], v) for k, v in a.state_dict().items())
    assert all(torch.equal(b_before[k], v) for k, v in b.state_dict().items())  # b unchanged


def test_barrier_returns_to_zero_after_matching():
    torch.manual_seed(3)
    a = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    x = torch.randn(256, 4)
    with torch.no_grad():
        y = a(x)  # a is a global minimum (loss 0) of the regression onto its own outputs
    g = torch.Generator().manual_seed(0)
    p1, p2 = torch.randperm(32, generator=g), torch.randperm(32, generator=g)
    b = copy.deepcopy(a)
    s = a.state_dict()
    with torch.no_grad():
        b[0].weight.copy_(s["0.weight"][p1]); b[0].bias.copy_(s["0.bias"][p1])
        b[2].weight.copy_(s["2.weight"][p2][:, p1]); b[2].bias.copy_(s["2.bias"][p2])
        b[4].weight.copy_(s["4.weight"][:, p2])
    loss = lambda m: ((m(x) - y) ** 2).mean()  # noqa: E731
    naive = loss_barrier(a, a, b, loss)
    matched = loss_barrier(a, a, weight_matching(a, b), loss)
    assert naive.losses[0] < 1e-12 and naive.losses[-1] < 1e-12  # b computes the same function
    assert naive.barrier > 0.1 * float(y.var())  # the midpoint is a different network
    assert matched.barrier < 1e-12 and max(matched.losses) < 1e-12


def test_one_hidden_layer_matches_brute_force():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    b = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    sa, sb = a.state_dict(), b.state_dict()

    def score(p):
        p = list(p)
        return float((sa["0.weight"] * sb["0.weight"][p]).sum() + (sa["0.bias"] * sb["0.bias"][p]).sum()
                     + (sa["2.weight"] * sb["2.weight"][:, p]).sum())

    best = max(itertools.permutations(range(5)), key=score)
    assert match_permutations(a, b)["0"].tolist() == list(best)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = nn.functional.avg_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.view(x.size(0), -1))


def test_cnn_with_flatten_recovered():
    torch.manual_seed(0)
    a = SmallCNN().eval()
    with torch.no_grad():
        a.bn1.running_mean.normal_()
    g = torch.Generator().manual_seed(2)
    p1, p2 = torch.randperm(4, generator=g), torch.randperm(6, generator=g)
    b = copy.deepcopy(a)
    s = a.state_dict()
    with torch.no_grad():  # hand-written permutation; the fc columns move in blocks of 16
        b.c1.weight.copy_(s["c1.weight"][p1]); b.c1.bias.copy_(s["c1.bias"][p1])
        for k in ("weight", "bias", "running_mean", "running_var"):
            getattr(b.bn1, k).copy_(s[f"bn1.{k}"][p1])
        b.c2.weight.copy_(s["c2.weight"][p2][:, p1]); b.c2.bias.copy_(s["c2.bias"][p2])
        b.fc.weight.copy_(s["fc.weight"].view(10, 6, 16)[:, p2].reshape(10, 96))
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    aligned = weight_matching(a, b)
    assert all(torch.equal(aligned[k], v) for k, v in a.state_dict().items())


# ---- refused architectures ------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(h + self.b(h))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cat([h, h.relu()], 1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x, y):
        return self.b(self.a(x))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.b(self.a(x))


class FreeParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.b(self.a(x) * self.scale)


class ConvAfterFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv1d(1, 2, 1), nn.Conv1d(1, 2, 1)

    def forward(self, x):
        return self.b(self.a(x).view(x.size(0), 1, -1))


class Unsqueeze(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv1d(1, 2, 1), nn.Conv1d(1, 2, 1)

    def forward(self, x):
        return self.b(self.a(x).flatten(1).unsqueeze(1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(h), self.c(h)


class FlattenAll(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.flatten(self.a(x)))


class Sorting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.sort(self.a(x), 1).values)


@pytest.mark.parametrize("make, msg", [
    (Residual, r"node 'add' .* combines 2 tensors \(a residual connection or a branch\)"),
    (Concat, r"the output of node 'a' is used 2 times|combines"),
    (TwoInputs, "2 inputs"),
    (Branchy, "torch.fx cannot trace it"),
    (FreeParam, r"node 'scale' uses the parameter or buffer 'scale' directly in forward \(e.g. x \* self.scale"),
    (lambda: nn.Linear(4, 4), "it is a single Linear layer, which has no hidden units to permute"),
    (lambda: nn.Conv2d(3, 4, 3), "it is a single Conv2d layer, which has no hidden units to permute"),
    (lambda: nn.BatchNorm1d(4), "it is a single BatchNorm1d layer"),
    (ConvAfterFlatten, "convolution 'b' comes after a flatten"),
    (Unsqueeze, "tensor method 'unsqueeze'"),
    (TwoHeads, r"the output of node 'a' is used 2 times \(a residual connection or a branch\)"),
    (FlattenAll, r"flattens dims 0..-1 \(only torch.flatten\(x, 1\) is supported\)"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(5), nn.Linear(5, 2)),
     "BatchNorm '1' has 5 features after a layer with 4 outputs"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2)), "layer '1' has 5 inputs after a layer with 4 outputs"),
    (Sorting, "function 'sort'"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
     r"module '1' is a LayerNorm \(only BatchNorm normalisation layers are supported\)"),
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1)),
     "is a GroupNorm"),
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1)),
     r"grouped convolution \(groups=2\)"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 1)), r"MultiheadAttention\) is not supported"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU()), r"1 Linear/Conv layer\(s\): nothing to permute"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.Flatten(0), nn.Linear(4, 2)), r"only nn.Flatten\(1, -1\)"),
    (lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(10, 2)),
     "has 10 inputs, not a multiple of the 3 channels"),
])
def test_refused_architectures(make, msg):
    m = make()
    with pytest.raises(ValueError, match="weight_matching does not support this model: " + f"(?:.*)(?:{msg})"):
        weight_matching(m, copy.deepcopy(m))


def test_bad_arguments():
    a = _mlp(0)
    with pytest.raises(TypeError, match="model_b must be an nn.Module, got dict"):
        weight_matching(a, {})
    with pytest.raises(ValueError, match="max_iter must be a positive int, got 0"):
        weight_matching(a, a, max_iter=0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        weight_matching(a, a, generator=3)
    other = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="different state-dict keys"):
        weight_matching(a, other)
    wide = nn.Sequential(nn.Linear(6, 17), nn.ReLU(), nn.Linear(17, 12), nn.BatchNorm1d(12),
                         nn.Tanh(), nn.Dropout(0.1), nn.Linear(12, 3))
    with pytest.raises(ValueError, match=r"differ at '0.weight': shapes \(16, 6\) and \(17, 6\)"):
        weight_matching(a, wide)
    with pytest.raises(ValueError, match=r"one permutation per hidden layer \['0', '2'\]"):
        apply_permutations(a, {"0": torch.arange(16)})
    with pytest.raises(ValueError, match=r"perms\['2'\] must be a permutation of range\(12\)"):
        apply_permutations(a, {"0": torch.arange(16), "2": torch.zeros(12, dtype=torch.long)})
