"""Hessian-vector products when the probe set is split across ranks and the parameters may be sharded.

Definition: the probe loss of ``n`` samples is the mean :math:`L = \\sum_r (n_r / n) L_r` of the
ranks' losses :math:`L_r` on their contiguous shares of ``n_r`` samples (:func:`probe_share`),
so :math:`H v = \\sum_r (n_r / n) H_r v`: every rank computes the product of its share, and
one collective sums them. Two layouts:

* **replicated** (DDP, or any process group whose ranks hold the whole model): the vectors
  are the full (P,) parameter vector on every rank; a product is the local one (exact or
  finite differences, :mod:`.hvp`, :mod:`.fd_hvp`) on the rank's share, weighted by
  ``n_r / n`` and summed with one ``all_reduce``; Lanczos runs identically on every rank.
  A rank's cost per product falls as 1/W (its share) plus one all-reduce of P entries.
* **sharded** (FSDP2, ``torch.distributed.fsdp.fully_shard``: the parameters are DTensors):
  the vectors are the concatenated *local shards* (P/W entries on each rank); a product is a
  central difference of the gradient (:class:`ShardedFiniteDifferenceHVP`): the local shards
  are moved to :math:`\\theta \\pm \\varepsilon v` in place, and an ordinary ``backward``
  through FSDP's own collectives (all-gather in the forward, reduce-scatter of the mean over
  ranks in the backward) leaves the local shard of the gradient in ``.grad``; the loss of
  rank ``r`` is scaled by ``W n_r / n`` so that FSDP's mean is the probe mean. Lanczos'
  inner products are all-reduced (:func:`geomonitor.sharpness.lanczos.lanczos_top`'s
  ``allreduce``); the whole model is never gathered on one rank. The double backward does
  not run through FSDP's collectives, so ``hvp="exact"`` is refused there (``ValueError``).

Memory per rank (sharded): the saved shards (P/W), two gradient shards (2 P/W) and the
Lanczos basis (``max_basis`` x P/W; max(30, 3k) vectors) -- nothing of size P. Replicated:
as one process (:mod:`.spectrum`), plus one P-vector for the all-reduce.

Warm start and checkpoints (sharded): the eigenvectors kept between measurements are each
rank's local parts; a checkpoint written by rank 0 alone restores rank 0's part on every
rank, which is a valid but not the previous start vector (a part of another length is
dropped and the measurement starts cold); the value is unaffected beyond the solver's
tolerance.

Failure modes (``ValueError``): fewer probe samples than ranks, parameters that are partly
DTensors and partly not, and those of :class:`~geomonitor.sharpness.fd_hvp.FiniteDifferenceHVP`.

Example::

    share = probe_share(32)                       # this rank's slice of the 32 samples
    op = ShardedFiniteDifferenceHVP(lambda: W * w_r * loss(model, x[share]), params)
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch

from geomonitor.sharpness.fd_hvp import ReplayedRNG, default_rel_step
from geomonitor.sharpness.hvp import checked_loss, flat_dtype, trainable

__all__ = ["Layout", "ShardedFiniteDifferenceHVP", "all_reduce_sum", "is_sharded", "layout",
           "local_tensor", "probe_share"]


class Layout(NamedTuple):
    """How this rank takes part in a measurement.

    ``world``: ranks in the group (1: no split); ``rank``; ``sharded``: the parameters are
    DTensor shards (FSDP2); ``share``: this rank's slice of the probe samples; ``weight``:
    ``n_r / n``."""

    world: int
    rank: int
    sharded: bool
    share: slice
    weight: float


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: ``t.to_local()`` for a DTensor (shares its storage), else ``t``."""
    return t.to_local() if is_sharded(t) else t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the default process group, in place (unchanged without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def probe_share(n: int, rank: int | None = None, world: int | None = None) -> slice:
    """The contiguous slice of ``n`` probe samples measured by ``rank`` of ``world`` (the
    default process group's when omitted): sizes differ by one at most, earlier ranks larger.

    Raises:
        ValueError: ``n < world`` (a rank would measure no sample).
    """
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    if world is None:
        world = dist.get_world_size() if ready else 1
    if rank is None:
        rank = dist.get_rank() if ready else 0
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    if n < world:
        raise ValueError(f"{n} probe samples cannot be split over {world} ranks: use a probe "
                         f"size of at least {world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def layout(params: Sequence[torch.Tensor], n: int, *, split: bool = True) -> Layout:
    """The :class:`Layout` of a measurement on ``n`` probe samples with ``params``: sharded
    when they are DTensors; split over the default process group when one with more than one
    rank is initialised and ``split`` (always for sharded parameters, whose forward is a
    collective); otherwise one rank measuring every sample.

    Raises:
        ValueError: parameters partly DTensors; fewer samples than ranks.
    """
    flags = {is_sharded(p) for p in params}
    if len(flags) > 1:
        raise ValueError("the measured parameters are partly DTensors (sharded) and partly plain "
                         "tensors; shard the whole model or none of it")
    sharded = flags == {True}
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not ready or not (split or sharded):
        return Layout(1, 0, sharded, slice(0, n), 1.0)
    world, rank = dist.get_world_size(), dist.get_rank()
    share = probe_share(n, rank, world)
    return Layout(world, rank, sharded, share, (share.stop - share.start) / n)


class ShardedFiniteDifferenceHVP:
    """Central-difference Hessian-vector products on the local shards of DTensor parameters.

    Args:
        loss_fn: zero-argument callable: this rank's loss, already scaled so that FSDP's mean
            over ranks of the gradients is the probe gradient (``W n_r / n`` times the mean
            on its share). Called twice per product, on every rank together.
        params: DTensor parameters (FSDP2), those requiring grad.
        rel_step: ``epsilon / max(1, ||theta||)`` (``||theta||`` over all ranks).

    Attributes: ``dim`` (this rank's P/W entries), ``global_dim`` (P), ``n_hvp``, ``loss``
    (probe loss: the mean of the two losses of the first product, summed over ranks and
    divided by W), ``epsilon``, ``device``, ``dtype``.
    """

    def __init__(self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                 rel_step: float | None = None) -> None:
        self.params = trainable(params)
        if not all(is_sharded(p) for p in self.params):
            raise ValueError("ShardedFiniteDifferenceHVP needs DTensor (FSDP2) parameters")
        self.loss_fn = loss_fn
        self._local = [p.to_local() for p in self.params]
        self.device = self._local[0].device
        self.dtype = flat_dtype(self._local)
        self.dim = sum(t.numel() for t in self._local)
        sizes = all_reduce_sum(torch.tensor([float(self.dim)], dtype=torch.float64))
        self.global_dim = int(sizes.item())
        self.n_hvp = 0
        self.loss: torch.Tensor | None = None
        self._theta = [t.detach().clone() for t in self._local]
        self._rng = ReplayedRNG(self.device)  # the same dropout masks for every gradient
        sq = torch.stack([t.double().pow(2).sum() for t in self._theta]).sum().reshape(1)
        norm = math.sqrt(float(all_reduce_sum(sq).item()))
        if rel_step is not None and (isinstance(rel_step, bool) or not isinstance(rel_step, (int, float))
                                     or not math.isfinite(rel_step) or rel_step <= 0):
            raise ValueError(f"rel_step must be a positive finite float or None; got {rel_step!r}")
        self.epsilon = (default_rel_step(self.dtype) if rel_step is None else float(rel_step)) * max(1.0, norm)

    def norm(self, v: torch.Tensor) -> float:
        """The global norm of the sharded vector ``v`` (one all-reduce)."""
        return math.sqrt(float(all_reduce_sum(v.double().pow(2).sum().reshape(1)).item()))

    def _grad_at(self, direction: torch.Tensor, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
        offset = 0
        for t, theta in zip(self._local, self._theta):
            n = t.numel()
            torch.add(theta, direction[offset:offset + n].view_as(t).to(t.dtype),
                      alpha=sign * self.epsilon, out=t.data)
            offset += n
        try:
            for p in self.params:
                p.grad = None
            with self._rng.replay(), torch.enable_grad():
                loss = checked_loss(self.loss_fn())
                loss.backward()  # FSDP: all-gathers, then reduce-scatters the mean gradient
            flat = torch.cat([torch.zeros(t.numel(), device=self.device, dtype=self.dtype)
                              if p.grad is None else local_tensor(p.grad).reshape(-1).to(self.dtype)
                              for p, t in zip(self.params, self._local)])
        finally:
            for t, theta in zip(self._local, self._theta):
                t.data.copy_(theta)
            for p in self.params:
                p.grad = None
        bad = torch.tensor([0.0 if torch.isfinite(flat).all().item() else 1.0], dtype=torch.float64)
        if all_reduce_sum(bad).item() > 0:
            raise ValueError("the gradient of the loss has non-finite entries; the Hessian is undefined")
        return loss.detach(), flat

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for this rank's part ``v`` (dim,) of a sharded vector; returns this rank's part."""
        if v.shape != (self.dim,):
            raise ValueError(f"v must have shape ({self.dim},); got {tuple(v.shape)}")
        if not self.params:
            raise RuntimeError("this ShardedFiniteDifferenceHVP was released; build a new one")
        v = v.to(device=self.device, dtype=self.dtype)
        norm = self.norm(v)
        self.n_hvp += 1
        if norm == 0.0:
            return torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        loss_plus, g_plus = self._grad_at(v / norm, 1.0)
        loss_minus, g_minus = self._grad_at(v / norm, -1.0)
        if self.loss is None:
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            mean = ((loss_plus + loss_minus) / 2).double().reshape(1)
            self.loss = (all_reduce_sum(mean) / world).reshape(())
        return g_plus.sub_(g_minus).mul_(norm / (2 * self.epsilon))

    def release(self) -> None:
        """Drop the saved shards (the operator is unusable afterwards)."""
        self._theta, self._local, self.params = [], [], []
