"""Hessian trace by Hutchinson's estimator with Rademacher probes.

Definition: for z with i.i.d. entries +-1, :math:`E[z^\\top H z] = \\operatorname{tr} H`
(Hutchinson 1989, "A stochastic estimator of the trace of the influence matrix for
Laplacian smoothing splines", Comm. Statist. Simul. Comput. 18(3); Rademacher probes have
the smallest variance among i.i.d. probes, Avron & Toledo 2011, J. ACM 58(2)). The estimate
is the sample mean of ``n_samples`` quadratic forms and its standard error is the sample
standard deviation over sqrt(n_samples).

Cost: ``n_samples`` Hessian-vector products (one forward + backward first). Memory O(P).
Failure modes: as :func:`geomonitor.sharpness.spectrum.hessian_eigenvalues`; ``n_samples`` < 2
raises (no standard error).

Example::

    tr = hessian_trace(lambda: loss(model(x), y), model.parameters(), n_samples=100,
                       generator=torch.Generator().manual_seed(0))
    tr.estimate, tr.stderr
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch

from geomonitor.sharpness.hvp import HVPOperator
from geomonitor.sharpness.isolation import measurement_mode

__all__ = ["HessianTrace", "hessian_trace"]


class HessianTrace(NamedTuple):
    """Hutchinson estimate of tr(H), its standard error, and the products used."""

    estimate: float
    stderr: float
    n_hvp: int


def hessian_trace(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor] | torch.nn.Module,
    *,
    n_samples: int = 100,
    generator: torch.Generator | None = None,
) -> HessianTrace:
    """Estimate tr(H) of ``loss_fn()`` w.r.t. ``params`` with ``n_samples`` Rademacher probes.

    Args:
        loss_fn: zero-argument callable recomputing the scalar loss (called once).
        params: tensors (or a module); those not requiring grad are excluded.
        n_samples: number of probes, >= 2.
        generator: source of the probes (default: a fresh default-seeded generator).

    Returns:
        :class:`HessianTrace` (floats).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2 (for a standard error); got {n_samples!r}")
    if generator is None:
        generator = torch.Generator()
    with measurement_mode():
        op = HVPOperator(loss_fn, params)
        values = torch.empty(n_samples, dtype=torch.float64)
        for i in range(n_samples):
            z = torch.randint(0, 2, (op.dim,), generator=generator, device=generator.device)
            z = (2 * z - 1).to(device=op.device, dtype=op.dtype)
            values[i] = float(z @ op(z))
        op.release()
    return HessianTrace(float(values.mean()), float(values.std() / math.sqrt(n_samples)), op.n_hvp)
