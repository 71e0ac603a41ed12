"""Instability analysis (Frankle et al. 2020) in one call: the barrier between two children
spawned from one training run at step k, for every k in a list.

Protocol (J. Frankle, G. K. Dziugaite, D. M. Roy, M. Carbin, "Linear Mode Connectivity and
the Lottery Ticket Hypothesis", ICML 2020, Section 3). A parent is trained from the given
state (step 0). At each step k of ``ks`` (k = 0 included: two children of the
initialisation), two children are spawned: deep copies of the parent's model, optimizer state
(momentum, Adam moments, ...) and learning-rate scheduler state, which then train
independently from step k to ``total_steps`` with different data orders and different noise.
The loss (and error) barrier between the two trained children is measured along the straight
line between them on the training data and on held-out data. The network is *stable* at k when
that barrier is about 0 (SGD noise after k no longer changes which linearly connected region
it ends in); Frankle et al. plot it against k and find it falls from a large value at k = 0 to
about 0 early in training on the harder tasks.

Barrier definition (``definition``, see :mod:`geomonitor.connectivity.interpolate`):
``"frankle"`` (the default here, the paper's) is ``max_alpha L(alpha) - (L(0) + L(1)) / 2``;
``"chord"`` is ``max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]``.

API for a plain PyTorch loop. The caller hands over what one training step needs and how to
draw data, and gets the whole curve back:

* ``loss_fn(model, batch) -> loss`` (a scalar tensor): one step is
  ``optimizer.zero_grad(set_to_none=True); loss_fn(model, batch).backward();
  optimizer.step(); scheduler.step()`` (the scheduler, when given, is stepped after every
  optimizer step: a per-step schedule such as ``LambdaLR`` / ``OneCycleLR`` over
  ``total_steps``).
* ``batches(generator) -> iterable of batches``: one pass over the training data in an order
  drawn from ``generator``, e.g. ``lambda g: DataLoader(ds, batch_size=64, shuffle=True,
  generator=g)``. It is called again (with the same, advanced, generator) whenever a pass ends.
* ``eval_fn(model, data) -> loss`` or ``-> (loss, error)``, evaluated on ``train_data`` and
  on ``heldout_data`` (anything ``eval_fn`` accepts: a whole-set ``(X, y)``, a list of
  batches, ...); default ``loss_fn``.

Randomness. Every stream comes from ``seed``: the parent's and each child's data order from
its own ``torch.Generator`` seeded with ``stream_seed(seed, k, j)`` (the parent's with
``stream_seed(seed)``), and the noise of the forward (dropout, ``torch.rand`` in ``loss_fn``)
from the torch global generator seeded with that same seed inside a fork of the global RNG
state (the parent's data and noise streams run on across the spawning points, so its
trajectory does not depend on ``ks``): the two children of one k differ in data order and
noise, the call is reproducible, and the caller's torch / numpy / Python RNG streams are left
as they were. A child's data stream
starts a new pass at k (the parent's position inside its pass is not inherited).

Isolation: the caller's model, optimizer and scheduler are never stepped or modified; the
parent is a deep copy of the three (one ``copy.deepcopy`` of the triple, so the copied
optimizer holds the copied parameters and the copied scheduler the copied optimizer), and so
is each child of the parent. Models are put in train mode for training; the barrier is
evaluated as :func:`~geomonitor.connectivity.interpolate.loss_barrier` does (eval mode,
``no_grad``, BatchNorm statistics recomputed with ``reset_bn``).

Cost: ``max(ks) + 2 * sum_k (total_steps - k)`` training steps, i.e. up to ``2 len(ks) + 1``
training runs, and ``2 len(ks)`` barriers of ``n_alpha`` evaluations (twice that with
BatchNorm and ``reset_bn``); memory: the parent and two children (three models and optimizer
states) at once, plus the children's state dicts on the CPU per k with ``keep_states``.

Not handled: gradient scaling / AMP, gradient accumulation, distributed training (call it on
one process); write them into ``loss_fn`` where they fit, or run the protocol by hand with
:func:`~geomonitor.connectivity.interpolate.loss_barrier`.

Failure modes (``ValueError`` / ``TypeError`` naming the argument, before any training): a
model that is not an ``nn.Module``, an optimizer holding parameters outside the model, a
scheduler of another optimizer, ``ks`` empty, unsorted, repeated or outside
``[0, total_steps]``, an unknown ``definition``, a bad ``n_alpha`` / ``reset_bn``, no
``train_data``. During training: an empty pass from
``batches``, a loss that is not a scalar tensor, or a non-finite loss (``ValueError`` naming
the run and the step); nothing is returned half-computed.

Example::

    res = instability(model, opt, loss_fn, lambda g: DataLoader(ds, 64, shuffle=True, generator=g),
                      ks=[0, 50, 200, 800], total_steps=2000, scheduler=sched,
                      eval_fn=loss_and_error, train_data=(X, y), heldout_data=(Xv, yv), seed=0)
    [(p.k, p.train.error_barrier, p.heldout.error_barrier) for p in res]
"""
from __future__ import annotations

import copy
import functools
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from geomonitor._checks import positive_int
from geomonitor.connectivity.interpolate import Barrier, check_definition, loss_barrier
from geomonitor.sharpness.isolation import preserved_rng

__all__ = ["InstabilityPoint", "instability", "stream_seed"]


@dataclass(frozen=True)
class InstabilityPoint:
    """The children spawned at step ``k``.

    Attributes:
        k: the spawning step.
        train: the :class:`Barrier` between the two trained children on ``train_data``;
            ``train.losses[0]`` / ``[-1]`` are the children's losses (``errors`` likewise).
        heldout: the same on ``heldout_data`` (``None`` without held-out data).
        states: the two children's final state dicts (CPU copies) with ``keep_states``, else
            ``None``.
    """

    k: int
    train: Barrier
    heldout: Barrier | None
    states: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None


def stream_seed(seed: int, k: int | None = None, child: int | None = None) -> int:
    """The seed of one run's data order and noise: the parent's (``k=None``) or child
    ``child`` (0 or 1) spawned at ``k``; from ``numpy.random.SeedSequence([seed])`` or
    ``SeedSequence([seed, k, child])``, first 32-bit word."""
    entropy = [seed] if k is None else [seed, k, child]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class _Stream:
    """Endless batches: ``batches(generator)`` re-called whenever a pass ends."""

    def __init__(self, batches: Callable[[torch.Generator], Iterable[Any]], seed: int, who: str) -> None:
        self.batches, self.who = batches, who
        self.generator = torch.Generator().manual_seed(seed)
        self.it: Iterator[Any] | None = None

    def next(self) -> Any:
        for fresh in (False, True):
            if self.it is None or fresh:
                self.it = iter(self.batches(self.generator))
            try:
                return next(self.it)
            except StopIteration:
                continue
        raise ValueError(f"batches(generator) yielded no batch ({self.who})")


def _copy(model: nn.Module, opt: torch.optim.Optimizer, sched: Any
          ) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """One deep copy of the triple (the copies reference each other, not the originals). A
    learning-rate scheduler wraps its optimizer's ``step`` to check the call order; the
    wrapper is an instance attribute that ``Optimizer.__getstate__`` drops, so the copy gets
    the same wrapper (without it the copied scheduler warns that ``step`` was overridden)."""
    with torch.no_grad():
        m, o, s = copy.deepcopy((model, opt, sched))
    if s is not None and hasattr(opt.step, "_wrapped_by_lr_sched") \
            and not hasattr(o.step, "_wrapped_by_lr_sched"):
        func, ref = type(o).step, weakref.ref(o)

        @functools.wraps(func)
        def step(*args: Any, **kwargs: Any) -> Any:
            owner = ref()
            owner._opt_called = True  # type: ignore[union-attr]
            return func(owner, *args, **kwargs)

        step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
        o.step = step  # type: ignore[method-assign]
    return m, o, s


def _train(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, loss_fn: Callable[..., Any],
           stream: _Stream, n: int, noise: int | tuple[Any, ...], first_step: int,
           devices: list[int]) -> tuple[Any, ...]:
    """``n`` steps; ``noise`` is a seed or the global RNG states a previous segment returned
    (a run's noise stream continues across segments). Returns the states at the end."""
    model.train()
    with preserved_rng(devices), torch.enable_grad():
        if isinstance(noise, int):
            torch.manual_seed(noise)  # this run's noise, inside the fork
        else:
            torch.set_rng_state(noise[0])
            for d, st in zip(devices, noise[1:]):
                torch.cuda.set_rng_state(st, d)
        for i in range(n):
            batch = stream.next()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(f"loss_fn must return a scalar tensor, got {shape} ({stream.who})")
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"training loss is {value} at step {first_step + i} ({stream.who})")
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        return (torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices))


def _check(model: Any, optimizer: Any, scheduler: Any, ks: Any, total_steps: Any) -> list[int]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    own = {id(p) for p in model.parameters()}
    if any(id(p) not in own for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("the optimizer holds parameters that are not the model's")
    if scheduler is not None and getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("scheduler must be a learning-rate scheduler of optimizer (its "
                         ".optimizer is another object)")
    total_steps = positive_int("total_steps", total_steps)
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty list of steps, got {ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total_steps:
            raise ValueError(f"ks must hold ints in [0, total_steps={total_steps}], got {k!r}")
    if any(a >= b for a, b in zip(ks, ks[1:])):
        raise ValueError(f"ks must be strictly increasing, got {list(ks)}")
    return list(ks)


def instability(model: nn.Module, optimizer: torch.optim.Optimizer,
                loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                batches: Callable[[torch.Generator], Iterable[Any]], *, ks: Sequence[int],
                total_steps: int, train_data: Any, heldout_data: Any = None,
                scheduler: Any = None, eval_fn: Callable[[nn.Module, Any], Any] | None = None,
                seed: int = 0, definition: str = "frankle", n_alpha: int = 11,
                reset_bn: bool = True, keep_states: bool = False) -> list[InstabilityPoint]:
    """Frankle et al.'s instability analysis: the barrier between two children spawned at each
    step k of ``ks`` (see the module docstring for the protocol, randomness and isolation).

    Args:
        model, optimizer: the network at step 0 and its optimizer (never modified).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, the training loss.
        batches: ``batches(generator) -> iterable``, one pass over the training data in an
            order drawn from ``generator``.
        ks: strictly increasing spawning steps in ``[0, total_steps]``.
        total_steps: the step every child trains to.
        train_data, heldout_data: what ``eval_fn`` evaluates the barrier on (held-out:
            optional).
        scheduler: the optimizer's learning-rate scheduler, stepped after every step, or None.
        eval_fn: ``eval_fn(model, data) -> loss`` or ``(loss, error)``; default ``loss_fn``.
        seed: the seed of every data order and noise stream (:func:`stream_seed`).
        definition: ``"frankle"`` (default) or ``"chord"`` (see the module docstring).
        n_alpha, reset_bn: as in :func:`~geomonitor.connectivity.interpolate.loss_barrier`.
        keep_states: keep the two children's final state dicts (CPU) in each point.

    Returns:
        One :class:`InstabilityPoint` per k, in the order of ``ks``.

    Raises:
        ValueError / TypeError: see the module docstring.
    """
    ks = _check(model, optimizer, scheduler, ks, total_steps)
    check_definition(definition)
    if not callable(loss_fn) or not callable(batches):
        raise TypeError("loss_fn and batches must be callable")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable or None, got {type(eval_fn).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not isinstance(keep_states, bool):
        raise TypeError(f"keep_states must be a bool, got {keep_states!r}")
    if positive_int("n_alpha", n_alpha) < 2:  # loss_barrier's own checks, before any training
        raise ValueError(f"n_alpha must be an int >= 2 (both ends of the segment), got {n_alpha}")
    if not isinstance(reset_bn, bool):
        raise TypeError(f"reset_bn must be a bool, got {reset_bn!r}")
    if train_data is None:
        raise ValueError("train_data is required (the data the training barrier is measured on)")
    evaluate = eval_fn if eval_fn is not None else loss_fn
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    parent, p_opt, p_sched = _copy(model, optimizer, scheduler)
    p_stream = _Stream(batches, stream_seed(seed), "parent")
    p_noise: int | tuple[Any, ...] = stream_seed(seed)
    step, out = 0, []
    for k in ks:  # the parent's data and noise streams run on across the segments
        p_noise = _train(parent, p_opt, p_sched, loss_fn, p_stream, k - step, p_noise, step, devices)
        step = k
        children = []
        for j in (0, 1):
            child, c_opt, c_sched = _copy(parent, p_opt, p_sched)
            s = stream_seed(seed, k, j)
            _train(child, c_opt, c_sched, loss_fn, _Stream(batches, s, f"child {j} spawned at k={k}"),
                   total_steps - k, s, k, devices)
            del c_opt, c_sched
            children.append(child)
        barriers = []
        for data in (train_data, heldout_data):
            if data is None:
                barriers.append(None)
                continue
            barriers.append(loss_barrier(children[0], children[0], children[1],
                                         lambda m, data=data: evaluate(m, data), n_alpha=n_alpha,
                                         reset_bn=reset_bn, definition=definition))
        states = None
        if keep_states:
            states = tuple({n: t.detach().to("cpu", copy=True) for n, t in c.state_dict().items()}
                           for c in children)
        out.append(InstabilityPoint(k, barriers[0], barriers[1], states))  # type: ignore[arg-type]
    return out
