"""Dead and duplicate units on constructed networks whose answer is known, a brute-force cosine
reference, and every error."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from geomonitor.symmetry import dead_fraction, dead_unit_mask, duplicate_count, duplicate_unit_mask


def test_units_killed_by_their_bias_are_dead():
    torch.manual_seed(0)
    layer = nn.Linear(4, 6)
    with torch.no_grad():
        layer.weight.clamp_(-0.5, 0.5)
        layer.bias[[1, 4]] = -10.0  # |w.x| <= 2 on x in [0, 1]^4: never positive
        layer.bias[[0, 2, 3, 5]] = 10.0
    x = torch.rand(100, 4)
    with torch.no_grad():
        pre = layer(x)
    assert dead_unit_mask(pre).tolist() == [False, True, False, False, True, False]
    assert dead_unit_mask(torch.relu(pre)).tolist() == dead_unit_mask(pre).tolist()
    assert dead_fraction(pre) == pytest.approx(2 / 6)


def test_conv_channel_is_dead_only_if_zero_at_every_position():
    x = torch.randn(8, 3, 5, 5).abs()
    x[:, 1] = 0.0  # dead channel
    x[:, 2] = 0.0
    x[3, 2, 4, 4] = 0.5  # alive at one position of one sample
    assert dead_unit_mask(x).tolist() == [False, True, False]
    seq = x.flatten(2).transpose(1, 2)  # (N, T, units)
    assert dead_unit_mask(seq, unit_dim=-1).tolist() == [False, True, False]


def _brute_duplicates(w_in, w_out, b_in, thr, absolute):
    rows_in = [np.append(w_in[j].ravel(), [] if b_in is None else [b_in[j]]) for j in range(len(w_in))]
    rows_out = [w_out[:, j].ravel() for j in range(len(w_in))]

    def cos(u, v):
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        if nu == 0 or nv == 0:
            return None
        c = float(u @ v / (nu * nv))
        return abs(c) if absolute else c

    out = [False] * len(w_in)
    for j, k in itertools.permutations(range(len(w_in)), 2):
        ci, co = cos(rows_in[j], rows_in[k]), cos(rows_out[j], rows_out[k])
        if ci is not None and co is not None and ci > thr and co > thr:
            out[j] = True
    return out


def test_copied_units_are_duplicates_and_negated_ones_only_in_absolute_mode():
    g = torch.Generator().manual_seed(0)
    w1, b1, w2 = (torch.randn(8, 5, generator=g, dtype=torch.float64),
                  torch.randn(8, generator=g, dtype=torch.float64),
                  torch.randn(3, 8, generator=g, dtype=torch.float64))
    w1[3], b1[3], w2[:, 3] = 2 * w1[0], 2 * b1[0], 0.7 * w2[:, 0]      # a scaled copy of unit 0
    w1[5], b1[5], w2[:, 5] = -w1[1], -b1[1], -w2[:, 1]                  # a negated copy of unit 1
    w1[6], b1[6], w2[:, 6] = w1[2], b1[2], torch.randn(3, generator=g, dtype=torch.float64)  # in only
    w1[7], b1[7] = 0.0, 0.0                                              # no direction
    assert duplicate_unit_mask(w1, w2, b1).nonzero().flatten().tolist() == [0, 3]
    assert duplicate_unit_mask(w1, w2, b1, absolute=True).nonzero().flatten().tolist() == [0, 1, 3, 5]
    assert duplicate_count(w1, w2, b1) == 2
    for absolute in (False, True):
        ref = _brute_duplicates(w1.numpy(), w2.numpy(), b1.numpy(), 0.99, absolute)
        assert duplicate_unit_mask(w1, w2, b1, absolute=absolute).tolist() == ref


@pytest.mark.parametrize("absolute", [False, True])
def test_many_candidates_fall_back_to_the_full_second_gram(absolute):
    """Every incoming vector nearly parallel (hidden^2 candidate pairs > 8 x hidden): the answer
    still equals brute force, decided by the outgoing vectors."""
    g = torch.Generator().manual_seed(0)
    hidden = 12
    w1 = torch.ones(hidden, 3, dtype=torch.float64) + 1e-4 * torch.randn(hidden, 3, generator=g, dtype=torch.float64)
    w1[5] = -w1[5]
    w2 = torch.randn(40, hidden, generator=g, dtype=torch.float64)
    w2[:, 4], w2[:, 9], w2[:, 5] = w2[:, 2], 2 * w2[:, 2], -w2[:, 7]
    got = duplicate_unit_mask(w1, w2, absolute=absolute)
    assert got.tolist() == _brute_duplicates(w1.numpy(), w2.numpy(), None, 0.99, absolute)
    assert got.nonzero().flatten().tolist() == ([2, 4, 9] if not absolute else [2, 4, 5, 7, 9])


def test_threshold_and_the_bias_matter():
    w1 = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])  # cos(unit0, unit1) = 0.995
    w2 = torch.ones(2, 3)
    assert duplicate_count(w1, w2, threshold=0.99) == 2
    assert duplicate_count(w1, w2, threshold=0.999) == 0
    # the same incoming weights with opposite biases are different units
    assert duplicate_count(torch.ones(2, 3), torch.ones(1, 2), torch.tensor([5.0, -5.0])) == 0
    assert duplicate_count(torch.ones(2, 3), torch.ones(1, 2)) == 2


def test_conv_channels_copied():
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(4, 3, 3, 3, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    w1[2], w2[:, 2] = w1[1], 3 * w2[:, 1]
    assert duplicate_unit_mask(w1, w2).tolist() == [False, True, True, False]
    ref = _brute_duplicates(w1.numpy(), w2.numpy(), None, 0.99, False)
    assert duplicate_unit_mask(w1, w2).tolist() == ref


@pytest.mark.parametrize("fn,args,kw,match", [
    (duplicate_unit_mask, (torch.ones(1, 3), torch.ones(2, 1)), {}, r"w_in must have at least 2 hidden units"),
    (duplicate_unit_mask, (torch.ones(3, 3), torch.ones(2, 2)), {}, r"w_out must have the hidden units on dim 1"),
    (duplicate_unit_mask, (torch.ones(3, 3), torch.ones(2, 3), torch.ones(2)), {}, r"b_in must have shape \(3,\)"),
    (duplicate_count, (torch.ones(3, 3), torch.ones(2, 3)), {"threshold": 1.0}, r"threshold must be a cosine in \(0, 1\), got 1.0"),
    (duplicate_count, (torch.ones(3, 3), torch.ones(2, 3)), {"threshold": True}, r"threshold must be a cosine"),
    (dead_unit_mask, (torch.ones(4),), {}, r"activation must have at least 2 dimensions"),
    (dead_unit_mask, (torch.tensor([[float("nan")]]),), {}, r"activation has 1 NaN or Inf entries"),
    (dead_unit_mask, (torch.ones(4, 3),), {"unit_dim": 0}, r"unit_dim must index a non-sample dimension .* got 0"),
    (dead_fraction, (torch.ones(4, 3),), {"unit_dim": 2}, r"unit_dim must index a non-sample dimension .* got 2"),
    (dead_fraction, (torch.ones(4, 3),), {"unit_dim": -2}, r"got -2"),
])
def test_errors(fn, args, kw, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kw)
