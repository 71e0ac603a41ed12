"""Both Lightning packages, whichever are installed: ``pytorch_lightning`` and ``lightning``.

A Trainer accepts a callback when it is an instance of *its own* package's ``Callback``
(``lightning.pytorch.Trainer`` checks ``lightning.pytorch.Callback``, and so does
``LightningCLI``). The geometry callbacks therefore derive from the ``Callback`` of every
installed package (:data:`CALLBACK_BASES`), and ``NeuralPersistenceEarlyStopping`` from every
``EarlyStopping`` (:data:`EARLY_STOPPING_BASES`), so one public class works with both
Trainers, loggers and CLIs. The two packages ship the same source, so the methods of the
first base serve both; the ``EarlyStopping`` of the second package is entered through a
shim whose argument-less ``__init__`` (reached through the first one's ``super().__init__()``)
does nothing: its state is set once, by the first.

Loggers are recognised by the classes of every installed package (:data:`WANDB_LOGGERS`).
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

__all__ = ["CALLBACK_BASES", "EARLY_STOPPING_BASES", "WANDB_LOGGERS", "PACKAGES"]

#: The installed Lightning packages, ``pytorch_lightning`` first.
PACKAGES: tuple[str, ...] = tuple(
    p for p in ("pytorch_lightning", "lightning.pytorch")
    if importlib.util.find_spec(p.split(".")[0]) is not None)


def _modules(sub: str) -> list[ModuleType]:
    if not PACKAGES:
        raise ImportError("geomonitor.callbacks needs pytorch-lightning or lightning installed")
    return [importlib.import_module(f"{p}.{sub}") for p in PACKAGES]


def _shim(cls: type) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:  # called directly; through the first base's super(): nothing to do
            cls.__init__(self, *args, **kwargs)

    return type(f"_{cls.__module__.split('.')[0]}_{cls.__name__}", (cls,), {"__init__": __init__})


CALLBACK_BASES: tuple[type, ...] = tuple(m.Callback for m in _modules("callbacks"))
_stops = [m.EarlyStopping for m in _modules("callbacks")]
EARLY_STOPPING_BASES: tuple[type, ...] = (_stops[0], *(_shim(c) for c in _stops[1:]))
WANDB_LOGGERS: tuple[type, ...] = tuple(m.WandbLogger for m in _modules("loggers"))
