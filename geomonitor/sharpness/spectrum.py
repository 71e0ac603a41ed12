"""Top eigenvalues of the loss Hessian: sharpness.

Definition: the sharpness of a loss :math:`L` at parameters :math:`\\theta` is the largest
eigenvalue :math:`\\lambda_1(\\nabla^2 L(\\theta))` (largest *algebraic*: the Hessian of a
non-convex loss is indefinite, and a large negative eigenvalue is not sharpness). Cohen et
al. (2021), "Gradient descent on neural networks typically occurs at the edge of stability",
ICLR, show that full-batch gradient descent with step size eta drives it to ~2/eta.

Method: Hessian-vector products fed to thick-restart Lanczos with full reorthogonalisation
(:mod:`.lanczos`), by one of two backends (``hvp=``):

* ``"exact"``: double backward (:mod:`.hvp`; one forward + backward with the graph kept,
  then one extra backward per product, about 2.5 training steps each);
* ``"fd"``: central differences of the gradient (:mod:`.fd_hvp`; two forward + backward
  passes per product, about 2 training steps, no graph kept, any attention kernel), accurate
  to the third derivative on smooth models and seeing the kinks of piecewise-linear ones.

:func:`choose_hvp` picks ``"exact"`` for a model with a piecewise-linear activation module
(ReLU family, max-pooling, a transformer layer with ``activation="relu"``) and ``"fd"``
otherwise. Warm starting from the previous eigenvectors makes a measurement a few optimiser
steps later converge in a few products.

Cost: ``n_hvp`` <= ``max_hvp`` products; memory O(max_basis * P) for the Krylov basis
(max_basis = max(30, 3k)), plus the retained gradient graph (``"exact"``) or one copy of
the parameters (``"fd"``).

Example::

    spec = hessian_eigenvalues(lambda: F.mse_loss(model(x), y), model.parameters(), k=2)
    spec.eigenvalues   # (2,) descending; spec.eigenvectors (2, P)
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch

from geomonitor.sharpness.fd_hvp import FiniteDifferenceHVP
from geomonitor.sharpness.hvp import HVPOperator
from geomonitor.sharpness.isolation import measurement_mode
from geomonitor.sharpness.lanczos import lanczos_top
from geomonitor.sharpness.sharded import Layout, ShardedFiniteDifferenceHVP, all_reduce_sum, is_sharded

__all__ = ["HVP_BACKENDS", "HessianSpectrum", "choose_hvp", "hessian_eigenvalues"]

#: The Hessian-vector product backends (``"auto"``: :func:`choose_hvp`).
HVP_BACKENDS = ("auto", "fd", "exact")

_KINKED = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.PReLU, torch.nn.RReLU,
           torch.nn.Hardtanh, torch.nn.Threshold, torch.nn.Hardswish, torch.nn.Hardsigmoid,
           torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d, torch.nn.AdaptiveMaxPool1d,
           torch.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool3d)


def kinked_modules(model: torch.nn.Module) -> list[str]:
    """Names of the modules of ``model`` whose output is piecewise linear with kinks: the
    ReLU family and max-pooling (by type, or a class name containing ``ReLU``/``MaxPool``),
    and ``nn.TransformerEncoderLayer``/``DecoderLayer`` with a ReLU activation. A
    ``F.relu`` called inside a ``forward`` is not visible here."""
    layers = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)
    found = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if (isinstance(m, _KINKED) or "ReLU" in kind or "MaxPool" in kind
                or (isinstance(m, layers) and (m.activation is torch.nn.functional.relu
                                               or isinstance(m.activation, torch.nn.ReLU)))):
            found.append(name)
    return found


def choose_hvp(model: torch.nn.Module, hvp: str = "auto") -> str:
    """The backend for ``model``: ``hvp`` itself unless it is ``"auto"``, then ``"fd"`` for
    sharded (DTensor, FSDP2) parameters, ``"exact"`` when :func:`kinked_modules` finds one,
    else ``"fd"``.

    Raises:
        ValueError: ``hvp`` not in :data:`HVP_BACKENDS`.
    """
    if hvp not in HVP_BACKENDS:
        raise ValueError(f"hvp must be one of {HVP_BACKENDS}; got {hvp!r}")
    if hvp != "auto":
        return hvp
    if any(is_sharded(p) for p in model.parameters()):
        return "fd"  # FSDP2: the double backward does not run through its collectives
    return "exact" if kinked_modules(model) else "fd"


class HessianSpectrum(NamedTuple):
    """Result of :func:`hessian_eigenvalues`.

    Attributes:
        eigenvalues: (k,) largest algebraic eigenvalues, descending.
        eigenvectors: (k, P) tensor, orthonormal rows, in the order of ``params`` flattened
            and concatenated (only those requiring grad).
        n_hvp: Hessian-vector products used.
        converged: whether the tolerance was met within ``max_hvp``.
        reason: why not converged; empty when converged.
        loss: the loss value at which the Hessian was taken (0-d tensor).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    n_hvp: int
    converged: bool
    reason: str
    loss: torch.Tensor


def _check(k: int, tol: float, max_hvp: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a positive finite float; got {tol!r}")
    if isinstance(max_hvp, bool) or not isinstance(max_hvp, int) or max_hvp < 1:
        raise ValueError(f"max_hvp must be a positive int; got {max_hvp!r}")


def hessian_eigenvalues(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor] | torch.nn.Module,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_hvp: int = 100,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    scaling: torch.Tensor | None = None,
    hvp: str = "exact",
    min_cold: int | None = None,
    layout: Layout | None = None,
) -> HessianSpectrum:
    """The ``k`` largest eigenvalues of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Args:
        loss_fn: zero-argument callable recomputing the scalar loss (called once).
        params: tensors (or a module); those not requiring grad are excluded.
        k: number of eigenpairs, 1 <= k <= P.
        tol: relative tolerance on residual / Ritz value change (relative to the largest
            |Ritz value|), see :func:`geomonitor.sharpness.lanczos.lanczos_top`.
        max_hvp: hard limit on Hessian-vector products.
        init: warm start, (P,) or (j, P), e.g. the previous ``eigenvectors``.
        generator: for the random start vector (default: a fresh default-seeded one).
        scaling: optional positive (P,) vector ``d``; the operator is then
            ``diag(d) H diag(d)`` (preconditioned sharpness with ``d = P^{-1/2}``).
        hvp: ``"exact"`` (double backward) or ``"fd"`` (central differences); see the module
            docstring (``"auto"`` needs the model: :func:`choose_hvp`).
        min_cold: products before convergence may be declared from a random start
            (``lanczos_top``'s default when None).
        layout: the probe split across ranks (:func:`geomonitor.sharpness.sharded.layout`):
            ``loss_fn`` is then the mean loss on this rank's share, every rank calls this
            together, and the products are summed over ranks (:mod:`.sharded`); for sharded
            (FSDP2) parameters ``init``, ``scaling`` and the eigenvectors are this rank's
            local parts. ``None``: one process.

    Returns:
        :class:`HessianSpectrum`.

    Raises:
        ValueError: no parameter requires grad; k > P; non-finite loss; loss independent of
            params; bad k / tol / max_hvp / init / scaling / hvp.
    """
    _check(k, tol, max_hvp)
    if hvp not in ("fd", "exact"):
        raise ValueError(f"hvp must be 'fd' or 'exact' here; got {hvp!r}")
    split = layout is not None and (layout.world > 1 or layout.sharded)
    if split and layout.sharded and hvp != "fd":
        raise ValueError("the double backward does not run through FSDP's collectives: use "
                         "hvp='fd' (or 'auto') for sharded (DTensor) parameters")
    with measurement_mode(double_backward=hvp == "exact"):
        if split and layout.sharded:
            factor = layout.world * layout.weight  # FSDP averages the ranks' gradients
            op = ShardedFiniteDifferenceHVP(lambda: loss_fn() * factor, params)
            dim, reduce = op.global_dim, all_reduce_sum
        else:
            fn = (lambda: loss_fn() * layout.weight) if split else loss_fn
            op = HVPOperator(fn, params) if hvp == "exact" else FiniteDifferenceHVP(fn, params)
            dim, reduce = op.dim, None
        if k > dim:
            raise ValueError(f"k={k} exceeds the number of parameters P={dim}; use k <= {dim}")
        matvec = op
        if split and not layout.sharded:  # replicated: sum the ranks' weighted products
            matvec = lambda v: all_reduce_sum(op(v))  # noqa: E731
        if scaling is not None:
            d = torch.as_tensor(scaling).to(device=op.device, dtype=op.dtype)
            if d.shape != (op.dim,) or not torch.isfinite(d).all() or not bool((d > 0).all()):
                raise ValueError(f"scaling must be a positive finite vector of shape ({op.dim},); got shape {tuple(d.shape)}")
            product = matvec
            matvec = lambda v: d * product(d * v)  # noqa: E731
        res = lanczos_top(
            matvec, op.dim, k, tol=tol, max_matvec=max_hvp, init=init, generator=generator,
            device=op.device, dtype=op.dtype, min_cold=min_cold, allreduce=reduce,
        )
        loss = op.loss
        if split and not layout.sharded:
            loss = all_reduce_sum(loss.detach().double().reshape(1)).reshape(())
        op.release()
    return HessianSpectrum(res.eigenvalues, res.eigenvectors, res.n_matvec, res.converged, res.reason, loss)
