"""``AttentionFamily``: transformer instability signals on the probe set, live.

Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
instabilities"): attention-logit growth and output-logit divergence; Zhai et al. 2023
("Stabilizing Transformer Training by Preventing Attention Entropy Collapse"); Dehghani et al.
2023 ("Scaling Vision Transformers to 22 Billion Parameters"). One forward of the probe batch
(eval mode, no grad, RNG forked) with forward pre-hooks on the attention modules
(:mod:`geomonitor.attention.capture`: ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``,
Hugging Face GPT-2 and LLaMA-style attention); definitions in :mod:`geomonitor.attention.signals`.

========================================  ==================================================
key                                       what
========================================  ==================================================
``geometry/attention/<l>/max_logit``      largest pre-softmax logit ``q.k * scale`` over
                                          heads, probe sequences, queries and allowed keys
``geometry/attention/<l>/entropy``        attention entropy (nats) averaged over heads,
                                          sequences and queries
``geometry/attention/<l>/entropy_min``    the lowest head's mean entropy
``geometry/output_logits/mean_abs``       mean ``|logit|`` of the model output
``geometry/output_logits/max``            largest output logit
``geometry/output_logits/log_z``          mean ``logsumexp`` of the output logits
``geometry/output_logits/log_z_sq``       mean ``(log Z)^2`` (what the z-loss penalises)
========================================  ==================================================

``<l>`` is the attention module's name (an encoder layer's name for ``nn.TransformerEncoderLayer``).
The output logits are the forward's output when it is a floating tensor with a last axis of at
least 2, or its ``.logits`` (Hugging Face); ``output_logits=False`` leaves them out. A layer
whose reading fails, or an output without logits, goes into ``Measurement.errors``; the other
readings are still reported.

Cost per measurement: one forward of the probe batch plus, per attention module, its q/k
projections and the ``(N, H, T, T)`` logits, ``chunk`` sequences at a time; on the training
thread. Alerts on these keys: :mod:`geomonitor.monitor.attention_alerts`.

Example:
    >>> fam = AttentionFamily(Every(n_steps=10))
    >>> fam.run(ctx).metrics["geometry/attention/transformer.h.0.attn/max_logit"]
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from geomonitor.attention.capture import attention_modules, read_attention
from geomonitor.attention.signals import output_logit_signals
from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every
from geomonitor.symmetry.pairs import inference

__all__ = ["AttentionFamily", "output_logits_of"]


def output_logits_of(out: Any) -> torch.Tensor:
    """The logits in a forward's output: the tensor itself, ``.logits``, ``["logits"]``, or
    the first element of a tuple/list; a floating tensor whose last axis has >= 2 entries.

    Raises:
        ValueError: no such tensor.
    """
    if not isinstance(out, torch.Tensor):
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out.get("logits") if hasattr(out, "get") else None
        elif hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() < 1 \
            or out.shape[-1] < 2:
        raise ValueError("the forward's output has no logits (a floating tensor (..., V) with "
                         "V >= 2, or .logits); pass output_logits=False to leave them out")
    return out


class AttentionFamily(Family):
    """Max attention logit, attention entropy per layer, and output-logit norms (module doc).

    Args:
        schedule: when to measure.
        output_logits: also read the output logits (default True).
        chunk: probe sequences per logit tensor (memory bound, default 8).

    Raises:
        ValueError: a bad argument (named, with its value).
    """

    name = "attention"
    needs_probe = True

    def __init__(self, schedule: Every, *, output_logits: bool = True, chunk: int = 8) -> None:
        super().__init__(schedule)
        if not isinstance(output_logits, bool):
            raise ValueError(f"output_logits must be True or False, got {output_logits!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
        self.output_logits = output_logits
        self.chunk = chunk

    def setup(self, model: nn.Module) -> str | None:
        if not attention_modules(model):
            return ("the model has no supported attention module (nn.MultiheadAttention, "
                    "nn.TransformerEncoderLayer, Hugging Face GPT-2 or LLaMA-style attention)")
        return None

    def run(self, ctx: Context) -> Measurement:
        if ctx.forward is None:
            raise ValueError("the attention family needs ctx.forward to run the probe batch")
        model = ctx.model
        with inference(model):
            readings, out = read_attention(model, lambda: ctx.forward(model, ctx.probe_batch),
                                           chunk=self.chunk)
        m = Measurement()
        for layer, r in readings.items():
            if isinstance(r, Exception):
                m.errors.append(ValueError(f"attention, layer {layer!r}: {r}"))
                continue
            finite = r.entropy[~torch.isnan(r.entropy)]
            seen = r.max_logit[~torch.isnan(r.max_logit)]  # NaN: a head with no allowed key
            m.metrics[metric_key("attention", layer, "max_logit")] = (
                float(seen.max()) if seen.numel() else math.nan)
            m.metrics[metric_key("attention", layer, "entropy")] = (
                float(finite.mean()) if finite.numel() else math.nan)
            m.metrics[metric_key("attention", layer, "entropy_min")] = (
                float(finite.min()) if finite.numel() else math.nan)
        if self.output_logits:
            try:
                for s, v in output_logit_signals(output_logits_of(out)).items():
                    m.metrics[metric_key("output_logits", summary=s)] = v
            except ValueError as err:
                m.errors.append(err)
        return m
