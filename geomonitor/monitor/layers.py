"""What to measure: which modules, and how their outputs become point clouds.

:class:`LayerSelector` turns patterns into modules; :func:`capture_activations` runs one extra
forward on the probe set with forward hooks and returns, per module, an (N, D) float tensor:
the point cloud the intrinsic-dimension and topology estimators take.

**Selection** (``fnmatch.fnmatchcase`` over the names of ``model.named_modules()``, the root
``""`` excluded): an exact name (``"encoder.0"``) or a glob (``"encoder.*"``, ``"*.fc?"``;
``*`` also crosses dots). Order is that of ``named_modules()``; duplicates are removed.

``"auto"`` measures the model's **blocks** (:mod:`geomonitor.monitor.blocks`): the outputs
of the repeated blocks -- the children of an ``nn.ModuleList`` / ``nn.Sequential`` holding at
least two blocks of one class, the outermost such level (``encoder.layers.N``,
``transformer.h.N``, ``layerK.N``) -- plus the head, the last leaf ``Linear`` / HF ``Conv1D`` /
conv layer (``lm_head``, ``fc``) when it is not inside a block; a model without repeated blocks
gets its leaf weight layers (an MLP: ``fc1``, ``fc2``, ``fc3``). At most ``max_auto`` modules,
evenly spaced over depth, first and last kept. :meth:`LayerSelector.describe` states the
selection in one line, for printing once at setup.

**Reduction** of one module output (:func:`reduce_output`): containers are unwrapped first
(tuple/list -> first tensor found, depth first; dict/``ModelOutput`` -> ``last_hidden_state``
when present, else the first tensor value), then:

===================================  ============  ===========================  ==============
output shape (layout)                ``flatten``   ``auto`` = ``mean``           ``last``
===================================  ============  ===========================  ==============
[B]                                  (B, 1)        (B, 1)                       (B, 1)
[B, D]                               (B, D)        (B, D)                       (B, D)
[B, T, D] (tokens; channels last)    (B, T*D)      (B, D) mean over tokens      (B, D) token T-1
[B, C, L] (channels first)           (B, C*L)      (B, C) mean over positions   (B, C) at L-1
[B, C, H, W, ...] (channels first)   (B, C*H*W..)  (B, C) mean over positions   ``ValueError``
[B, H, W, C] (channels last)         (B, H*W*C)    (B, C) mean over positions   ``ValueError``
===================================  ============  ===========================  ==============

Layout (:func:`geomonitor._modules.feature_layout`): a convolution, or a block made of
convolutions, is channels first; a linear-like layer, or a block made of them, maps the last
dim (channels last); otherwise a 3-d output is read as [B, T, D] and a larger one as
[B, C, ...].

What each means geometrically. ``auto`` (the default) is, for every kind of layer, the
feature vector averaged over positions: for a conv map the per-channel global average, the
representation a global-pooling classifier head sees (a point per image in R^C); for tokens
the mean-pooled sequence embedding (Valeriani et al. average over the sequence); a [B, D]
output is already one vector per sample. It is translation invariant and its dimension does
not grow with the resolution or the sequence length. ``flatten`` keeps the whole map (a point
per image in R^{C*H*W}: position-sensitive, 25,088 features for 512x7x7 and estimators
correspondingly slower); ``last`` takes the last token (the one a causal language model
predicts from). ``mean`` is ``auto`` spelled out: the two agree on every shape today.

Memory: each hook reduces the module's output at once, accumulating the mean in float32 in
place of the output (no copy, no float32 cast of a half-precision map); the capture holds one
(N, F) tensor per module. A 256 x 512x7x7 output becomes (256, 512): 0.5 MiB in float32,
against 25.7 MB (49x) with ``flatten``; ID and topology then work on 256 x 512.

**Failure modes**: a pattern matching nothing -> ``ValueError`` listing the available names;
an output with no tensor, a 0-d or complex tensor -> ``ValueError``. A selected module that
does not run in the forward (``nn.MultiheadAttention.out_proj``, whose weights are used
functionally; a dropout skipped in eval) is left out of the capture with one
:class:`LayerCaptureWarning` naming it; if no selected module runs -> ``ValueError``. Token
averages include padding positions: give a probe set without padding (or ``reduce="last"``
on left-padded batches).
"""
from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Mapping, MutableSet, Sequence
from typing import Any

import torch
from torch import nn

from geomonitor._modules import feature_layout
from geomonitor.monitor.blocks import auto_selection

__all__ = ["LayerSelector", "LayerCaptureWarning", "REDUCTIONS", "reduce_output",
           "capture_activations"]

#: Allowed values of ``reduce``.
REDUCTIONS = ("auto", "flatten", "mean", "last")


class LayerCaptureWarning(UserWarning):
    """A selected module did not run during the capture forward and was left out."""


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
        reduce: ``"auto"``, ``"flatten"``, ``"mean"`` or ``"last"`` (see the module docstring).
        max_auto: most modules ``"auto"`` selects (evenly spaced over depth); ``None`` = all.

    Attributes:
        warned: names of modules already reported by :class:`LayerCaptureWarning`; pass it to
            :func:`capture_activations` (``warned=selector.warned``) to warn once per module
            for the selector's lifetime.

    Raises:
        ValueError: empty/non-string patterns, unknown ``reduce``, bad ``max_auto``.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> list(LayerSelector("auto").resolve(net))
        ['0', '2']
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, batch_first=True), 2)
        >>> list(LayerSelector("auto").resolve(enc))
        ['layers.0', 'layers.1']
    """

    def __init__(self, patterns: str | Sequence[str] = "auto", reduce: str = "auto",
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
        self.warned: set[str] = set()
        self._rule: str | None = None  # what "auto" used at the last resolve()
        self._head: str | None = None

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
                hits = self._auto(model, named)
                what = "'auto' (repeated blocks, head, or leaf Linear/Conv modules)"
            else:
                hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
                what = f"pattern {pattern!r}"
            if not hits:
                raise ValueError(f"layers: {what} matches no module of {type(model).__name__}; "
                                 f"available: [{_names_hint(names)}]")
            chosen.update(hits)
        return {n: m for n, m in named if n in chosen}

    def _auto(self, model: nn.Module, named: list[tuple[str, nn.Module]]) -> list[str]:
        names, self._rule, self._head = auto_selection(model, self.max_auto)
        return names

    def describe(self, selected: Mapping[str, nn.Module]) -> str:
        """One line stating the selection: the rule, then the names grouped by class.

        Example: ``layers='auto' -> 9 modules (repeated blocks + head): layer1.0, layer1.1,
        layer2.0, ..., layer4.1 (BasicBlock); fc (Linear, head); reduce='auto' (mean over
        positions/tokens)``.
        """
        if self.patterns == ["auto"]:
            rule = {"blocks": " (repeated blocks + head)" if self._head else " (repeated blocks)",
                    "leaves": " (leaf Linear/Conv layers: no repeated blocks)"}.get(self._rule, "")
            head = "'auto'"
        else:
            rule, head = "", repr(self.patterns if len(self.patterns) > 1 else self.patterns[0])
        groups: list[tuple[str, list[str]]] = []
        for name, module in selected.items():
            cls = type(module).__name__ + (", head" if name == self._head else "")
            if groups and groups[-1][0] == cls:
                groups[-1][1].append(name)
            else:
                groups.append((cls, [name]))
        parts = []
        for cls, names in groups:
            shown = names if len(names) <= 6 else names[:3] + ["..."] + names[-2:]
            parts.append(f"{', '.join(shown)} ({cls})")
        meaning = {"auto": "mean over positions/tokens", "mean": "mean over positions/tokens",
                   "flatten": "whole output flattened", "last": "last token/position"}
        return (f"layers={head} -> {len(selected)} modules{rule}: {'; '.join(parts)}; "
                f"reduce={self.reduce!r} ({meaning[self.reduce]})")

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


def reduce_output(output: Any, reduce: str = "auto", *,
                  channels_first: bool | None = None) -> torch.Tensor:
    """One module output as a (B, D) float tensor (see the table in the module docstring).

    Args:
        output: a tensor, tuple/list, dict or HF ``ModelOutput`` (an ``OrderedDict`` subclass).
        reduce: ``"auto"``, ``"flatten"``, ``"mean"`` or ``"last"``.
        channels_first: where the features are: True = dim 1 ([B, C, ...], convolutions),
            False = the last dim ([B, T, D], [B, H, W, C], linear layers), None = unknown
            (a 3-d output is [B, T, D], a larger one [B, C, ...]).

    Returns:
        (B, D), detached; float32 unless the output is float64. Means accumulate in float32
        (float64 for float64 outputs) without copying the output first.

    Raises:
        ValueError: unknown ``reduce``; no tensor in ``output``; 0-d or complex tensor;
            ``"last"`` on an output with more than 3 dims.

    Example:
        >>> reduce_output(torch.randn(8, 512, 7, 7)).shape
        torch.Size([8, 512])
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
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    b = t.shape[0]
    if t.ndim == 1:
        return t.reshape(b, 1).to(dtype)
    if t.ndim == 2 or reduce == "flatten":
        return t.reshape(b, -1).to(dtype)
    if channels_first is None:
        channels_first = t.ndim > 3
    if reduce == "last":
        if t.ndim > 3:
            raise ValueError(f"reduce='last' is defined for [B, T, D] sequence outputs, got "
                             f"shape {tuple(t.shape)}; use 'auto', 'mean' or 'flatten'")
        return (t[:, :, -1] if channels_first else t[:, -1, :]).to(dtype)
    # "auto" / "mean": average over every dim but the batch and the features
    dims = tuple(range(2, t.ndim)) if channels_first else tuple(range(1, t.ndim - 1))
    return torch.mean(t, dim=dims, dtype=dtype)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def capture_activations(model: nn.Module, modules: dict[str, nn.Module],
                        run_forward: Callable[[], Any], *, reduce: str = "auto",
                        warned: MutableSet[str] | None = None) -> dict[str, torch.Tensor]:
    """Outputs of ``modules`` during one no-grad, eval-mode forward, reduced to (N, D).

    Forward hooks on each selected module reduce its output immediately (memory: one (N, D)
    tensor per module, never the full activations of the network). ``run_forward()`` runs
    under ``torch.no_grad()`` with every module of ``model`` in eval mode (dropout off,
    BatchNorm using -- not updating -- its running statistics) and inside a fork of the CPU
    (and the model's CUDA device's) RNG, so the training run's random streams are untouched.
    Afterwards, also when the forward raises: every hook is removed and every module gets back
    its own ``training`` flag (set per module, so mixed train/eval states survive).

    A module called several times in one forward (weight sharing, a recurrent cell) keeps the
    output of its last call. A module that is not called (its weights used functionally, as
    ``nn.MultiheadAttention.out_proj``; a branch not taken) is left out of the result with a
    :class:`LayerCaptureWarning` naming it; the caller sees it as a name missing from the
    returned dict.

    Args:
        model: the network whose modes are switched and restored.
        modules: name -> module, e.g. from :meth:`LayerSelector.resolve`.
        run_forward: zero-argument closure running the forward on the probe batch.
        reduce: ``"auto"``, ``"flatten"``, ``"mean"`` or ``"last"``; the layout of each
            module's output comes from :func:`geomonitor._modules.feature_layout`.
        warned: names already warned about; a module in it is left out silently, a newly
            missing one is warned about and added. None: warn at every call.

    Returns:
        name -> (N, D) detached float tensor on the device the module computed on, for the
        modules that ran, in the order of ``modules``.

    Cost: one forward pass of ``model`` on the probe batch.

    Raises:
        ValueError: unknown ``reduce``, empty ``modules``, no selected module ran.
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
        layout = feature_layout(module)

        def hook(_mod: nn.Module, _inputs: Any, output: Any) -> None:
            out[name] = reduce_output(output, reduce, channels_first=layout)

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
    if not out:
        raise ValueError(f"none of the selected modules {_names_hint(list(modules), 20)} ran "
                         "during the forward; select modules the forward calls")
    for name in modules:
        if name not in out and (warned is None or name not in warned):
            warnings.warn(f"module {name!r} ({type(modules[name]).__name__}) did not run during "
                          "the forward and is left out of the activations (its weights may be "
                          "used functionally, as nn.MultiheadAttention.out_proj's)",
                          LayerCaptureWarning, stacklevel=2)
            if warned is not None:
                warned.add(name)
    return {n: out[n] for n in modules if n in out}
