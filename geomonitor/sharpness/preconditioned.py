"""Stability thresholds of optimisers and the Adam preconditioner: where the edge of stability is.

Gradient descent with step size eta on a quadratic with curvature lambda is stable iff
lambda < 2/eta; Cohen et al. (2021), "Gradient descent on neural networks typically occurs at
the edge of stability", ICLR, show that the sharpness of a network trained by full-batch GD
rises to and hovers at this value. Their appendix gives the thresholds with momentum, which
for PyTorch's ``SGD`` (buffer ``b = beta b + (1 - dampening) g``) are

=========================  ===============================================
heavy ball                 (2 + 2 beta) / eta'
Nesterov                   (2 + 2 beta) / (eta' (1 + 2 beta))
=========================  ===============================================

with ``eta' = eta (1 - dampening)`` when beta > 0 (PyTorch ignores dampening without momentum).

Adam (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability", arXiv
2207.14484) is preconditioned gradient descent with momentum, ``theta -= eta P_t^{-1} m_t``,

.. math:: P_t = (1 - \\beta_1^t)\\, \\mathrm{diag}\\big(\\sqrt{v_t / (1 - \\beta_2^t)} + \\epsilon\\big),

and is stable on a quadratic iff the *preconditioned sharpness* ``lambda_1(P_t^{-1} H)`` is
below ``(2 + 2 beta1) / ((1 - beta1) eta)`` (38/eta for beta1 = 0.9). ``P^{-1} H`` is similar to
the symmetric ``P^{-1/2} H P^{-1/2}``, whose top eigenvalue Lanczos computes. ``v_t`` is the
optimiser's ``exp_avg_sq`` (``max_exp_avg_sq`` with ``amsgrad``) and ``t`` its ``step``. AdamW's
decoupled weight decay does not enter ``P`` and the same threshold is used; weight decay is
not added to the Hessian for any optimiser (the Hessian is that of ``loss_fn``).

``eos_ratio = sharpness / threshold``: 1.0 is at the edge of stability.

Cost: O(P) to read the state. Failure modes (``ValueError``): Adam state missing for a measured
parameter (no step taken yet), measured parameters in groups with different lr / betas.

Example::

    thr = stability_threshold(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    thr.value   # 38.0
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from geomonitor.sharpness.sharded import local_tensor

__all__ = ["Threshold", "stability_threshold", "adam_preconditioner", "ADAM_FAMILY"]

ADAM_FAMILY = (torch.optim.Adam, torch.optim.AdamW)


class Threshold(NamedTuple):
    """The sharpness at which the optimiser's linearised dynamics lose stability.

    ``value`` is None for optimisers without a known threshold; ``preconditioned`` says
    whether it applies to the preconditioned sharpness; ``rule`` says which formula was used.
    """

    value: float | None
    preconditioned: bool
    rule: str


def _group_of(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor] | None) -> dict:
    """The one param group holding ``params`` (all groups must agree on lr / betas / momentum)."""
    groups = optimizer.param_groups
    if params is not None:
        ids = {id(p) for p in params}
        groups = [g for g in groups if any(id(p) in ids for p in g["params"])] or groups
    keys = ("lr", "betas", "momentum", "nesterov", "dampening")
    first = groups[0]
    for g in groups[1:]:
        for key in keys:
            if g.get(key) != first.get(key):
                raise ValueError(
                    f"optimizer param groups disagree on {key!r} ({first.get(key)!r} vs {g.get(key)!r}); "
                    "measure each group separately (pass its params) or pass lr explicitly"
                )
    return first


def _lr(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def stability_threshold(
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    params: Sequence[torch.Tensor] | None = None,
) -> Threshold:
    """The edge-of-stability threshold for ``optimizer`` (or plain GD with ``lr``).

    Args:
        optimizer: ``torch.optim.SGD``, ``Adam`` or ``AdamW``; other optimisers give
            ``Threshold(None, False, ...)``.
        lr: step size; overrides the optimizer's lr (e.g. under a scheduler). With no
            optimizer: gradient descent, threshold 2/lr.
        params: the measured parameters (selects their param group).
    """
    if lr is not None and not (isinstance(lr, (int, float)) and lr >= 0 and lr < float("inf")):
        raise ValueError(f"lr must be a finite float >= 0; got {lr!r}")
    if lr is not None and lr == 0:  # e.g. the last step of a linear schedule: no step, no edge
        return Threshold(None, isinstance(optimizer, ADAM_FAMILY), "lr is 0: no edge of stability")
    if optimizer is None:
        if lr is None:
            return Threshold(None, False, "no optimizer or lr given")
        return Threshold(2.0 / lr, False, "gradient descent: 2/lr")
    group = _group_of(optimizer, params)
    eta = float(lr) if lr is not None else _lr(group["lr"])
    if eta < 0:
        raise ValueError(f"the optimizer's lr must be >= 0; got {eta!r}")
    if eta == 0:
        return Threshold(None, isinstance(optimizer, ADAM_FAMILY), "lr is 0: no edge of stability")
    if isinstance(optimizer, ADAM_FAMILY):
        b1 = float(group["betas"][0])
        return Threshold((2 + 2 * b1) / ((1 - b1) * eta), True, "Adam: (2+2*beta1)/((1-beta1)*lr)")
    if isinstance(optimizer, torch.optim.SGD):
        beta = float(group.get("momentum", 0.0))
        if beta == 0.0:
            return Threshold(2.0 / eta, False, "SGD: 2/lr")
        eff = eta * (1.0 - float(group.get("dampening", 0.0)))
        if group.get("nesterov", False):
            return Threshold((2 + 2 * beta) / (eff * (1 + 2 * beta)), False, "SGD Nesterov: (2+2b)/(lr(1-d)(1+2b))")
        return Threshold((2 + 2 * beta) / eff, False, "SGD heavy ball: (2+2b)/(lr(1-d))")
    return Threshold(None, False, f"no known threshold for {type(optimizer).__name__}")


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The diagonal of Adam's P_t (see module doc) for ``params``, flat, shape (P,).

    Raises:
        ValueError: optimizer not Adam/AdamW, or a parameter without state (no step yet).
    """
    if not isinstance(optimizer, ADAM_FAMILY):
        raise ValueError(f"optimizer must be torch.optim.Adam or AdamW; got {type(optimizer).__name__}")
    owner = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if id(p) not in owner or "exp_avg_sq" not in state:
            raise ValueError(
                f"params[{i}] has no Adam state (exp_avg_sq); the preconditioner exists after the first optimizer.step()"
            )
        g = owner[id(p)]
        b1, b2 = (float(b) for b in g["betas"])
        t = float(state["step"])
        v = state["max_exp_avg_sq"] if g.get("amsgrad", False) else state["exp_avg_sq"]
        v = local_tensor(v)  # FSDP2: this rank's shard, like the parameter's
        diag = (1 - b1**t) * ((v.detach().double() / (1 - b2**t)).sqrt() + float(g["eps"]))
        parts.append(diag.reshape(-1))
    return torch.cat(parts)
