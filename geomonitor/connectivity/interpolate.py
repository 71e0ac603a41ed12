"""Loss barrier along the straight line between two parameter vectors.

Definitions. For parameter vectors theta_a, theta_b of one architecture,
theta(alpha) = (1 - alpha) theta_a + alpha theta_b and L(alpha) = L(theta(alpha)) on an even
grid of ``n_alpha`` values of alpha in [0, 1] (both ends included), two barriers are in use,
chosen by ``definition``:

* ``"chord"`` (the default; Entezari et al. 2022, Ainsworth et al. 2023): the largest rise
  above the chord between the endpoints,

      B_chord = max_alpha [ L(alpha) - ((1 - alpha) L(0) + alpha L(1)) ];

* ``"frankle"`` (Frankle et al. 2020, "instability"): the peak minus the endpoints' mean,

      B_frankle = max_alpha L(alpha) - (L(0) + L(1)) / 2.

Both are >= 0 (alpha = 0 and 1 are on the grid) and equal when L(0) = L(1); they differ when
the endpoints' losses differ: a monotone segment from L(0) = 0 to L(1) = 1 has B_chord = 0 (a
straight line) and B_frankle = 0.5 (the higher endpoint above the mean), and a convex loss has
B_chord = 0. ``Barrier.alpha`` is the alpha of the maximum of the bracket (chord) or of L
(frankle), the first one on ties. Entezari et al. use the loss, Frankle et al. the error:
when ``loss_fn`` returns a ``(loss, error)`` pair the error barrier is computed the same way,
with the same definition.

References: R. Entezari, H. Sedghi, O. Saukh, B. Neyshabur, "The Role of Permutation
Invariance in Linear Mode Connectivity of Neural Networks", ICLR 2022; S. K. Ainsworth,
J. Hayase, S. Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR
2023; J. Frankle,
G. K. Dziugaite, D. M. Roy, M. Carbin, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis", ICML 2020; K. Jordan, H. Sedghi, O. Saukh, R. Entezari, B. Neyshabur, "REPAIR:
REnormalizing Permuted Activations for Interpolation Repair", ICLR 2023.

What is interpolated: every floating-point entry of the state dicts (parameters and float
buffers such as BatchNorm running statistics), in float32 at least (fp16/bf16 entries are
interpolated in float32 and cast back). Non-float buffers (``num_batches_tracked``, integer
masks) are not interpolated: the copy keeps ``state_a``'s value.

BatchNorm. Interpolated networks lose activation variance, so their interpolated running
statistics are wrong (Jordan et al. 2023). With ``reset_bn=True`` (default) the statistics
are recomputed at every alpha, also at the two ends: the BatchNorm layers' running
statistics are reset and ``loss_fn`` is called once with only the BatchNorm layers in train
mode and ``momentum=None`` (a cumulative average), i.e. on the batch(es) ``loss_fn`` itself
evaluates; then the loss is evaluated in eval mode. ``reset_bn=False`` evaluates the
interpolated running statistics as they are. Models without BatchNorm are unaffected.

Isolation: everything runs on a copy of ``model`` (:func:`geomonitor._copy.working_copy`: a
``copy.deepcopy`` that keeps references the copy would drop, such as a LightningModule's
trainer) in eval mode (dropout off),
under ``torch.no_grad`` and with the torch / numpy / Python RNG states restored afterwards;
the user's model, its buffers and the RNG streams are left as they were.

Cost: one deep copy of the model (one model's memory on its device) and ``n_alpha`` calls of
``loss_fn`` (``2 n_alpha`` with BatchNorm and ``reset_bn``), plus the interpolation,
O(number of parameters) per alpha.

Failure modes: state dicts whose keys or shapes differ from the model's, or with an entry
of another kind than the model's (an integer or bool entry where the model's is
floating-point, which would be copied instead of interpolated, or the reverse), ``n_alpha < 2``,
an unknown ``definition``, a
``loss_fn`` that returns something else than a scalar or a ``(loss, error)`` pair, or a
non-finite loss (``ValueError`` naming alpha) raise; nothing is returned half-computed.

Example:
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> def loss_fn(m):
    ...     return (m.weight.square().sum() - 1) ** 2      # minima at w = -1 and w = 1
    >>> b = loss_barrier(model, {"weight": -torch.ones(1, 1)}, {"weight": torch.ones(1, 1)}, loss_fn)
    >>> b.barrier, b.alpha                                  # (1.0, 0.5)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from geomonitor._checks import positive_int
from geomonitor._copy import working_copy
from geomonitor.sharpness.isolation import preserved_rng

__all__ = ["DEFINITIONS", "Barrier", "barrier_of", "check_definition", "interpolate_state",
           "loss_barrier", "state_of"]

_BN = (nn.modules.batchnorm._BatchNorm,)


@dataclass(frozen=True)
class Barrier:
    """The result of :func:`loss_barrier`.

    Attributes:
        barrier: the loss barrier (>= 0) by ``definition`` (see the module docstring).
        alpha: the alpha of its maximum (the first one on ties).
        alphas: the grid, ``n_alpha`` floats from 0 to 1.
        losses: the loss at each alpha.
        error_barrier, error_alpha, errors: the same for the error when ``loss_fn`` returns
            ``(loss, error)``, else ``None``.
        definition: ``"chord"`` or ``"frankle"``.
    """

    barrier: float
    alpha: float
    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    error_barrier: float | None = None
    error_alpha: float | None = None
    errors: tuple[float, ...] | None = None
    definition: str = "chord"


def state_of(x: nn.Module | Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``x.state_dict()`` for a module, ``dict(x)`` for a mapping of tensors (``TypeError``
    otherwise)."""
    if isinstance(x, nn.Module):
        return dict(x.state_dict())
    if isinstance(x, Mapping) and all(isinstance(v, torch.Tensor) for v in x.values()):
        return dict(x)
    raise TypeError(f"{name} must be an nn.Module or a state dict (str -> Tensor), got "
                    f"{type(x).__name__}")


def _check_states(ref: Mapping[str, torch.Tensor], a: Mapping[str, torch.Tensor],
                  b: Mapping[str, torch.Tensor]) -> None:
    for name, st in (("state_a", a), ("state_b", b)):
        missing, extra = sorted(set(ref) - set(st)), sorted(set(st) - set(ref))
        if missing or extra:
            raise ValueError(f"{name} does not match the model's state dict: missing keys "
                             f"{missing[:5]}, unexpected keys {extra[:5]}")
        for k, v in ref.items():
            if tuple(st[k].shape) != tuple(v.shape):
                raise ValueError(f"{name}[{k!r}] has shape {tuple(st[k].shape)}, the model's "
                                 f"has {tuple(v.shape)}")
            if _kind(st[k]) != _kind(v):
                raise ValueError(f"{name}[{k!r}] has dtype {st[k].dtype}, the model's has {v.dtype}: "
                                 f"{_a(_kind(v))} entry is needed ({_a(_kind(st[k]))} one would not "
                                 "be interpolated)")


def _kind(t: torch.Tensor) -> str:
    """What interpolation does with an entry: 'floating-point' and 'complex' ones are
    interpolated, 'integer or bool' ones are copied from ``state_a``."""
    return "complex" if t.is_complex() else "floating-point" if t.is_floating_point() else "integer or bool"


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def interpolate_state(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) state_a + alpha state_b for float entries (in float32 at least, cast back to
    the entry's dtype); non-float entries are ``state_a``'s. Keys must match, and each entry
    of ``state_b`` must be of the kind of ``state_a``'s (float, complex, or integer/bool):
    ``ValueError`` otherwise."""
    missing, extra = sorted(set(state_a) - set(state_b)), sorted(set(state_b) - set(state_a))
    if missing or extra:
        raise ValueError(f"state_b does not match state_a: missing keys {missing[:5]}, "
                         f"unexpected keys {extra[:5]}")
    out = {}
    for k, a in state_a.items():
        b = state_b[k]
        if _kind(a) != _kind(b):
            raise ValueError(f"state_b[{k!r}] has dtype {b.dtype}, state_a's has {a.dtype}: "
                             f"{_a(_kind(a))} entry is needed")
        if a.is_floating_point() or a.is_complex():
            work = torch.promote_types(a.dtype, torch.float32)
            b = b.to(a.device)
            v = a.to(work) * (1.0 - alpha) + b.to(work) * alpha
            out[k] = v.to(a.dtype)
        else:
            out[k] = a
    return out


def _pairs(work: nn.Module, sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor]
           ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(target tensor of the copy, a, b) per float entry, a and b in float32 at least on the
    target's device; non-float entries get ``sa``'s value once."""
    pairs = []
    for k, target in work.state_dict(keep_vars=True).items():
        target = target.detach()
        a = sa[k]
        if a.is_floating_point() or a.is_complex():
            work_dtype = torch.promote_types(a.dtype, torch.float32)
            pairs.append((target, a.to(target.device, work_dtype), sb[k].to(target.device, work_dtype)))
        else:
            target.copy_(a)
    return pairs


def _as_pair(value: Any, alpha: float) -> tuple[float, float | None]:
    def scalar(v: Any, what: str) -> float:
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar {what}, got a tensor of shape "
                                 f"{tuple(v.shape)}")
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"loss_fn must return a scalar loss or a (loss, error) pair, got "
                            f"{type(v).__name__} for the {what}")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"loss_fn returned a non-finite {what} ({v}) at alpha={alpha:g}")
        return v

    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise TypeError(f"loss_fn must return a scalar loss or a (loss, error) pair, got a "
                            f"sequence of length {len(value)}")
        return scalar(value[0], "loss"), scalar(value[1], "error")
    return scalar(value, "loss"), None


def _recompute_bn(model: nn.Module, bns: list[nn.Module], loss_fn: Callable[[nn.Module], Any]) -> None:
    saved = [(m, m.momentum) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes of loss_fn
            m.train()
        loss_fn(model)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.eval()


DEFINITIONS = ("chord", "frankle")


def check_definition(definition: Any) -> str:
    """``definition`` if it is ``"chord"`` or ``"frankle"`` (``ValueError`` otherwise)."""
    if not isinstance(definition, str) or definition not in DEFINITIONS:
        raise ValueError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
    return definition


def barrier_of(alphas: list[float], values: list[float], definition: str = "chord"
               ) -> tuple[float, float]:
    """(barrier, alpha of its maximum) of the curve ``values`` on ``alphas`` (first and last at
    alpha = 0 and 1) by ``definition`` (see the module docstring); first maximum on ties."""
    a0, a1 = values[0], values[-1]
    if check_definition(definition) == "chord":
        gaps = [v - ((1 - t) * a0 + t * a1) for t, v in zip(alphas, values)]
    else:
        gaps = [v - 0.5 * (a0 + a1) for v in values]
    i = max(range(len(gaps)), key=lambda j: (gaps[j], -j))
    return gaps[i], alphas[i]


def loss_barrier(model: nn.Module, state_a: nn.Module | Mapping[str, torch.Tensor],
                 state_b: nn.Module | Mapping[str, torch.Tensor],
                 loss_fn: Callable[[nn.Module], Any], *, n_alpha: int = 11,
                 reset_bn: bool = True, definition: str = "chord") -> Barrier:
    """Loss (and error) barrier between two parameter sets of ``model``'s architecture.

    Args:
        model: the architecture; it is deep-copied, never modified.
        state_a, state_b: state dicts (or modules whose state dicts are used) with the
            model's keys and shapes, floating-point where the model's entry is (any float
            dtype), integer/bool where it is; on any device.
        loss_fn: ``loss_fn(m) -> loss`` or ``-> (loss, error)`` evaluated on the copy ``m``
            (a scalar tensor or float each); called in eval mode under ``torch.no_grad``.
        n_alpha: number of grid points (>= 2), alpha = 0, 1/(n-1), ..., 1.
        reset_bn: recompute BatchNorm statistics at each alpha (see the module docstring).
        definition: ``"chord"`` (default): max of L(alpha) minus the chord
            (1 - alpha) L(0) + alpha L(1); ``"frankle"``: max of L(alpha) minus
            (L(0) + L(1)) / 2 (Frankle et al. 2020). The same for the error.

    Returns:
        A :class:`Barrier`.

    Raises:
        ValueError / TypeError: see the module docstring.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    n_alpha = positive_int("n_alpha", n_alpha)
    if n_alpha < 2:
        raise ValueError(f"n_alpha must be an int >= 2 (both ends of the segment), got {n_alpha}")
    if not isinstance(reset_bn, bool):
        raise TypeError(f"reset_bn must be a bool, got {reset_bn!r}")
    check_definition(definition)
    sa, sb = state_of(state_a, "state_a"), state_of(state_b, "state_b")
    _check_states(model.state_dict(), sa, sb)
    alphas = [i / (n_alpha - 1) for i in range(n_alpha)]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    losses: list[float] = []
    errors: list[float | None] = []
    with preserved_rng(devices), torch.no_grad():
        work = working_copy(model).eval()
        bns = [m for m in work.modules() if isinstance(m, _BN) and m.track_running_stats] if reset_bn else []
        pairs = _pairs(work, sa, sb)
        for t in alphas:
            for target, a, b in pairs:  # (1 - t) a + t b, written into the copy's own tensors
                target.copy_(a * (1.0 - t) + b * t)
            if bns:
                _recompute_bn(work, bns, loss_fn)
            loss, err = _as_pair(loss_fn(work), t)
            losses.append(loss)
            errors.append(err)
        del work
    b, a = barrier_of(alphas, losses, definition)
    if all(e is not None for e in errors):
        errs = [float(e) for e in errors]  # type: ignore[arg-type]
        eb, ea = barrier_of(alphas, errs, definition)
        return Barrier(b, a, tuple(alphas), tuple(losses), eb, ea, tuple(errs), definition)
    if any(e is not None for e in errors):
        raise TypeError("loss_fn returned a (loss, error) pair at some alphas and a bare loss at "
                        "others")
    return Barrier(b, a, tuple(alphas), tuple(losses), definition=definition)
