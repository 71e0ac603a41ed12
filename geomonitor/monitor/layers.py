"""What to measure: which modules, and how their outputs become point clouds.

:class:`LayerSelector` turns patterns into modules; :func:`capture_activations` runs one extra
forward on the probe set with forward hooks and returns, per module, an (N, D) float tensor:
the point cloud the intrinsic-dimension and topology estimators take.

Selection (``fnmatch.fnmatchcase`` over the names of ``model.named_modules()``, the root module
``""`` excluded): an exact name (``"encoder.0"``) or a glob (``"encoder.*"``, ``"*.fc?"``;
``*`` also crosses dots). ``"auto"`` selects every *leaf* ``nn.Linear`` / ``nn.Conv{1,2,3}d`` /
transposed conv, at most ``max_auto`` of them, evenly spaced in registration order and always
including the first and the last (a depth profile, in the spirit of Ansuini et al., "Intrinsic
dimension of data representations in deep neural networks", NeurIPS 2019, who measure it
layer by layer). Order is that of ``named_modules()``; duplicates are removed.

Reduction of one module output (:func:`reduce_output`): containers are unwrapped first
(tuple/list -> first tensor found, depth first; dict/``ModelOutput`` -> ``last_hidden_state``
when present, else the first tensor value), then

============================  =================  ===========  ==============
output shape                  ``flatten``        ``mean``     ``last``
============================  =================  ===========  ==============
[B]                           (B, 1)             (B, 1)       (B, 1)
[B, D]                        (B, D)             (B, D)       (B, D)
[B, T, D] (sequence)          (B, T*D)           (B, D)       (B, D) token T-1
[B, C, L] (``channels_first``)  (B, C*L)         (B, C)       (B, C) position L-1
[B, C, H, W], [B, C, ...]     (B, C*H*W...)      (B, C)       ``ValueError``
============================  =================  ===========  ==============

``channels_first`` is set by :func:`capture_activations` for convolution modules, so a
``Conv1d`` output [B, C, L] is averaged over positions, not channels.

Failure modes: a pattern matching nothing -> ``ValueError`` listing the available names; an
output with no tensor, a 0-d or complex tensor -> ``ValueError``; a selected module that does
not run in the forward -> ``ValueError`` naming it.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["LayerSelector", "REDUCTIONS", "reduce_output", "capture_activations"]

#: Allowed values of ``reduce``.
REDUCTIONS = ("flatten", "mean", "last")

_AUTO_TYPES = (nn.Linear, nn.modules.conv._ConvNd)
_CONV_TYPES = (nn.modules.conv._ConvNd,)


def _check_reduce(reduce: Any) -> str:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    return reduce


def _names_hint(names: list[str], limit: int = 60) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


class LayerSelector:
    """Which modules to measure: ``"auto"``, a module name/glob, or a list of them.

    Args:
        patterns: ``"auto"``, one pattern, or a non-empty sequence of patterns.
        reduce: ``"flatten"``, ``"mean"`` or ``"last"`` (see the module docstring).
        max_auto: most modules ``"auto"`` selects (evenly spaced over depth); ``None`` = all.

    Raises:
        ValueError: empty/non-string patterns, unknown ``reduce``, bad ``max_auto``.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> list(LayerSelector("auto").resolve(net))
        ['0', '2']
    """

    def __init__(self, patterns: str | Sequence[str] = "auto", reduce: str = "flatten",
                 *, max_auto: int | None = 16) -> None:
        if isinstance(patterns, str):
            patterns = [patterns]
        if (not isinstance(patterns, Sequence) or not patterns
                or not all(isinstance(p, str) and p for p in patterns)):
            raise ValueError("patterns must be 'auto', a module name/glob or a non-empty sequence "
                             f"of them, got {patterns!r}")
        if max_auto is not None and (isinstance(max_auto, bool) or not isinstance(max_auto, int)
                                     or max_auto < 1):
            raise ValueError(f"max_auto must be a positive int or None, got {max_auto!r}")
        self.patterns = list(patterns)
        self.reduce = _check_reduce(reduce)
        self.max_auto = max_auto

    def resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        """The selected modules of ``model`` by name, in ``named_modules()`` order.

        Raises:
            ValueError: a pattern (or ``"auto"``) that matches no module; the message lists
                the available module names.
        """
        named = [(n, m) for n, m in model.named_modules() if n]
        names = [n for n, _ in named]
        chosen: set[str] = set()
        for pattern in self.patterns:
            if pattern == "auto":
                hits = self._auto(named)
                what = "'auto' (leaf Linear/Conv modules)"
            else:
                hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
                what = f"pattern {pattern!r}"
            if not hits:
                raise ValueError(f"layers: {what} matches no module of {type(model).__name__}; "
                                 f"available: [{_names_hint(names)}]")
            chosen.update(hits)
        return {n: m for n, m in named if n in chosen}

    def _auto(self, named: list[tuple[str, nn.Module]]) -> list[str]:
        leaves = [n for n, m in named if isinstance(m, _AUTO_TYPES) and next(m.children(), None) is None]
        k = self.max_auto
        if k is None or len(leaves) <= k:
            return leaves
        if k == 1:
            return [leaves[-1]]
        step = (len(leaves) - 1) / (k - 1)
        return [leaves[round(i * step)] for i in range(k)]

    def __repr__(self) -> str:
        return f"LayerSelector({self.patterns!r}, reduce={self.reduce!r}, max_auto={self.max_auto!r})"


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        hidden = output.get("last_hidden_state")
        if isinstance(hidden, torch.Tensor):
            return hidden
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        return None
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def reduce_output(output: Any, reduce: str, *, channels_first: bool = False) -> torch.Tensor:
    """One module output as a (B, D) float tensor (see the table in the module docstring).

    Args:
        output: a tensor, tuple/list, dict or HF ``ModelOutput`` (an ``OrderedDict`` subclass).
        reduce: ``"flatten"``, ``"mean"`` or ``"last"``.
        channels_first: a 3-d output is [B, C, L] (convolution) rather than [B, T, D].

    Returns:
        (B, D), detached; float32 unless the output is float64.

    Raises:
        ValueError: unknown ``reduce``; no tensor in ``output``; 0-d or complex tensor;
            ``"last"`` on an output with more than 3 dims.
    """
    _check_reduce(reduce)
    t = _first_tensor(output)
    if t is None:
        raise ValueError(f"output must contain a tensor (tensor, tuple/list, dict or ModelOutput), "
                         f"got {type(output).__name__}")
    if t.ndim == 0:
        raise ValueError("output must have a batch dimension, got a 0-d tensor")
    if t.is_complex():
        raise ValueError(f"output must be real, got dtype {t.dtype}")
    t = t.detach()
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    b = t.shape[0]
    if t.ndim == 1:
        return t.reshape(b, 1)
    if t.ndim == 2 or reduce == "flatten":
        return t.reshape(b, -1)
    if t.ndim == 3:
        if channels_first:  # [B, C, L]
            return t.mean(dim=2) if reduce == "mean" else t[:, :, -1]
        return t.mean(dim=1) if reduce == "mean" else t[:, -1, :]
    if reduce == "mean":  # [B, C, *spatial]
        return t.flatten(2).mean(dim=2)
    raise ValueError(f"reduce='last' is defined for [B, T, D] sequence outputs, got shape "
                     f"{tuple(t.shape)}; use 'mean' or 'flatten'")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def capture_activations(model: nn.Module, modules: dict[str, nn.Module],
                        run_forward: Callable[[], Any], *, reduce: str = "flatten") -> dict[str, torch.Tensor]:
    """Outputs of ``modules`` during one no-grad, eval-mode forward, reduced to (N, D).

    Forward hooks on each selected module reduce its output immediately (memory: one (N, D)
    tensor per module, never the full activations of the network). ``run_forward()`` runs
    under ``torch.no_grad()`` with every module of ``model`` in eval mode (dropout off,
    BatchNorm using -- not updating -- its running statistics) and inside a fork of the CPU
    (and the model's CUDA device's) RNG, so the training run's random streams are untouched.
    Afterwards, also when the forward raises: every hook is removed and every module gets back
    its own ``training`` flag (set per module, so mixed train/eval states survive).

    A module called several times in one forward (weight sharing, a recurrent cell) keeps the
    output of its last call.

    Args:
        model: the network whose modes are switched and restored.
        modules: name -> module, e.g. from :meth:`LayerSelector.resolve`.
        run_forward: zero-argument closure running the forward on the probe batch.
        reduce: ``"flatten"``, ``"mean"`` or ``"last"``.

    Returns:
        name -> (N, D) detached float tensor on the device the module computed on.

    Cost: one forward pass of ``model`` on the probe batch.

    Raises:
        ValueError: unknown ``reduce``, empty ``modules``, a module that did not run.
        Whatever ``run_forward`` raises (after cleaning up).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(5, 4)
        >>> acts = capture_activations(net, {"0": net[0]}, lambda: net(x))
        >>> acts["0"].shape
        torch.Size([5, 8])
    """
    _check_reduce(reduce)
    if (not isinstance(modules, Mapping) or not modules
            or not all(isinstance(m, nn.Module) for m in modules.values())):
        raise ValueError(f"modules must be a non-empty dict of name -> nn.Module, got {modules!r}")
    out: dict[str, torch.Tensor] = {}

    def hook_for(name: str, module: nn.Module) -> Callable[..., None]:
        cf = isinstance(module, _CONV_TYPES)

        def hook(_mod: nn.Module, _inputs: Any, output: Any) -> None:
            out[name] = reduce_output(output, reduce, channels_first=cf)

        return hook

    every = list(model.modules()) + list(modules.values())
    modes = [(m, m.training) for m in every]
    handles = []
    device = _model_device(model)
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name, module)))
        for m, _ in modes:
            m.training = False
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            run_forward()
    finally:
        for h in handles:
            h.remove()
        for m, mode in reversed(modes):
            m.training = mode
    missing = [n for n in modules if n not in out]
    if missing:
        raise ValueError(f"modules {missing} did not run during the forward; select modules the "
                         "forward calls")
    return {n: out[n] for n in modules}
