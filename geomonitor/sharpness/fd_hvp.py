"""Hessian-vector products by central finite differences of the gradient: no double backward.

Definition: for a scalar loss :math:`L(\\theta)` and a direction :math:`v \\ne 0`, with
:math:`\\hat v = v / \\lVert v \\rVert`,

.. math:: H v \\approx \\lVert v \\rVert \\,
          \\frac{\\nabla L(\\theta + \\varepsilon \\hat v) - \\nabla L(\\theta - \\varepsilon \\hat v)}{2 \\varepsilon},

whose error is :math:`O(\\varepsilon^2)` (the third derivative) plus the gradients' rounding
divided by :math:`\\varepsilon` (Pearlmutter 1994, "Fast exact multiplication by the Hessian",
Neural Computation 6(1), section 2; the same central difference as Hessian-free optimisation,
Martens 2010, ICML). The step is :math:`\\varepsilon = \\texttt{rel\\_step} \\cdot
\\max(1, \\lVert \\theta \\rVert)`, with ``rel_step`` = :math:`u^{1/3}/100` by default (``u`` the
unit roundoff of the parameters' dtype: 3.9e-5 in float32, 4.8e-8 in float64), the scale
that balances the two errors: on a 0.83M-parameter GELU transformer the top eigenvalue
matched the double-backward one to 1e-5 relative (``benchmarks/bench_defaults.py``).

The operator is symmetric up to that error, so Lanczos applies. Each product is two ordinary
forward + backward passes (about two training steps on the same batch); nothing is kept
between products but a copy of the parameters, so fused and flash attention kernels, which
have no double backward, are allowed.

Piecewise-linear activations (ReLU, max-pooling): the difference quotient crosses the kinks
that lie within ``epsilon`` and measures the curvature of the loss averaged at that scale,
which contains the kinks' contribution; the double backward measures the almost-everywhere
Hessian, which does not. The two then differ (by 8% for the Adam-preconditioned sharpness of
a ReLU transformer, by < 0.1% for its raw sharpness, in ``benchmarks/bench_defaults.py``);
:func:`geomonitor.sharpness.spectrum.choose_hvp` picks the exact product for such models.

Randomness: every gradient is taken from the random state the operator was built with, so
a dropout that is not an ``nn.Dropout`` module (the attention dropout of Hugging Face models,
``F.dropout``) draws the same masks at ``theta + epsilon v`` and ``theta - epsilon v``; a
fresh mask per evaluation would swamp the difference (a tiny GPT-2 with attention dropout
read 1.3e3 against the exact 1.9e2 before this).

Side effects: the parameters are written in place through ``.data`` (their autograd version
counters do not move) and restored bit for bit from a saved copy after every product, also
when the loss raises. BatchNorm statistics, RNG streams and ``.grad`` are the caller's to
guard (:func:`geomonitor.sharpness.isolation.isolated`).

Failure modes (``ValueError``, at the first product): the loss is not a finite scalar, does
not depend on the parameters, or has non-finite gradients; ``rel_step`` not positive.

Example::

    op = FiniteDifferenceHVP(lambda: F.mse_loss(model(x), y), list(model.parameters()))
    hv = op(torch.randn(op.dim))
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch

from geomonitor.sharpness.hvp import checked_loss, flat_dtype, flat_grads, trainable


class ReplayedRNG:
    """The random streams (CPU, and ``device`` when it is a CUDA device) as they are now,
    replayed for every gradient: ``with rng.replay(): ...`` runs its body inside a fork of
    those streams set back to this state, so each gradient draws the same dropout masks and
    the caller's streams are left as they were."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = [device] if device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.gpu = [torch.cuda.get_rng_state(d) for d in self.cuda]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.cuda):
            torch.set_rng_state(self.cpu)
            for d, state in zip(self.cuda, self.gpu):
                torch.cuda.set_rng_state(state, d)
            yield

__all__ = ["FiniteDifferenceHVP", "default_rel_step"]


def default_rel_step(dtype: torch.dtype) -> float:
    """``u^(1/3) / 100`` for the unit roundoff ``u`` of ``dtype`` (3.9e-5 in float32)."""
    return (torch.finfo(dtype).eps / 2) ** (1 / 3) / 100


class FiniteDifferenceHVP:
    """The Hessian of ``loss_fn()`` w.r.t. ``params`` by central differences (module doc).

    Args:
        loss_fn: zero-argument callable recomputing the scalar loss (twice per product).
        params: tensors requiring grad (others excluded; none left: ``ValueError``).
        rel_step: ``epsilon / max(1, ||theta||)``; ``None`` for :func:`default_rel_step`.

    Attributes: ``dim`` (P), ``n_hvp`` (products so far), ``loss`` (the mean of the two
    losses of the first product: ``L(theta) + O(epsilon^2)``), ``epsilon``, ``device``,
    ``dtype`` -- as :class:`geomonitor.sharpness.hvp.HVPOperator`.
    """

    def __init__(self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                 rel_step: float | None = None) -> None:
        if rel_step is not None and (isinstance(rel_step, bool) or not isinstance(rel_step, (int, float))
                                     or not math.isfinite(rel_step) or rel_step <= 0):
            raise ValueError(f"rel_step must be a positive finite float or None; got {rel_step!r}")
        self.params = trainable(params)
        self.loss_fn = loss_fn
        self.device = self.params[0].device
        self.dtype = flat_dtype(self.params)
        self.dim = sum(p.numel() for p in self.params)
        self.n_hvp = 0
        self.loss: torch.Tensor | None = None
        self._theta = [p.detach().clone() for p in self.params]
        # every gradient is taken with the same random stream (the same dropout masks of a
        # functional dropout, e.g. in an attention kernel), so the difference sees the
        # parameters' change alone: the loss is one deterministic function of theta
        self._rng = ReplayedRNG(self.device)
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in self._theta))
        self.epsilon = (default_rel_step(self.dtype) if rel_step is None else float(rel_step)) * max(1.0, norm)

    def _grad_at(self, direction: torch.Tensor, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
        offset = 0
        for p, t in zip(self.params, self._theta):
            n = p.numel()
            step = direction[offset:offset + n].view_as(p).to(p.dtype)
            torch.add(t, step, alpha=sign * self.epsilon, out=p.data)
            offset += n
        try:
            with self._rng.replay(), torch.enable_grad():
                loss = checked_loss(self.loss_fn())
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        finally:
            for p, t in zip(self.params, self._theta):
                p.data.copy_(t)
        if all(g is None for g in grads):
            raise ValueError("the loss does not depend on params (every gradient is None)")
        flat = flat_grads(grads, self.params, self.dtype)
        if not torch.isfinite(flat).all().item():
            raise ValueError("the gradient of the loss has non-finite entries; the Hessian is undefined")
        return loss.detach(), flat

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector ``v`` of shape (P,); returns shape (P,) in ``self.dtype``."""
        if v.shape != (self.dim,):
            raise ValueError(f"v must have shape ({self.dim},); got {tuple(v.shape)}")
        if not self.params:
            raise RuntimeError("this FiniteDifferenceHVP was released; build a new one")
        v = v.to(device=self.device, dtype=self.dtype)
        norm = float(torch.linalg.vector_norm(v))
        self.n_hvp += 1
        if norm == 0.0:
            return torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        direction = v / norm
        loss_plus, g_plus = self._grad_at(direction, 1.0)
        loss_minus, g_minus = self._grad_at(direction, -1.0)
        if self.loss is None:
            self.loss = (loss_plus + loss_minus) / 2
        return g_plus.sub_(g_minus).mul_(norm / (2 * self.epsilon))

    def release(self) -> None:
        """Drop the saved copy of the parameters (the operator is unusable afterwards)."""
        self._theta = []
        self.params = []
