"""Transformer instability signals: attention-logit growth, attention-entropy collapse and
output-logit divergence (Wortsman et al. 2023; Zhai et al. 2023; Dehghani et al. 2023).

* :func:`attention_signals`, :func:`output_logit_signals` -- the definitions, on tensors
  (:mod:`.signals`);
* :func:`attention_modules`, :func:`queries_keys`, :func:`read_attention` -- queries and keys
  recomputed from the captured inputs of ``nn.MultiheadAttention``,
  ``nn.TransformerEncoderLayer`` and Hugging Face GPT-2 / LLaMA-style attention
  (:mod:`.capture`).

The monitor family is :class:`geomonitor.monitor.families.AttentionFamily`; the alert rules
are in :mod:`geomonitor.monitor.attention_alerts`.
"""
from geomonitor.attention.capture import attention_modules, queries_keys, read_attention
from geomonitor.attention.signals import (OUTPUT_SUMMARIES, AttentionSignals, attention_signals,
                                          output_logit_signals)

__all__ = ["AttentionSignals", "attention_signals", "output_logit_signals", "OUTPUT_SUMMARIES",
           "attention_modules", "queries_keys", "read_attention"]
