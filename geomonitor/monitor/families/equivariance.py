"""Equivariance family: how far the model is from respecting the user's group actions.

At each measurement, for every named transform ``name: (t_in, t_out)`` the mean relative
equivariance error of the model's output on the probe inputs,
``mean_i ||f(t_in(x_i)) - t_out(f(x_i))|| / ||f(x_i)||`` (``t_out=None``: invariance), and
optionally per layer with the layer's own output action
(:func:`geomonitor.equivariance.equivariance_error`,
:func:`geomonitor.equivariance.layer_equivariance_errors`); for a named one-parameter flow
``name: (flow_in, flow_out)`` the mean norm of the Lie derivative
(:func:`geomonitor.equivariance.lie_derivative`).

References: N. Gruver, M. Finzi, M. Goldblum, A. G. Wilson, "The Lie Derivative for Measuring
Learned Equivariance", ICLR 2023; R. Zhang, "Making Convolutional Networks Shift-Invariant
Again", ICML 2019.

Metrics:

=================================================  ==========================================
key                                                value
=================================================  ==========================================
``geometry/equivariance/<name>/output``            error of the model output under ``name``
``geometry/equivariance/<name>/<layer>``           error of module ``<layer>`` (when given in
                                                   ``layer_transforms[name]``)
``geometry/equivariance/<name>/lie_derivative``    mean ||Lie derivative|| (``flows[name]``)
=================================================  ==========================================

A layer may therefore not be called ``output`` or ``lie_derivative``.

Isolation: everything runs on a deep copy of the model in eval mode under ``torch.no_grad``,
with the global RNG streams restored; the real model, its BatchNorm statistics and the
optimizer are untouched. A model with fp16/bf16 parameters is measured on a float32 copy
(fp16/bf16 probe inputs are cast to float32).

Cost per measurement: one deep copy of the model, two forward passes on the probe inputs per
transform (layer errors reuse them) and about three per flow (forward-mode AD).

Failure modes: a transform that fails (shapes that do not match, a zero output, a
non-differentiable flow) is reported in ``Measurement.errors`` and the other transforms are
still measured; bad arguments raise in ``__init__``; unknown layer names disable the family in
``setup`` with a reason.

Example:
    >>> shift = (lambda x: torch.roll(x, 1, dims=-1), None)       # invariance to shifts
    >>> fam = EquivarianceFamily(Every(n_steps=50), transforms={"shift1": shift})
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from geomonitor.equivariance.error import equivariance_error, layer_equivariance_errors
from geomonitor.equivariance.lie import lie_derivative
from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every
from geomonitor.sharpness.isolation import preserved_rng, unwrap

__all__ = ["EquivarianceFamily", "probe_inputs"]

_RESERVED = ("output", "lie_derivative")
_HALF = (torch.float16, torch.bfloat16)


def probe_inputs(batch: Any) -> torch.Tensor:
    """The model input of a probe batch: the batch itself when it is a tensor, else the first
    element of a tuple/list (``TypeError`` otherwise: pass ``input_fn``)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"cannot find the model input in a probe batch of type {type(batch).__name__}; "
                    "pass input_fn=callable(batch) -> tensor")


def _check_name(what: str, name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{what} names must be non-empty str without '/', got {name!r}")
    return name


def _check_pairs(what: str, pairs: Any) -> dict[str, tuple[Callable, Callable | None]]:
    if not isinstance(pairs, Mapping):
        raise ValueError(f"{what} must be a mapping name -> (action_in, action_out or None), got "
                         f"{type(pairs).__name__}")
    out = {}
    for name, pair in pairs.items():
        _check_name(what, name)
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[0])
                and (pair[1] is None or callable(pair[1]))):
            raise ValueError(f"{what}[{name!r}] must be a pair (callable, callable or None), got "
                             f"{pair!r}")
        out[name] = (pair[0], pair[1])
    return out


class EquivarianceFamily(Family):
    """Equivariance error (and Lie derivative) of the model under named group actions.

    Args:
        schedule: when to measure.
        transforms: ``{name: (t_in, t_out or None)}``; ``t_in`` acts on an input batch,
            ``t_out`` on the model's output batch (``None``: invariance).
        layer_transforms: ``{name: {module name: layer output action or None}}`` for
            per-layer errors under transform ``name`` (a key of ``transforms``).
        flows: ``{name: (flow_in, flow_out or None)}``, one-parameter flows ``flow(x, t)``
            for the Lie derivative.
        input_fn: ``input_fn(batch) -> tensor``, the model input of the probe batch
            (default :func:`probe_inputs`).
        forward: ``forward(model, x) -> tensor`` (default ``model(x)``).

    Raises:
        ValueError: empty ``transforms`` and ``flows``, a name that is not a str without
            '/', a value that is not a pair of callables, a ``layer_transforms`` key that is
            not a transform, or a layer called ``output`` / ``lie_derivative``.
    """

    name = "equivariance"
    needs_probe = True
    needs_activations = False

    def __init__(self, schedule: Every, transforms: Mapping[str, tuple[Callable, Callable | None]],
                 layer_transforms: Mapping[str, Mapping[str, Callable | None]] | None = None, *,
                 flows: Mapping[str, tuple[Callable, Callable | None]] | None = None,
                 input_fn: Callable[[Any], torch.Tensor] | None = None,
                 forward: Callable[[nn.Module, torch.Tensor], Any] | None = None) -> None:
        super().__init__(schedule)
        self.transforms = _check_pairs("transforms", transforms)
        self.flows = _check_pairs("flows", flows or {})
        if not self.transforms and not self.flows:
            raise ValueError("EquivarianceFamily needs at least one transform or flow, got none")
        self.layer_transforms: dict[str, dict[str, Callable | None]] = {}
        for name, layers in (layer_transforms or {}).items():
            if name not in self.transforms:
                raise ValueError(f"layer_transforms key {name!r} is not one of the transforms "
                                 f"{sorted(self.transforms)}")
            if not isinstance(layers, Mapping) or not layers:
                raise ValueError(f"layer_transforms[{name!r}] must be a non-empty mapping of module "
                                 f"name -> action or None, got {layers!r}")
            for layer, act in layers.items():
                _check_name(f"layer_transforms[{name!r}] layer", layer)
                if layer in _RESERVED:
                    raise ValueError(f"a layer may not be called {layer!r} (a summary name of the "
                                     f"equivariance metrics: {_RESERVED})")
                if act is not None and not callable(act):
                    raise ValueError(f"layer_transforms[{name!r}][{layer!r}] must be callable or None, "
                                     f"got {act!r}")
            self.layer_transforms[name] = dict(layers)
        for what, fn in (("input_fn", input_fn), ("forward", forward)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{what} must be callable or None, got {fn!r}")
        self.input_fn = input_fn or probe_inputs
        self.forward = forward or (lambda m, x: m(x))

    def setup(self, model: nn.Module) -> str | None:
        names = {n for n, _ in model.named_modules()}
        unknown = sorted({layer for layers in self.layer_transforms.values() for layer in layers} - names)
        if unknown:
            return (f"equivariance: layers {unknown} are not modules of the model (known: "
                    f"{sorted(n for n in names if n)[:8]}...)")
        return None

    def run(self, ctx: Context) -> Measurement:
        model = unwrap(ctx.model)
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        out = Measurement()
        with preserved_rng(devices):
            with torch.no_grad():
                work = copy.deepcopy(model).eval()
                if any(p.dtype in _HALF for p in work.parameters()):
                    work.float()  # fp16/bf16 models are measured in float32
            x = self.input_fn(ctx.probe_batch)
            if isinstance(x, torch.Tensor) and x.dtype in _HALF:
                x = x.float()

            def f(inp: torch.Tensor) -> Any:
                return self.forward(work, inp)

            for name, (t_in, t_out) in self.transforms.items():
                try:
                    out.metrics[metric_key("equivariance", name, "output")] = \
                        equivariance_error(f, x, t_in, t_out)
                    if name in self.layer_transforms:
                        errs = layer_equivariance_errors(work, x, t_in, self.layer_transforms[name],
                                                         forward=self.forward)
                        for layer, e in errs.items():
                            out.metrics[metric_key("equivariance", name, layer)] = e
                except Exception as exc:  # noqa: BLE001 - reported per transform
                    out.errors.append(exc)
            for name, (flow, flow_out) in self.flows.items():
                try:
                    out.metrics[metric_key("equivariance", name, "lie_derivative")] = \
                        lie_derivative(f, x, flow, flow_out)
                except Exception as exc:  # noqa: BLE001
                    out.errors.append(exc)
            del work
        return out
