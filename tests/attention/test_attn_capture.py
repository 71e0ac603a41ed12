"""Attention readings recomputed from captured inputs, against the weights the modules return
(``need_weights=True``, ``output_attentions=True`` under eager attention) and an explicit numpy
q.k computation; the forward is unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from torch import nn

from geomonitor.attention import attention_modules, queries_keys, read_attention


def _entropy(w):
    """Mean row entropy per head of attention weights (B, H, Tq, Tk), numpy float64."""
    w = np.asarray(w, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(w > 0, w * np.log(w), 0.0).sum(-1)
    return h.mean(axis=(0, 2))


def _np_heads(x, W, b, H):
    y = x @ W.T + (0 if b is None else b)
    B, T, _ = y.shape
    return y.reshape(B, T, H, -1).transpose(0, 2, 1, 3)


def _check(reading, q, k, scale, allowed, weights):
    """The numpy logits reproduce the module's own weights; then compare the readings."""
    z = np.einsum("bhid,bhjd->bhij", q, k) * scale
    zm = np.where(allowed, z, -np.inf)
    np.testing.assert_allclose(softmax(zm, axis=-1), weights, atol=2e-6)
    np.testing.assert_allclose(reading.max_logit.numpy(), zm.max(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reading.entropy.numpy(), _entropy(weights), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_with_masks(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 8, generator=g) * 2
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)        # True = not allowed
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 4] = True
    xin = x if batch_first else x.transpose(0, 1)
    model = nn.Sequential()
    model.add_module("attn", mha)
    readings, out = read_attention(model, lambda: mha(xin, xin, xin, attn_mask=causal,
                                                      key_padding_mask=pad, need_weights=True,
                                                      average_attn_weights=False))
    weights = out[1].detach().numpy()
    W, b = mha.in_proj_weight.detach().numpy(), mha.in_proj_bias.detach().numpy()
    xn = x.numpy()
    q, k = _np_heads(xn, W[:8], b[:8], 2), _np_heads(xn, W[8:16], b[8:16], 2)
    allowed = ~causal.numpy()[None, None] & ~pad.numpy()[:, None, None, :]
    _check(readings["attn"], q, k, 0.5, allowed, weights)


def test_multihead_attention_separate_kdim_float_mask():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 4, kdim=6, vdim=6, batch_first=True, bias=False).eval()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 3, 8, generator=g), torch.randn(2, 7, 6, generator=g)
    bias = torch.zeros(3, 7)
    bias[:, 5:] = -torch.inf
    (name, reading), = read_attention(mha, lambda: mha(x, y, y, attn_mask=bias,
                                                       average_attn_weights=False))[0].items()
    assert name == "model"
    _, w = mha(x, y, y, attn_mask=bias, average_attn_weights=False)
    q = _np_heads(x.numpy(), mha.q_proj_weight.detach().numpy(), None, 4)
    k = _np_heads(y.numpy(), mha.k_proj_weight.detach().numpy(), None, 4)
    allowed = np.isfinite(bias.numpy())[None, None]
    _check(reading, q, k, 2 ** -0.5, allowed, w.detach().numpy())  # head_dim 8/4


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_fast_path(norm_first):
    """Eval + no grad would take the fused fast path, which never calls self_attn; a hook on
    the layer turns it off (PyTorch's rule), so the reading forward equals the unfused one."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(3))
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    assert list(attention_modules(enc)) == ["layers.0", "layers.1"]
    plain = enc(x, mask=mask, is_causal=True).detach()              # grad on: unfused path
    with torch.no_grad():
        readings, out = read_attention(enc, lambda: enc(x, mask=mask, is_causal=True))
    assert torch.equal(out, plain)                                  # forward unchanged
    h = x
    allowed = np.isfinite(mask.numpy())[None, None]
    for i, lay in enumerate(enc.layers):
        with torch.no_grad():
            a = lay.norm1(h) if norm_first else h
            _, w = lay.self_attn(a, a, a, attn_mask=mask, need_weights=True, average_attn_weights=False)
            W, b = lay.self_attn.in_proj_weight.detach().numpy(), lay.self_attn.in_proj_bias.detach().numpy()
            q, k = _np_heads(a.numpy(), W[:16], b[:16], 4), _np_heads(a.numpy(), W[16:32], b[16:32], 4)
            _check(readings[f"layers.{i}"], q, k, 0.5, allowed, w.numpy())
            h = lay(h, src_mask=mask, is_causal=True)


def _gpt2(attn="eager", **extra):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=4,
                     attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **extra)
    cfg._attn_implementation = attn
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("extra", [{}, {"scale_attn_by_inverse_layer_idx": True}])
def test_gpt2_against_output_attentions(extra):
    model = _gpt2(**extra)
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0                                                  # right padding
    with torch.no_grad():
        readings, out = read_attention(model, lambda: model(ids, attention_mask=mask,
                                                            output_attentions=True,
                                                            output_hidden_states=True))
    assert list(readings) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    causal = np.tril(np.ones((7, 7), dtype=bool))[None, None]
    allowed = causal & mask.numpy().astype(bool)[:, None, None, :]
    for i, blk in enumerate(model.transformer.h):
        with torch.no_grad():
            x = blk.ln_1(out.hidden_states[i]).numpy()
        W, b = blk.attn.c_attn.weight.detach().numpy(), blk.attn.c_attn.bias.detach().numpy()
        q = _np_heads(x, W[:, :16].T, b[:16], 4)
        k = _np_heads(x, W[:, 16:32].T, b[16:32], 4)
        scale = 0.5 / (i + 1 if extra else 1)
        _check(readings[f"transformer.h.{i}.attn"], q, k, scale, allowed, out.attentions[i].numpy())


def _llama(attn="eager"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=100.0)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def _np_rope(x, theta=100.0):
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.arange(x.shape[2])[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + rot * sin


def test_llama_rotary_gqa_against_output_attentions():
    model = _llama()
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        readings, out = read_attention(model, lambda: model(ids, output_attentions=True,
                                                            output_hidden_states=True))
    causal = np.tril(np.ones((9, 9), dtype=bool))[None, None]
    for i, lay in enumerate(model.model.layers):
        with torch.no_grad():
            x = lay.input_layernorm(out.hidden_states[i]).numpy().astype(np.float64)
        q = _np_rope(_np_heads(x, lay.self_attn.q_proj.weight.detach().numpy(), None, 4))
        k = _np_rope(_np_heads(x, lay.self_attn.k_proj.weight.detach().numpy(), None, 2))
        k = np.repeat(k, 2, axis=1)
        _check(readings[f"model.layers.{i}.self_attn"], q, k, 8 ** -0.5, causal,
               out.attentions[i].numpy())


@pytest.mark.parametrize("make", [_gpt2, _llama])
def test_readings_do_not_depend_on_the_attention_backend(make):
    ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    eager, sdpa = make("eager"), make("sdpa")
    with torch.no_grad():
        r1, o1 = read_attention(eager, lambda: eager(ids))
        r2, o2 = read_attention(sdpa, lambda: sdpa(ids))
        plain = sdpa(ids).logits
    assert torch.equal(o2.logits, plain)
    for name in r1:
        torch.testing.assert_close(r1[name].max_logit, r2[name].max_logit)
        torch.testing.assert_close(r1[name].entropy, r2[name].entropy)


def test_errors_reported_per_module_not_raised():
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True).eval()
    x = torch.randn(1, 3, 8)
    readings, out = read_attention(mha, lambda: mha(x, x, x))
    assert isinstance(readings["model"], ValueError)
    assert "add_bias_kv" in str(readings["model"])
    assert out[0].shape == (1, 3, 8)


def test_hooks_removed_when_the_forward_raises():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def boom():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        read_attention(mha, boom)
    assert not mha._forward_pre_hooks


def test_unsupported_module_raises():
    with pytest.raises(ValueError, match="unsupported attention module Linear"):
        queries_keys(nn.Linear(2, 2), (torch.zeros(1, 2),), {})


def test_llama_cached_keys_raise():
    model = _llama()
    ids = torch.randint(0, 40, (1, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        past = model(ids, use_cache=True).past_key_values
        readings, _ = read_attention(model, lambda: model(ids[:, :1], past_key_values=past))
    assert all("cached keys" in str(r) for r in readings.values())


def test_gpt2_cached_keys_raise():
    model = _gpt2()
    ids = torch.randint(0, 40, (1, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        past = model(ids, use_cache=True).past_key_values
        readings, _ = read_attention(model, lambda: model(ids[:, :1], past_key_values=past))
    assert all("cached keys" in str(r) for r in readings.values())


def test_nested_inputs_raise():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(2, 8)])
    with pytest.raises(ValueError, match="nested-tensor inputs are not supported"):
        queries_keys(mha, (x, x, x), {})


def test_gpt2_cross_attention_and_bad_mask_raise():
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    cfg = GPT2Config(n_embd=16, n_head=2, add_cross_attention=True)
    h = torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match="GPT-2 cross-attention is not supported"):
        queries_keys(GPT2Attention(cfg, is_cross_attention=True, layer_idx=0), (h,),
                     {"encoder_hidden_states": h})
    with pytest.raises(ValueError, match="attention_mask of type str is not supported"):
        queries_keys(GPT2Attention(cfg, layer_idx=0), (h,), {"attention_mask": "causal"})


def test_llama_without_position_embeddings_raises():
    attn = _llama().model.layers[0].self_attn
    with pytest.raises(ValueError, match="without position_embeddings"):
        queries_keys(attn, (torch.randn(1, 3, 32),), {})


def test_qk_norm_attention_is_reported_unsupported():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=40, hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=8)).eval()
    with torch.no_grad():
        readings, _ = read_attention(model, lambda: model(torch.zeros(1, 4, dtype=torch.long)))
    assert list(readings) == ["model.layers.0.self_attn"]
    assert "q/k normalisation" in str(readings["model.layers.0.self_attn"])
