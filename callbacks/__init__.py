"""Adapters: Lightning callbacks (``pytorch_lightning`` and ``lightning``), the Hugging Face
``TrainerCallback``, and the sinks that stream geomonitor's measurements to loggers and W&B.

The callbacks are imported on first access, so ``geomonitor.callbacks.sinks`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GeometryMonitor": "geomonitor.callbacks.geometry",
    "IntrinsicDimensionMonitor": "geomonitor.callbacks.monitors",
    "SharpnessMonitor": "geomonitor.callbacks.monitors",
    "TopologyMonitor": "geomonitor.callbacks.monitors",
    "NeuralPersistenceMonitor": "geomonitor.callbacks.monitors",
    "SymmetryMonitor": "geomonitor.callbacks.monitors",
    "GeometryAlerts": "geomonitor.callbacks.alerts",
    "NeuralPersistenceEarlyStopping": "geomonitor.callbacks.early_stopping",
    "TrainerSink": "geomonitor.callbacks.sinks",
    "WandbSink": "geomonitor.callbacks.sinks",
    "GeometryTrainerCallback": "geomonitor.callbacks.hf",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'geomonitor.callbacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
