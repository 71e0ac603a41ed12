"""attention_signals / output_logit_signals against explicit numpy loops, and every raise."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from geomonitor.attention import attention_signals, output_logit_signals


def _reference(q, k, scale, allowed=None, bias=None):
    """Per-head max logit and mean row entropy by explicit loops in float64."""
    q, k = q.double().numpy(), k.double().numpy()
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    best = np.full(H, -np.inf)
    ent = np.zeros(H)
    rows = np.zeros(H)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                keep = [j for j in range(Tk) if allowed is None or allowed[b, h, i, j]]
                if not keep:
                    continue
                z = np.array([q[b, h, i] @ k[b, h, j] * scale for j in keep])
                best[h] = max(best[h], z.max())
                zb = z + (0 if bias is None else np.array([bias[b, h, i, j] for j in keep]))
                p = softmax(zb)
                ent[h] += -sum(pj * np.log(pj) for pj in p if pj > 0)
                rows[h] += 1
    return best, ent / rows


def _qk(seed, B=3, H=2, Tq=5, Tk=6, d=4, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, Tq, d, generator=g, dtype=torch.float64) * spread,
            torch.randn(B, H, Tk, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_no_mask_matches_loops(chunk):
    q, k = _qk(0)
    got = attention_signals(q, k, chunk=chunk)
    best, ent = _reference(q, k, 0.5)
    np.testing.assert_allclose(got.max_logit.numpy(), best, rtol=1e-12)
    np.testing.assert_allclose(got.entropy.numpy(), ent, rtol=1e-10)


def test_bool_mask_causal_and_scale():
    q, k = _qk(1, Tq=6, Tk=6)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    got = attention_signals(q, k, scale=0.3, mask=allowed)
    best, ent = _reference(q, k, 0.3, allowed.expand(3, 2, 6, 6).numpy())
    np.testing.assert_allclose(got.max_logit.numpy(), best, rtol=1e-12)
    np.testing.assert_allclose(got.entropy.numpy(), ent, rtol=1e-10)


def test_float_mask_bias_enters_entropy_not_max():
    q, k = _qk(2)
    g = torch.Generator().manual_seed(5)
    bias = torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64)
    bias[:, :, :, 0] = -torch.inf                         # one key masked by -inf
    bias[0, :, :, 1] = torch.finfo(torch.float64).min     # and one by the dtype's lowest value
    got = attention_signals(q, k, mask=bias)
    full = bias.expand(3, 2, 5, 6).numpy()
    allowed = np.isfinite(full) & (full > np.finfo(np.float64).min / 2)
    best, ent = _reference(q, k, 0.5, allowed, full)
    np.testing.assert_allclose(got.max_logit.numpy(), best, rtol=1e-12)
    np.testing.assert_allclose(got.entropy.numpy(), ent, rtol=1e-10)


def test_fully_masked_rows_left_out_and_all_masked_head_is_nan():
    q, k = _qk(3, B=2, H=2)
    allowed = torch.ones(2, 2, 5, 6, dtype=torch.bool)
    allowed[0, 0, 2] = False          # one query of head 0 sees nothing
    allowed[:, 1] = False             # head 1 sees nothing at all
    got = attention_signals(q, k, mask=allowed)
    best, ent = _reference(q[:, :1], k[:, :1], 0.5, allowed[:, :1].numpy())
    np.testing.assert_allclose(got.max_logit[:1].numpy(), best, rtol=1e-12)
    np.testing.assert_allclose(got.entropy[:1].numpy(), ent, rtol=1e-10)
    assert torch.isnan(got.max_logit[1]) and torch.isnan(got.entropy[1])


def test_uniform_attention_has_entropy_log_tk():
    q = torch.zeros(1, 1, 3, 4)
    k = torch.randn(1, 1, 7, 4, generator=torch.Generator().manual_seed(0))
    got = attention_signals(q, k)
    assert got.entropy.item() == pytest.approx(np.log(7), rel=1e-6)
    assert got.max_logit.item() == 0.0


@pytest.mark.parametrize("kw, match", [
    (dict(q=torch.zeros(2, 3, 4), k=torch.zeros(2, 1, 3, 4)), r"q and k must be \(B, H, T, d\)"),
    (dict(q=torch.zeros(2, 1, 3, 4), k=torch.zeros(2, 2, 3, 4)), r"does not match q"),
    (dict(q=torch.zeros(0, 1, 3, 4), k=torch.zeros(0, 1, 3, 4)), r"empty batch or sequence"),
    (dict(q=torch.zeros(1, 1, 3, 4), k=torch.zeros(1, 1, 3, 4), chunk=0), r"chunk must be an int >= 1"),
    (dict(q=torch.zeros(1, 1, 3, 4), k=torch.zeros(1, 1, 3, 4), mask=torch.zeros(4, 4)),
     r"does not broadcast to \(1, 1, 3, 3\)"),
    (dict(q=torch.zeros(1, 1, 3, 4), k=torch.zeros(1, 1, 3, 4), mask=torch.zeros(3, 3, dtype=torch.long)),
     r"mask must be bool"),
    (dict(q=torch.zeros(1, 1, 3, 4), k=torch.zeros(1, 1, 3, 4), mask=[[1]]), r"mask must be a tensor"),
    (dict(q=[1.0], k=torch.zeros(1, 1, 3, 4)), r"q and k must be tensors"),
])
def test_attention_signals_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        attention_signals(**kw)


def test_output_logit_signals_match_scipy():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 4 - 2
    got = output_logit_signals(logits)
    x = logits.numpy().reshape(-1, 11)
    lz = logsumexp(x, axis=1)
    assert got["mean_abs"] == pytest.approx(np.abs(x).mean(), rel=1e-12)
    assert got["max"] == pytest.approx(x.max(), rel=1e-12)
    assert got["log_z"] == pytest.approx(lz.mean(), rel=1e-12)
    assert got["log_z_sq"] == pytest.approx((lz ** 2).mean(), rel=1e-12)


@pytest.mark.parametrize("x, match", [
    (torch.zeros(3, 1), r"V >= 2"), (torch.zeros(0, 4), r"at least one position"),
    (torch.zeros(3, 4, dtype=torch.long), r"floating tensor, got Tensor of dtype torch.int64"),
    ([1.0, 2.0], r"floating tensor, got list"),
])
def test_output_logit_signals_raises(x, match):
    with pytest.raises(ValueError, match=match):
        output_logit_signals(x)
