"""A working copy of a model that still sees what the original is attached to.

Measurements that must change weights (interpolating between two parameter sets, a few
training steps of a child network) work on a ``copy.deepcopy`` of the model so the original
is never touched. Some modules drop references to outside objects when they are copied:
a Lightning ``LightningModule``'s ``__getstate__`` sets ``_trainer`` to ``None``, so a
``training_step`` that reads ``self.trainer`` (``self.trainer.global_step``, its optimizers)
fails on the copy with "not attached to a Trainer". :func:`working_copy` deep-copies the
module tree (parameters, buffers, submodules: the copy owns its tensors) and then gives each
copied module the original's references that its ``__getstate__`` dropped: every attribute
in the original's ``__dict__`` that is not ``None`` there and is ``None`` or missing in the
copy is shared (the same object, not a copy). Nothing else is shared.

Cost: one ``deepcopy`` (the model's parameters and buffers once more in memory) plus a walk
over the modules. Failure modes: whatever ``deepcopy`` raises for the model (e.g. a module
holding a lock or an open file); a shared reference is the live object, so a loss that
writes to it (``self.trainer.some_counter += 1``) writes to the original's.
"""
from __future__ import annotations

import copy

from torch import nn

__all__ = ["working_copy"]


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose modules keep the original's dropped references.

    Args:
        model: any ``nn.Module``.

    Returns:
        The copy (same structure, its own parameters and buffers, same train/eval modes).
    """
    work = copy.deepcopy(model)
    for orig, twin in zip(model.modules(), work.modules()):
        mine = twin.__dict__
        for name, value in orig.__dict__.items():
            if value is not None and mine.get(name) is None:
                mine[name] = value
    return work
