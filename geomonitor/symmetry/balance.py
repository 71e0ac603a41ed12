"""Rescaling symmetry: the per-unit balance between a hidden unit's incoming and outgoing weights.

For a hidden unit j between two layers, ``h_j = act(w_in[j] . x + b_in[j])`` feeding
``y = w_out[:, j] h_j + ...``, with a positively homogeneous activation (ReLU, leaky ReLU,
identity, max-pooling), scaling the incoming weights and bias by a > 0 and the outgoing ones
by 1/a leaves the network unchanged. Its conserved quantity (Du, Hu & Lee, "Algorithmic
regularization in learning deep homogeneous models: layers are automatically balanced",
NeurIPS 2018, Theorem 2.1) is the per-unit **imbalance**

    D_j = ||w_in[j, :]||^2 + b_in[j]^2 - ||w_out[:, j]||^2.

Under gradient flow dD_j/dt = 0. Under SGD with step eta and coupled weight decay lambda
(``w <- (1 - eta lambda) w - eta g``), since ``w_in[j].g_in[j] + b_in[j] g_b[j] =
w_out[:, j].g_out[:, j]`` for a homogeneous unit, it obeys exactly

    D_j(t+1) = (1 - eta lambda)^2 D_j(t) + eta^2 (||g_in[j]||^2 + g_b[j]^2 - ||g_out[:, j]||^2),

so weight decay drives the imbalance to zero geometrically, at rate (1 - eta lambda)^2 per
step up to the eta^2 term: the restoration of balance (Ziyin, Xu, Poggio & Chuang, arXiv
2502.05300, 2025). The **layer-level** form is the sum over units,
``||W_in||_F^2 + ||b_in||^2 - ||W_out||_F^2`` (the negative of the ``||W_{l+1}||_F^2 -
||W_l||_F^2`` of Du et al. for a bias-free pair; the sign here follows the per-unit one).

Convolutions: the unit is a channel. ``w_in`` may be (hidden, *rest) (a conv kernel (C, in,
kh, kw) is one flattened row per output channel) and ``w_out`` (out, hidden, *rest) (a conv
kernel (out, C, kh, kw), or a linear layer after a flatten reshaped to (out, C, H*W)); every
entry that touches unit j is counted.

Cost: O(number of weights) on the tensors' device; float16/bfloat16 computed in float32.

Example:
    >>> w1, w2 = torch.randn(8, 4), torch.randn(3, 8)
    >>> rescaling_imbalance(w1, w2).shape
    torch.Size([8])
"""
from __future__ import annotations

from typing import Any

import torch

from geomonitor.symmetry._linalg import as_real

__all__ = ["layer_imbalance", "rescaling_imbalance", "relative_imbalance"]


def _in_out_norms(w_in: Any, w_out: Any, b_in: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_real(w_in, "w_in", min_dim=1)
    c = as_real(w_out, "w_out", min_dim=2)
    hidden = a.shape[0]
    if c.shape[1] != hidden:
        raise ValueError(f"w_out must have the hidden units on dim 1: w_in has {hidden} units "
                         f"(shape {tuple(a.shape)}), w_out has shape {tuple(c.shape)}")
    dtype = torch.promote_types(a.dtype, c.dtype)
    a2 = a.to(dtype).reshape(hidden, -1).pow(2).sum(dim=1)
    if b_in is not None:
        b = as_real(b_in, "b_in", min_dim=1, max_dim=1)
        if b.shape[0] != hidden:
            raise ValueError(f"b_in must have shape ({hidden},) like w_in's units, got shape "
                             f"{tuple(b.shape)}")
        a2 = a2 + b.to(device=a2.device, dtype=dtype).pow(2)
    c2 = c.to(dtype).transpose(0, 1).reshape(hidden, -1).pow(2).sum(dim=1).to(a2.device)
    return a2, c2


def rescaling_imbalance(w_in: Any, w_out: Any, b_in: Any | None = None) -> torch.Tensor:
    """Per-unit imbalance ``||w_in[j]||^2 + b_in[j]^2 - ||w_out[:, j]||^2`` (Du et al. 2018).

    Args:
        w_in: (hidden, fan_in, ...) incoming weights, one row per hidden unit (``nn.Linear``
            and ``nn.Conv*d`` weights as stored; a ``transformers`` ``Conv1D`` weight must be
            transposed first).
        w_out: (out, hidden, ...) outgoing weights, hidden units on dim 1.
        b_in: (hidden,) bias of the incoming layer, or None.

    Returns:
        (hidden,) tensor, float32 (float64 if an input is float64), on ``w_in``'s device.

    Raises:
        ValueError: mismatched unit counts, NaN/Inf, complex, zero-size or wrongly shaped input.
    """
    a2, c2 = _in_out_norms(w_in, w_out, b_in)
    return a2 - c2


def layer_imbalance(w_in: Any, w_out: Any, b_in: Any | None = None) -> float:
    """Layer-level imbalance ``||W_in||_F^2 + ||b_in||^2 - ||W_out||_F^2`` (sum over units).

    Same arguments and errors as :func:`rescaling_imbalance`; returns a Python float.
    """
    a2, c2 = _in_out_norms(w_in, w_out, b_in)
    return float(a2.to(torch.float64).sum() - c2.to(torch.float64).sum())


def relative_imbalance(w_in: Any, w_out: Any, b_in: Any | None = None) -> float:
    """``||D||_2 / (||W_in||_F^2 + ||b_in||^2 + ||W_out||_F^2)``, a scale-free imbalance in [0, 1].

    The denominator bounds ``sum_j |D_j| >= ||D||_2``, so the value is 0 for a balanced pair
    and 1 only when one side is zero for a single unit carrying all the weight. A pair whose
    weights are all zero returns 0.0 (balanced). Same arguments and errors as
    :func:`rescaling_imbalance`.
    """
    a2, c2 = _in_out_norms(w_in, w_out, b_in)
    a2, c2 = a2.to(torch.float64), c2.to(torch.float64)
    total = float(a2.sum() + c2.sum())
    return 0.0 if total == 0.0 else float((a2 - c2).norm()) / total
