"""The measurement-family contract: what the monitor engine asks of every family.

A *family* is one kind of measurement (intrinsic dimension, sharpness, topology, neural
persistence, symmetry, connectivity, equivariance). The engine
(:class:`geomonitor.monitor.Monitor`) decides *when* a family runs (its :class:`Every`
schedule and the cost cap), and gives it a :class:`Context` holding *what* it may read at
that step. The family returns a :class:`Measurement` (done on the training thread) or a
zero-argument callable returning one (finished by the background worker; the callable must
not touch the model, whose weights keep changing).

Rules a family follows:

* no framework imports (torch, numpy only); metric names come from
  :func:`geomonitor.monitor.keys.metric_key`;
* never change the model, its gradients, its BatchNorm statistics or a global RNG stream:
  random choices use a ``torch.Generator`` the family owns, seeded from its arguments;
* per-item failures (one layer) go into ``Measurement.errors``; the other items are still
  reported. An exception from ``run`` counts as one failed measurement of the family;
* arguments are checked in ``__init__`` (``ValueError`` naming the argument and the value).

Example:
    >>> class WeightNorm(Family):
    ...     name = "weight_norm"
    ...     needs_probe = False
    ...     def run(self, ctx):
    ...         sq = sum(float(p.detach().pow(2).sum()) for p in ctx.model.parameters())
    ...         return Measurement(metrics={"geometry/weight_norm": sq ** 0.5})
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from geomonitor.monitor.schedule import Every

__all__ = ["Context", "Family", "Measurement", "probe_labels"]


@dataclass
class Measurement:
    """What one family measured at one step: numbers, W&B media, and per-item failures.

    ``metrics`` maps full metric keys to floats; ``diagrams`` maps a key to persistence
    diagrams (one ``(n, 2)`` array per homology dimension); ``profiles`` maps a key to
    ``(names, values)`` of a per-layer curve; ``spectra`` maps a key to ``(nodes, weights)``
    of a discrete measure (a spectral density); ``errors`` holds per-item exceptions;
    ``background_cpu`` is CPU time spent outside this process's threads (a child process),
    charged to the family's cost.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    diagrams: dict[str, list[np.ndarray]] = field(default_factory=dict)
    profiles: dict[str, tuple[list[str], list[float]]] = field(default_factory=dict)
    spectra: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    background_cpu: float = 0.0


def probe_labels(batch: Any) -> torch.Tensor | None:
    """Integer class labels of a probe batch, when it has them, else ``None``.

    ``(x, y, ...)`` with ``y`` a 1-D integer tensor as long as ``x``; or a mapping with
    ``"labels"``/``"label"``/``"y"`` of that form. Token labels (2-D) are not class labels.
    """
    if isinstance(batch, Mapping):
        y = next((batch[k] for k in ("labels", "label", "y") if k in batch), None)
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        y = batch[1]
    else:
        y = None
    if (isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point()
            and not y.is_complex() and y.dtype != torch.bool):
        return y
    return None


class Context:
    """Everything a family may read at one measurement step; activations computed once.

    Attributes:
        model: the network being trained (unwrapped from DDP; never to be modified).
        step: the optimizer step the measurement describes.
        probe_batch: the probe set as one batch, on the model's device (``None`` when no
            family needs it).
        optimizer: the training optimizer, or ``None`` (read only: its lr and state).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, the training loss, or ``None``.
        forward: ``forward(model, batch)``, the forward used for activations.

    ``activations()`` runs the single extra no-grad, eval-mode forward on the probe batch the
    first time a family asks for it, so the families due at one step share it.
    ``labels()`` gives the probe set's class labels (:func:`probe_labels`) or ``None``.
    """

    def __init__(self, model: nn.Module, step: int, probe_batch: Any,
                 capture: Callable[[], dict[str, torch.Tensor]], *,
                 optimizer: torch.optim.Optimizer | None = None,
                 loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
                 forward: Callable[[nn.Module, Any], Any] | None = None) -> None:
        self.model = model
        self.step = step
        self.probe_batch = probe_batch
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.forward = forward
        self._capture = capture
        self._acts: dict[str, torch.Tensor] | None = None

    def activations(self) -> dict[str, torch.Tensor]:
        if self._acts is None:
            self._acts = self._capture()
        return self._acts

    def labels(self) -> torch.Tensor | None:
        return probe_labels(self.probe_batch)


class Family:
    """Base class of a measurement family (see the module docstring for the contract).

    Class attributes: ``name`` (the key used for its schedule, cost and error counts),
    ``needs_probe`` (whether a probe set must be drawn), ``needs_activations`` (whether it
    reads ``ctx.activations()``: the engine resolves the selected layers only then),
    ``needs_loss`` (whether it reads ``ctx.loss_fn``: without one the engine disables it),
    ``hooks_shared_forward`` (whether it puts hooks on the shared activation forward: the
    engine runs such families first at a step, so that the forward runs once).
    """

    name: str = ""
    needs_probe: bool = True
    needs_activations: bool = False
    needs_loss: bool = False
    hooks_shared_forward: bool = False

    def __init__(self, schedule: Every) -> None:
        if not isinstance(schedule, Every):
            raise ValueError(f"schedule must be an Every, got {schedule!r}")
        self.schedule = schedule
        self.enabled = True

    def setup(self, model: nn.Module) -> str | None:
        """Called once before training; returns a reason to disable the family, or None."""
        return None

    def run(self, ctx: Context) -> Measurement | Callable[[], Measurement]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``setup``/``run`` acquired; may be called from another thread while a
        background job of this family runs, and must then stop it."""
        return None

    def prioritize(self) -> None:
        """The training thread is about to wait on this family's background jobs
        (``Monitor.close(wait=True)``): let them run at full speed (e.g. undo a low CPU
        priority). Must not wait on the jobs; by default nothing."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None
