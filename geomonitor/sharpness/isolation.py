"""A measurement leaves the model and the process as it found them.

:func:`measurement_mode` sets the numerics a Hessian measurement needs, for any model:
grad mode on (also inside ``torch.no_grad`` / ``torch.inference_mode`` callers), autocast off
on CPU and CUDA (the measurement runs in the parameters' own precision, float32 for mixed
precision training), and ``scaled_dot_product_attention`` forced to the math kernel (the
fused flash / memory-efficient kernels have no double backward).

:func:`isolated` adds, for one module, the snapshot and restore of everything a forward
pass or a loss function may change:

====================================  =====================================================
state                                 handling
====================================  =====================================================
parameter values                      never written by a measurement; in-place writes are
                                      detected (version counter, not ``.data``) and raise
``.grad`` of every parameter          reference and contents saved, restored (None stays None)
buffers (BatchNorm running stats,     cloned before, copied back after
``num_batches_tracked``, ...)
train / eval mode of every module     saved, restored
dropout modules                       put in eval mode (deterministic measurement)
BatchNorm in train mode               left in train mode: the Hessian is the one training
                                      sees (batch statistics); running stats are restored
torch CPU / CUDA, numpy, python RNG   saved, restored (functional dropout is also reproducible)
autocast / grad mode                  restored by the context managers
====================================  =====================================================

Cost: one clone of the buffers and of the existing ``.grad`` tensors (memory up to one copy
of the model's gradients). Failure modes: none of its own; exceptions inside propagate after
the restore.

Example::

    with isolated(model):
        loss = loss_fn()   # no trace of this forward is left behind
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["isolated", "measurement_mode", "preserved_rng", "unwrap"]

_DROPOUT = (torch.nn.modules.dropout._DropoutNd,)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model.module`` for DistributedDataParallel / DataParallel wrappers, else ``model``.

    Double backward through DDP's reducer hooks is unsupported; the wrapped module computes
    the same loss on this rank's batch without gradient synchronisation.
    """
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


@contextlib.contextmanager
def measurement_mode(double_backward: bool = True) -> Iterator[None]:
    """Grad on, inference mode off, autocast off (CPU and CUDA), and, when
    ``double_backward``, the SDPA math kernel (the fused kernels have no double backward)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        if not double_backward:
            yield
            return
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # torch < 2.3: the legacy switch
            stack.enter_context(
                torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
            )
        yield


@contextlib.contextmanager
def preserved_rng(devices: Sequence[int | torch.device] = ()) -> Iterator[None]:
    """Restore the torch CPU (and ``devices``' CUDA), numpy and Python RNG states on exit."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=list(devices)):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def isolated(model: torch.nn.Module, double_backward: bool = True) -> Iterator[torch.nn.Module]:
    """Run a measurement on ``model`` and restore everything afterwards (see module doc).

    Yields the unwrapped module (``model.module`` under DDP / DataParallel);
    ``double_backward`` is passed to :func:`measurement_mode`.
    """
    module = unwrap(model)
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    params = list(module.parameters())
    grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
    versions = [p._version for p in params]
    devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else ()
    try:
        with preserved_rng(devices), measurement_mode(double_backward):
            for m in module.modules():
                if isinstance(m, _DROPOUT):
                    m.eval()
            yield module
    finally:
        for m, training in modes:
            m.train(training)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
            for p, ref, saved in grads:
                if ref is not None:
                    ref.copy_(saved)
                p.grad = ref
    changed = [i for i, (p, v) in enumerate(zip(params, versions)) if p._version != v]
    if changed:
        raise RuntimeError(
            f"the measurement modified parameter values in place (parameters {changed[:5]}); "
            "loss_fn must not update the model"
        )
