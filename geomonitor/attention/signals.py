"""Transformer instability signals from queries, keys and output logits (pure functions).

Three readings precede the loss spikes and divergences of transformer training:

* **attention-logit growth** -- the largest pre-softmax attention logit ``q.k * scale``
  (``scale = 1/sqrt(d_head)`` by default) grows without bound; Dehghani et al. 2023 ("Scaling
  Vision Transformers to 22 Billion Parameters", ICML) and Wortsman et al. 2023 ("Small-scale
  proxies for large-scale Transformer training instabilities", ICLR 2024, Sec. 3.1) see it
  before divergence, at scale and at small scale with a high learning rate;
* **attention-entropy collapse** -- the Shannon entropy of each query's attention
  distribution ``H = -sum_j p_j log p_j`` falls towards 0 (one key takes all the weight):
  Zhai et al. 2023 ("Stabilizing Transformer Training by Preventing Attention Entropy
  Collapse", ICML) find it with the loss spikes;
* **output-logit divergence** -- the output logits drift so that ``log Z = logsumexp(logits)``
  moves far from 0 (Wortsman et al. 2023, Sec. 3.2; the z-loss of PaLM penalises
  ``(log Z)^2``).

:func:`attention_signals` gives the first two per head from ``q``/``k`` (shapes below),
:func:`output_logit_signals` the third from the output logits. Both run in float32 (float64
input stays float64), do not need gradients and touch no RNG.

Masks: ``mask`` is either a bool tensor, **True where a query may attend** (the convention of
``scaled_dot_product_attention``; ``nn.MultiheadAttention``'s bool masks mean the opposite and
are inverted by :mod:`geomonitor.attention.capture`), or a float tensor added to the logits
(``-inf``/very negative = masked, as Hugging Face's eager masks). With a float mask a key counts
as masked when its bias is ``-inf`` or below half the dtype's lowest value; the max logit is
taken over the unmasked keys and without the bias, the entropy from ``softmax(logits + bias)``,
i.e. from the weights the module itself uses. Rows with no allowed key are left out (a fully
padded query); when no row is left the head reads NaN.

Cost: one ``(B, H, Tq, Tk)`` logit tensor, built ``chunk`` batch items at a time:
``O(B H Tq Tk d)`` flops, ``O(chunk H Tq Tk)`` memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AttentionSignals", "attention_signals", "output_logit_signals", "OUTPUT_SUMMARIES"]

#: The output-logit readings, in the order :func:`output_logit_signals` returns them.
OUTPUT_SUMMARIES = ("mean_abs", "max", "log_z", "log_z_sq")


@dataclass(frozen=True)
class AttentionSignals:
    """Per-head readings of one attention module on one batch.

    ``max_logit`` (H,): largest ``q.k * scale`` over batch, queries and allowed keys;
    ``entropy`` (H,): mean over batch and queries of the attention distribution's entropy
    (nats, in ``[0, log Tk]``).
    """

    max_logit: torch.Tensor
    entropy: torch.Tensor


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def _allowed_and_bias(mask: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if mask is None:
        return None, None
    if mask.dtype == torch.bool:
        return mask.expand(shape), None
    if not mask.is_floating_point():
        raise ValueError(f"mask must be bool (True = may attend) or float (added to the logits), "
                         f"got dtype {mask.dtype}")
    bias = mask.detach().to(dtype)
    allowed = torch.isfinite(bias) & (bias > torch.finfo(mask.dtype).min / 2)
    return allowed.expand(shape), torch.where(allowed, bias, torch.zeros((), dtype=dtype)).expand(shape)


def attention_signals(q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None,
                      mask: torch.Tensor | None = None, chunk: int = 8) -> AttentionSignals:
    """Max attention logit and mean attention entropy per head.

    Args:
        q: queries ``(B, H, Tq, d)``.
        k: keys ``(B, H, Tk, d)`` (already repeated for grouped-query attention).
        scale: logit scale; ``None``: ``1/sqrt(d)``.
        mask: ``None``, or broadcastable to ``(B, H, Tq, Tk)``: bool (True = may attend) or
            float (added to the logits); see the module docstring.
        chunk: batch items per logit tensor (memory bound).

    Returns:
        :class:`AttentionSignals` with two ``(H,)`` float tensors.

    Raises:
        ValueError: wrong ranks or mismatched shapes, an empty batch, a non-finite or
            non-positive ``chunk``, a mask of another dtype or shape.
    """
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
        raise ValueError("q and k must be tensors")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be (B, H, T, d), got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    B, H, Tq, d = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != d:
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in batch, heads or d")
    if B == 0 or Tq == 0 or k.shape[2] == 0:
        raise ValueError(f"empty batch or sequence: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    Tk = k.shape[2]
    if scale is None:
        scale = d ** -0.5
    q, k = _float(q), _float(k)
    dtype = q.dtype
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"mask must be a tensor or None, got {type(mask).__name__}")
        try:
            ok = torch.broadcast_shapes(mask.shape, (B, H, Tq, Tk)) == (B, H, Tq, Tk)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to "
                             f"{(B, H, Tq, Tk)}")
        mask = mask.expand(B, H, Tq, Tk)
    best = torch.full((H,), -torch.inf, dtype=dtype)
    ent_sum = torch.zeros(H, dtype=dtype)
    rows = torch.zeros(H, dtype=dtype)
    for s in range(0, B, chunk):
        qs, ks = q[s:s + chunk], k[s:s + chunk]
        logits = torch.matmul(qs, ks.transpose(-1, -2)) * scale
        m = None if mask is None else mask[s:s + chunk]
        allowed, bias = _allowed_and_bias(m, tuple(logits.shape), dtype)
        if allowed is None:
            best = torch.maximum(best, logits.amax(dim=(0, 2, 3)))
            logp = torch.log_softmax(logits, dim=-1)
            h = -(logp.exp() * logp).sum(-1)                     # (b, H, Tq)
            ent_sum += h.sum(dim=(0, 2))
            rows += h.shape[0] * h.shape[2]
            continue
        masked = logits.masked_fill(~allowed, -torch.inf)
        best = torch.maximum(best, masked.amax(dim=(0, 2, 3)))
        z = logits + bias if bias is not None else logits
        z = z.masked_fill(~allowed, -torch.inf)
        live = allowed.any(-1)                                    # (b, H, Tq)
        z = torch.where(live.unsqueeze(-1), z, torch.zeros((), dtype=dtype))
        logp = torch.log_softmax(z, dim=-1)
        p = logp.exp()
        h = -torch.where(p > 0, p * logp, torch.zeros((), dtype=dtype)).sum(-1)
        ent_sum += torch.where(live, h, torch.zeros((), dtype=dtype)).sum(dim=(0, 2))
        rows += live.to(dtype).sum(dim=(0, 2))
    entropy = torch.where(rows > 0, ent_sum / rows.clamp_min(1), torch.full_like(rows, torch.nan))
    best = torch.where(best == -torch.inf, torch.full_like(best, torch.nan), best)  # no allowed key
    return AttentionSignals(max_logit=best, entropy=entropy)


def output_logit_signals(logits: torch.Tensor) -> dict[str, float]:
    """Output-logit readings over every position: ``{summary: value}`` for
    :data:`OUTPUT_SUMMARIES`.

    ``mean_abs``: mean of ``|logit|``; ``max``: the largest logit; ``log_z``: mean over
    positions of ``logsumexp`` over the last (vocabulary) axis; ``log_z_sq``: mean of
    ``(log Z)^2``, the quantity the z-loss penalises (Chowdhery et al. 2022; Wortsman et al.
    2023, Sec. 3.2).

    Args:
        logits: ``(..., V)`` with ``V >= 2``, at least one position.

    Raises:
        ValueError: not a floating tensor, ``V < 2``, no position.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating tensor, got {type(logits).__name__}"
                         + ("" if not isinstance(logits, torch.Tensor) else f" of dtype {logits.dtype}"))
    if logits.dim() < 1 or logits.shape[-1] < 2 or logits.numel() == 0:
        raise ValueError(f"logits must be (..., V) with V >= 2 and at least one position, got "
                         f"shape {tuple(logits.shape)}")
    x = _float(logits).reshape(-1, logits.shape[-1])
    log_z = torch.logsumexp(x, dim=-1)
    return {"mean_abs": float(x.abs().mean()), "max": float(x.max()),
            "log_z": float(log_z.mean()), "log_z_sq": float(log_z.pow(2).mean())}
