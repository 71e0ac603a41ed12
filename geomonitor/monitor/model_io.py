"""How the engine reaches the model and the data: the forward, the probe set, the module
inside training wrappers, the device, and rank 0's decisions under ``torch.distributed``.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> default_forward(net, (torch.zeros(4, 3), torch.zeros(4))).shape
    torch.Size([4, 2])
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from geomonitor.monitor.probe import ProbeSet
from geomonitor.sharpness.isolation import unwrap

__all__ = ["default_forward", "make_probe", "model_device", "torch_broadcast", "unwrap_model"]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """The forward used for activations: a tensor batch is the input, a tuple/list's first
    element is the input, a mapping is passed as keyword arguments."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        try:
            return model(**batch)
        except TypeError as exc:
            raise TypeError(f"{exc}; the probe batch is a dict with keys {sorted(batch)}: pass "
                            "forward_fn=lambda model, batch: model(batch['x']) (your input keys) "
                            "to say how the model is called") from exc
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    raise TypeError(f"cannot infer the model input from a batch of type {type(batch).__name__}; "
                    "pass forward_fn=lambda model, batch: model(...)")


def make_probe(data: Any, size: int | None, seed: int) -> ProbeSet:
    """A :class:`ProbeSet` from a DataLoader, a tensor, a tuple of tensors or a ProbeSet."""
    if isinstance(data, ProbeSet):
        return data
    if isinstance(data, torch.Tensor):
        return ProbeSet.from_tensors(data, size=size, seed=seed)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return ProbeSet.from_tensors(*data, size=size, seed=seed)
    if hasattr(data, "dataset"):
        return ProbeSet.from_dataloader(data, size, seed=seed)
    raise TypeError("probe must be a DataLoader, a tensor, a tuple of tensors, a ProbeSet or a "
                    f"callable returning one; got {type(data).__name__}")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for an empty model."""
    for t in list(model.parameters())[:1] + list(model.buffers())[:1]:
        return t.device
    return torch.device("cpu")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel and Lightning Fabric's ``_FabricModule``."""
    while True:
        model = unwrap(model)
        if type(model).__name__ == "_FabricModule" and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def torch_broadcast(decisions: Any) -> Any:
    """Rank 0's ``decisions`` (any picklable object) on every rank of an initialised ``torch.distributed`` group
    (``broadcast_object_list``); unchanged without one."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return decisions
    box = [decisions]
    dist.broadcast_object_list(box, src=0)
    return box[0]
