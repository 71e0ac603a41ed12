"""Queries and keys of attention modules, recomputed from their captured inputs.

A forward pre-hook (``with_kwargs=True``) on each attention module sees its inputs; the
queries and keys are recomputed from those inputs with the module's own weights, so the
model's forward is not changed (no ``need_weights``/``output_attentions`` switch, any
attention backend: eager, SDPA, the fused fast path). Supported modules:

==============================  =============================================================
module                          recomputation
==============================  =============================================================
``nn.TransformerEncoderLayer``  hooked on the layer (its fused fast path would not call
                                ``self_attn``): input, ``norm1`` when ``norm_first``, then
                                ``self_attn``'s in-projection; ``src_mask``,
                                ``src_key_padding_mask``, ``is_causal``
``nn.MultiheadAttention``       (one not owned by an encoder layer) in-projection of ``query``
                                and ``key``; ``attn_mask``, ``key_padding_mask``, ``is_causal``;
                                scale ``1/sqrt(head_dim)``
HF GPT-2 (``c_attn``)           ``c_attn(hidden_states)`` split into q, k, v;
                                ``module.scaling`` (``scale_attn_weights``, inverse layer index)
HF LLaMA-style (``q_proj``,     ``q_proj``/``k_proj``, rotary embedding from the
``k_proj``, rotary)             ``position_embeddings=(cos, sin)`` argument (``rotate_half``
                                convention), keys repeated for grouped-query attention;
                                ``module.scaling``
==============================  =============================================================

Masks come out in one convention (a float tensor added to the logits, ``-inf`` = masked):
PyTorch's bool masks (True = *not* allowed) are inverted, Hugging Face's bool masks (True =
allowed) kept; for HF a ``None`` mask on a causal module (``is_causal``) with more than one
query means the causal mask (what SDPA then applies). Unsupported: cached keys, cross-
attention, ``add_bias_kv``/``add_zero_attn``, q/k normalisation layers, nested tensors,
flex-attention block masks -- each a ``ValueError`` naming it.

A hook on an encoder layer turns PyTorch's fused eval/no-grad fast path off (PyTorch's own
rule for hooked layers): the reading forward runs the unfused path, whose output differs from
the fused one by float rounding (4.8e-7 seen on a 16-wide layer). Training forwards (grad
on) never take the fused path; they run without these hooks in any case.

The computation uses ``torch.nn.functional`` on the weights directly (no submodule call), so
no other hook fires. Cost per module: the two projections and the ``(B, H, T, T)`` logits of
:func:`geomonitor.attention.signals.attention_signals`.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geomonitor.attention.signals import AttentionSignals, attention_signals

__all__ = ["attention_modules", "queries_keys", "read_attention"]

QK = tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]


def _is_gpt2(m: nn.Module) -> bool:
    return hasattr(m, "c_attn") and hasattr(m, "split_size") and hasattr(m, "scaling")


def _is_llama(m: nn.Module) -> bool:
    return (all(hasattr(m, a) for a in ("q_proj", "k_proj", "head_dim", "scaling"))
            and "position_embeddings" in inspect.signature(m.forward).parameters)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The supported attention modules of ``model`` by name, in ``named_modules`` order
    (an ``nn.MultiheadAttention`` owned as ``self_attn`` by an encoder layer is read through
    the layer and not listed)."""
    owned = {id(m.self_attn) for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)}
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.TransformerEncoderLayer) or (
                isinstance(m, nn.MultiheadAttention) and id(m) not in owned):
            found[name or "model"] = m
        elif not isinstance(m, nn.MultiheadAttention) and (_is_gpt2(m) or _is_llama(m)):
            found[name or "model"] = m
    return found


def _bind(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(m.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    out = dict(bound.arguments)
    extra = out.pop("kwargs", None)
    if isinstance(extra, dict):
        out.update(extra)
    return out


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, _ = x.shape
    return x.reshape(B, T, n_heads, -1).transpose(1, 2)


def _causal(Tq: int, Tk: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    keep = torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(Tk - Tq)
    return torch.zeros(Tq, Tk, dtype=dtype, device=device).masked_fill(~keep, -torch.inf)


def _torch_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """PyTorch convention (bool True = not allowed; float added) -> additive float."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -torch.inf)
    return mask.detach().to(dtype)


def _mha(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
         attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
         is_causal: bool) -> QK:
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
    if query.is_nested or key.is_nested:
        raise ValueError("nested-tensor inputs are not supported")
    if query.dim() == 2:
        query, key = query.unsqueeze(0), key.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not mha.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    E, H = mha.embed_dim, mha.num_heads
    if mha._qkv_same_embed_dim:
        wq, wk = mha.in_proj_weight[:E], mha.in_proj_weight[E:2 * E]
    else:
        wq, wk = mha.q_proj_weight, mha.k_proj_weight
    b = mha.in_proj_bias
    bq, bk = (None, None) if b is None else (b[:E], b[E:2 * E])
    q = _heads(F.linear(query, wq, bq), H)
    k = _heads(F.linear(key, wk, bk), H)
    B, _, Tq, _ = q.shape
    Tk = k.shape[2]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    bias = _torch_bias(attn_mask, dtype)
    if bias is not None and bias.dim() == 3:
        bias = bias.reshape(B, H, Tq, Tk)
    if bias is None and is_causal:
        bias = _causal(Tq, Tk, dtype, q.device)
    pad = _torch_bias(key_padding_mask, dtype)
    if pad is not None:
        pad = pad.reshape(B, 1, 1, Tk)
        bias = pad if bias is None else bias + pad
    return q, k, mha.head_dim ** -0.5, bias


def _encoder_layer(layer: nn.TransformerEncoderLayer, a: dict[str, Any]) -> QK:
    x = a["src"]
    if layer.norm_first:
        x = F.layer_norm(x, layer.norm1.normalized_shape, layer.norm1.weight, layer.norm1.bias,
                         layer.norm1.eps)
    return _mha(layer.self_attn, x, x, a.get("src_mask"), a.get("src_key_padding_mask"),
                bool(a.get("is_causal")))


def _hf_bias(m: nn.Module, mask: Any, Tq: int, Tk: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return _causal(Tq, Tk, dtype, device) if getattr(m, "is_causal", False) and Tq > 1 else None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attention_mask of type {type(mask).__name__} is not supported")
    mask = mask[..., :Tk]
    if mask.dtype == torch.bool:  # Hugging Face: True = may attend
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, -torch.inf)
    return mask.detach().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _no_cache(m: nn.Module, a: dict[str, Any]) -> None:
    cache = a.get("cache", a.get("past_key_values"))
    if cache is not None and cache.get_seq_length(m.layer_idx) > 0:
        raise ValueError("cached keys (generation) are not supported")


def _gpt2(m: nn.Module, a: dict[str, Any]) -> QK:
    if getattr(m, "is_cross_attention", False) or a.get("encoder_hidden_states") is not None:
        raise ValueError("GPT-2 cross-attention is not supported")
    _no_cache(m, a)
    x = a["hidden_states"]
    w, b = m.c_attn.weight, m.c_attn.bias
    qkv = torch.addmm(b, x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], -1)
    q, k, _ = qkv.split(m.split_size, dim=-1)
    H = m.embed_dim // m.head_dim
    q, k = _heads(q, H), _heads(k, H)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q, k, float(m.scaling), _hf_bias(m, a.get("attention_mask"), q.shape[2], k.shape[2],
                                            dtype, q.device)


def _llama(m: nn.Module, a: dict[str, Any]) -> QK:
    if hasattr(m, "q_norm") or hasattr(m, "k_norm"):
        raise ValueError("attention with q/k normalisation layers is not supported")
    _no_cache(m, a)
    x = a["hidden_states"]
    d = m.head_dim
    q = _heads(F.linear(x, m.q_proj.weight, m.q_proj.bias), m.q_proj.out_features // d)
    k = _heads(F.linear(x, m.k_proj.weight, m.k_proj.bias), m.k_proj.out_features // d)
    pe = a.get("position_embeddings")
    if pe is None:
        raise ValueError("LLaMA-style attention called without position_embeddings=(cos, sin)")
    cos, sin = (t.unsqueeze(1) for t in pe)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q, k, float(m.scaling), _hf_bias(m, a.get("attention_mask"), q.shape[2], k.shape[2],
                                            dtype, q.device)


def queries_keys(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> QK:
    """``(q, k, scale, bias)`` of one call of a supported attention module.

    ``q`` ``(B, H, Tq, d)``, ``k`` ``(B, H, Tk, d)`` (repeated for grouped-query attention),
    ``bias`` ``None`` or an additive float mask broadcastable to ``(B, H, Tq, Tk)``.

    Raises:
        ValueError: an unsupported module or call (see the module docstring).
    """
    with torch.no_grad():
        if isinstance(module, nn.TransformerEncoderLayer):
            return _encoder_layer(module, _bind(module, args, kwargs))
        if isinstance(module, nn.MultiheadAttention):
            a = _bind(module, args, kwargs)
            return _mha(module, a["query"], a["key"], a.get("attn_mask"), a.get("key_padding_mask"),
                        bool(a.get("is_causal")))
        if _is_gpt2(module):
            return _gpt2(module, _bind(module, args, kwargs))
        if _is_llama(module):
            return _llama(module, _bind(module, args, kwargs))
    raise ValueError(f"unsupported attention module {type(module).__name__}")


def read_attention(model: nn.Module, forward: Callable[[], Any], *,
                   modules: dict[str, nn.Module] | None = None, chunk: int = 8,
                   ) -> tuple[dict[str, AttentionSignals | Exception], Any]:
    """Run ``forward()`` once with pre-hooks on the attention modules; return the per-module
    :class:`AttentionSignals` (or the exception that module's reading raised: it is never
    raised inside the forward) and ``forward()``'s output.

    The caller chooses the mode (eval, no grad); the hooks only read. A module called more
    than once keeps its last call. Hooks are removed also when the forward raises.
    """
    modules = attention_modules(model) if modules is None else modules
    readings: dict[str, AttentionSignals | Exception] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            try:
                q, k, scale, bias = queries_keys(m, args, kwargs)
                readings[name] = attention_signals(q, k, scale=scale, mask=bias, chunk=chunk)
            except Exception as err:  # noqa: BLE001 - reported per module, never in the forward
                readings[name] = err
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in modules.items()]
    try:
        out = forward()
    finally:
        for h in handles:
            h.remove()
    return readings, out
