"""The measurement families, one module each, and the default set.

* :class:`IntrinsicDimensionFamily` (:mod:`.intrinsic`) -- ``geometry/id/<layer>``
* :class:`SharpnessFamily` (:mod:`.sharpness`) -- ``geometry/sharpness``, ``eos_ratio``
* :class:`TopologyFamily` (:mod:`.topology`) -- ``geometry/ph/<layer>/<summary>``
* :class:`NeuralPersistenceFamily` (:mod:`.neural_persistence`) -- ``geometry/neural_persistence/...``
* :class:`SymmetryFamily` (:mod:`.symmetry`) -- ``geometry/symmetry/...``, ``geometry/neural_collapse/...``
* :class:`ConnectivityFamily` (:mod:`.connectivity`) -- ``geometry/connectivity/...`` (opt-in)
* :class:`SpectrumFamily` (:mod:`.spectrum`) -- ``geometry/hessian_trace``,
  ``geometry/hessian_outliers`` and the Hessian spectral density (opt-in)
* :class:`EquivarianceFamily` (:mod:`.equivariance`) -- ``geometry/equivariance/...`` (needs
  the user's group actions)
* :class:`AttentionFamily` (:mod:`.attention`) -- ``geometry/attention/...``,
  ``geometry/output_logits/...`` (opt-in; transformers)

:func:`build_families` turns ``GeometryMonitor``-style options into family objects; the
Lightning, Hugging Face and plain-loop entry points all go through it, so a default is
written once.
"""
from __future__ import annotations

from typing import Any

from geomonitor.monitor.family import Family
from geomonitor.monitor.families.attention import AttentionFamily
from geomonitor.monitor.families.connectivity import ConnectivityFamily
from geomonitor.monitor.families.equivariance import EquivarianceFamily
from geomonitor.monitor.families.intrinsic import IntrinsicDimensionFamily
from geomonitor.monitor.families.neural_persistence import NeuralPersistenceFamily
from geomonitor.monitor.families.sharpness import SharpnessFamily
from geomonitor.monitor.families.spectrum import SpectrumFamily
from geomonitor.monitor.families.symmetry import SymmetryFamily
from geomonitor.monitor.families.topology import TopologyFamily
from geomonitor.monitor.schedule import Every

__all__ = ["DEFAULTS", "AttentionFamily", "ConnectivityFamily", "EquivarianceFamily", "IntrinsicDimensionFamily",
           "NeuralPersistenceFamily", "SharpnessFamily", "SpectrumFamily", "SymmetryFamily",
           "TopologyFamily", "build_families"]

#: Every option of :func:`build_families` and its default (schedules: ``None`` = off).
#: Every default family asks for a point every 10 steps; the cost cap stretches the periods
#: to fit ``max_overhead`` (:mod:`geomonitor.monitor.cost`).
DEFAULTS: dict[str, Any] = {
    "id_every_n_steps": 10, "id_every_n_epochs": None, "id_method": "twonn", "id_log_profile": True,
    "sharpness_every_n_steps": 10, "sharpness_every_n_epochs": None, "sharpness_max_hvp": 20,
    "sharpness_tol": 1e-2, "sharpness_probe_size": 32, "sharpness_hvp": "auto",
    "topology_every_n_steps": 10, "topology_every_n_epochs": None, "topology_landmarks": 128, "topology_maxdim": 1,
    "log_diagrams": True,
    "np_every_n_steps": 10, "np_every_n_epochs": None,
    "symmetry_every_n_steps": 10, "symmetry_every_n_epochs": None,
    "connectivity_every_n_steps": None, "connectivity_every_n_epochs": None,
    "equivariance_every_n_steps": None, "equivariance_every_n_epochs": None,
    "equivariance_transforms": None,
    "spectrum_every_n_steps": None, "spectrum_every_n_epochs": None, "spectrum_n_iter": 20,
    "spectrum_n_vectors": 2,
    "attention_every_n_steps": None, "attention_every_n_epochs": None,
    "attention_output_logits": True,
}


def _every(options: dict[str, Any], prefix: str) -> Every | None:
    steps, epochs = options[f"{prefix}_every_n_steps"], options[f"{prefix}_every_n_epochs"]
    if steps is None and epochs is None:
        return None
    return Every(n_steps=steps, n_epochs=epochs)


def build_families(*, seed: int = 0, **options: Any) -> list[Family]:
    """The families switched on by ``options`` (see :data:`DEFAULTS`), in a fixed order.

    A family is off when both its ``*_every_n_steps`` and ``*_every_n_epochs`` are ``None``.

    Raises:
        ValueError: an unknown option (the message lists them), a bad value, or every family off.

    Example:
        >>> [f.name for f in build_families(topology_every_n_steps=None)]
        ['id', 'sharpness', 'neural_persistence', 'symmetry']
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown family options {unknown}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options}
    families: list[Family] = []
    every = _every(o, "id")
    if every is not None:
        families.append(IntrinsicDimensionFamily(every, method=o["id_method"],
                                                 log_profile=o["id_log_profile"]))
    every = _every(o, "sharpness")
    if every is not None:
        families.append(SharpnessFamily(every, max_hvp=o["sharpness_max_hvp"], tol=o["sharpness_tol"],
                                        seed=seed, probe_size=o["sharpness_probe_size"], hvp=o["sharpness_hvp"]))
    every = _every(o, "topology")
    if every is not None:
        families.append(TopologyFamily(every, maxdim=o["topology_maxdim"], n_landmarks=o["topology_landmarks"], seed=seed,
                                       log_diagrams=o["log_diagrams"]))
    every = _every(o, "np")
    if every is not None:
        families.append(NeuralPersistenceFamily(every))
    every = _every(o, "symmetry")
    if every is not None:
        families.append(SymmetryFamily(every, seed=seed))
    every = _every(o, "connectivity")
    if every is not None:
        families.append(ConnectivityFamily(every, seed=seed))
    every = _every(o, "equivariance")
    if every is not None:
        if not o["equivariance_transforms"]:
            raise ValueError("equivariance needs equivariance_transforms={name: (t_in, t_out)}")
        families.append(EquivarianceFamily(every, o["equivariance_transforms"]))
    every = _every(o, "spectrum")
    if every is not None:
        families.append(SpectrumFamily(every, n_iter=o["spectrum_n_iter"], n_vectors=o["spectrum_n_vectors"],
                                       seed=seed, probe_size=o["sharpness_probe_size"], hvp=o["sharpness_hvp"]))
    every = _every(o, "attention")
    if every is not None:
        families.append(AttentionFamily(every, output_logits=o["attention_output_logits"]))
    if not families:
        raise ValueError("no family is on: every *_every_n_steps and *_every_n_epochs is None")
    return families
