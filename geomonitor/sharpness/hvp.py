"""Hessian-vector products by double backward, on the flat parameter vector.

Definition: for a scalar loss :math:`L(\\theta)` with :math:`\\theta \\in \\mathbb{R}^P` the
concatenation of the measured parameters, the product with the Hessian is

.. math:: H v = \\nabla_\\theta \\big( \\nabla_\\theta L(\\theta)^\\top v \\big),

computed by differentiating the gradient a second time (Pearlmutter 1994, "Fast exact
multiplication by the Hessian", Neural Computation 6(1)). The forward pass and the first
backward (with ``create_graph=True``) run once, when the operator is built; each product
then costs one extra backward through the retained gradient graph.

Cost: one forward + one backward at construction, then one double backward per product
(roughly 2-3 backward passes of compute). Memory: the autograd graph of the gradient is kept
alive as long as the operator is; a vector is O(P).

Failure modes (all ``ValueError`` at construction): no parameter requires grad; the loss is
not a finite scalar; the loss does not depend on the parameters (every gradient is None, or
the gradient is identically zero and constant). A loss that is *linear* in the parameters has
a zero Hessian: the operator then returns zeros without calling autograd (documented, not an
error).

Example::

    op = HVPOperator(lambda: F.mse_loss(model(x), y), list(model.parameters()))
    hv = op(torch.randn(op.dim))
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["HVPOperator", "checked_loss", "flat_dtype", "flat_grads", "trainable"]


def trainable(params: Sequence[torch.Tensor] | torch.nn.Module, *, name: str = "params") -> list[torch.Tensor]:
    """The tensors of ``params`` that require grad (a module gives its ``parameters()``).

    Raises:
        ValueError: if none requires grad.
    """
    if isinstance(params, torch.nn.Module):
        params = list(params.parameters())
    if isinstance(params, torch.Tensor):
        params = [params]
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"{name}[{i}] is a {type(p).__name__}; expected torch tensors")
    kept = [p for p in params if p.requires_grad]
    if not kept:
        raise ValueError(
            f"{name} has no tensor that requires grad ({len(params)} given); "
            "the Hessian is taken with respect to tensors with requires_grad=True"
        )
    return kept


def checked_loss(loss: object) -> torch.Tensor:
    """``loss`` as a 0-d tensor, or ``ValueError``: not a scalar tensor, not finite, or not
    depending on any parameter (it does not require grad)."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor; got {shape}")
    loss = loss.reshape(())
    if not torch.isfinite(loss.detach()).item():
        raise ValueError(f"loss_fn returned a non-finite loss ({loss.item()}); the Hessian is undefined")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on params (it does not require grad)")
    return loss


def flat_grads(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor],
               dtype: torch.dtype) -> torch.Tensor:
    """``grads`` (one per parameter, ``None`` for an unused one: zeros) as one flat (P,)
    vector of ``dtype`` on the first parameter's device."""
    return torch.cat([torch.zeros(p.numel(), device=params[0].device, dtype=dtype) if g is None
                      else g.reshape(-1).to(dtype) for g, p in zip(grads, params)])


def flat_dtype(params: Sequence[torch.Tensor]) -> torch.dtype:
    """The dtype of flat vectors for ``params``: float64 if any is float64, else float32."""
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


class HVPOperator:
    """The Hessian of ``loss_fn()`` w.r.t. ``params`` as a linear operator on flat vectors.

    Args:
        loss_fn: zero-argument callable that recomputes the scalar loss (called once here).
        params: tensors requiring grad (others are excluded; none left: ``ValueError``).

    Attributes:
        dim: P, the total number of measured scalars.
        loss: the loss value (a detached 0-d tensor).
        n_hvp: the number of products computed so far.
        device, dtype: those of the flat vectors (dtype from :func:`flat_dtype`).
    """

    def __init__(self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]):
        self.params = trainable(params)
        self.device = self.params[0].device
        self.dtype = flat_dtype(self.params)
        self.dim = sum(p.numel() for p in self.params)
        self.n_hvp = 0
        with torch.enable_grad():
            loss = checked_loss(loss_fn())
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError("the loss does not depend on params (every gradient is None)")
        self.loss = loss.detach()
        self._grad = flat_grads(grads, self.params, self.dtype)
        if not torch.isfinite(self._grad.detach()).all().item():
            raise ValueError("the gradient of the loss has non-finite entries; the Hessian is undefined")
        self._linear = not self._grad.requires_grad
        if self._linear and not bool(self._grad.detach().any().item()):
            raise ValueError("the loss does not depend on params (its gradient is identically zero)")
        self.grad = self._grad.detach()
        self._released = False

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector ``v`` of shape (P,); returns shape (P,) in ``self.dtype``."""
        if v.shape != (self.dim,):
            raise ValueError(f"v must have shape ({self.dim},); got {tuple(v.shape)}")
        if self._released:
            raise RuntimeError("this HVPOperator was released; build a new one")
        self.n_hvp += 1
        if self._linear:
            return torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        v = v.to(device=self.device, dtype=self.dtype)
        with torch.enable_grad():
            hv = torch.autograd.grad(self._grad, self.params, grad_outputs=v, retain_graph=True, allow_unused=True)
        out = flat_grads(hv, self.params, self.dtype)
        if not torch.isfinite(out).all().item():
            raise ValueError("a Hessian-vector product has non-finite entries (overflow in the double backward)")
        return out

    def release(self) -> None:
        """Drop the retained gradient graph (the operator is unusable afterwards)."""
        self._grad = self._grad.detach()
        self._released = True
