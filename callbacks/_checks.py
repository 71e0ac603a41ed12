"""Argument checks shared by the geometry callbacks: ValueError naming argument, value, allowed."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from geomonitor._checks import positive_int
from geomonitor.intrinsic import METHODS as ID_METHODS
from geomonitor.monitor.layers import REDUCTIONS
from geomonitor.monitor.schedule import Every

PROG_BAR_FAMILIES = ("sharpness", "eos_ratio", "n_hvp", "id", "ph", "neural_persistence", "symmetry",
                     "neural_collapse", "connectivity", "equivariance", "attention",
                     "output_logits", "errors")


def positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive float, got {value!r}")
    return float(value)


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def schedule(prefix: str, every_n_steps: Any, every_n_epochs: Any) -> Every | None:
    """The family's schedule, or None (family off) when both are None."""
    positive_int(f"{prefix}every_n_steps", every_n_steps, allow_none=True)
    positive_int(f"{prefix}every_n_epochs", every_n_epochs, allow_none=True)
    if every_n_steps is None and every_n_epochs is None:
        return None
    return Every(n_steps=every_n_steps, n_epochs=every_n_epochs)


def layers(value: Any) -> str | list[str]:
    if isinstance(value, str) and value:
        return value
    if (isinstance(value, (list, tuple)) and value
            and all(isinstance(v, str) and v for v in value)):
        return list(value)
    raise ValueError("layers must be 'auto', a module-name glob or a non-empty list of globs, "
                     f"got {value!r}")


def prog_bar(value: Any) -> list[str]:
    """``"eos_ratio"`` / ``["sharpness", "id/fc1"]`` / ``None``: names after ``geometry/``."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"prog_bar must be a metric name, a list of them or None, got {value!r}")
    for n in names:
        if n.split("/")[0] not in PROG_BAR_FAMILIES:
            raise ValueError(f"prog_bar entries must name a geometry metric without the "
                             f"'geometry/' prefix, starting with one of {PROG_BAR_FAMILIES}, "
                             f"got {n!r}")
    return list(names)


def probe_data(value: Any) -> Any:
    import torch
    from torch.utils.data import DataLoader

    if value is None or isinstance(value, (DataLoader, torch.Tensor)):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(t, torch.Tensor) for t in value):
        return tuple(value)
    raise ValueError("probe_data must be None (draw from the train dataloader), a DataLoader, "
                     f"a tensor or a tuple of tensors, got {type(value).__name__}")


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def common(probe_size: Any, probe_seed: Any, data: Any, strict: Any, max_pending: Any) -> Any:
    """Checks shared by every monitor; returns the normalised ``probe_data``."""
    positive_int("probe_size", probe_size)
    if isinstance(probe_seed, bool) or not isinstance(probe_seed, int) or probe_seed < 0:
        raise ValueError(f"probe_seed must be a non-negative int, got {probe_seed!r}")
    flag("strict", strict)
    positive_int("max_pending", max_pending)
    return probe_data(data)


def max_overhead(value: Any) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 < value <= 1):
        raise ValueError(f"max_overhead must be a float in (0, 1] or None, got {value!r}")
    return value


def landmarks(name: str, value: Any) -> int | None:
    positive_int(name, value, allow_none=True)
    if value is not None and value < 3:
        raise ValueError(f"{name} must be >= 3 or None, got {value!r}")
    return value


def geometry_options(owner: str, *, id_method: Any, sharpness_max_hvp: Any, sharpness_tol: Any,
                     sharpness_probe_size: Any, sharpness_hvp: Any, topology_landmarks: Any, log_diagrams: Any,
                     **schedules: Any) -> dict[str, Any]:
    """Check ``GeometryMonitor``-style family arguments; the options for ``build_families``.

    ``schedules`` are the ``<family>_every_n_steps`` / ``<family>_every_n_epochs`` arguments;
    ``owner`` names the callback in the error when every family is off.
    """
    choice("id_method", id_method, ID_METHODS)
    positive_int("sharpness_max_hvp", sharpness_max_hvp)
    positive_float("sharpness_tol", sharpness_tol)
    positive_int("sharpness_probe_size", sharpness_probe_size, allow_none=True)
    choice("sharpness_hvp", sharpness_hvp, ("auto", "fd", "exact"))
    landmarks("topology_landmarks", topology_landmarks)
    flag("log_diagrams", log_diagrams)
    for name, value in schedules.items():
        positive_int(name, value, allow_none=True)
    if all(v is None for v in schedules.values()):
        raise ValueError(f"{owner} needs at least one family on: every *_every_n_steps and "
                         "*_every_n_epochs is None")
    return dict(schedules, id_method=id_method, sharpness_max_hvp=sharpness_max_hvp,
                sharpness_tol=sharpness_tol, sharpness_probe_size=sharpness_probe_size,
                sharpness_hvp=sharpness_hvp,
                topology_landmarks=topology_landmarks, log_diagrams=log_diagrams)


def callables(**fns: Any) -> None:
    """``ValueError`` for any of ``fns`` that is neither callable nor None."""
    for name, fn in fns.items():
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable(model, batch) or None, got {fn!r}")
