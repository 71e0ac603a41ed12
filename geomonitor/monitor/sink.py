"""Where the engine hands its numbers: any callable ``sink(metrics, step)``, or a richer object.

The engine calls ``sink.log_metrics(metrics, step)`` with ``metrics`` a dict of float values
keyed by :func:`~geomonitor.monitor.keys.metric_key` and ``step`` the optimizer step the
values *describe* (a background measurement arrives a few steps later, with its own step).
A sink may also have ``log_diagram(key, diagrams, step)``, ``log_profile(key, names, values,
step)``, ``log_spectrum(key, nodes, weights, step)`` and ``alert(title, text, level,
wait_duration)``; :func:`as_sink` fills in no-ops for
what it lacks. Accepted:

* ``None``: nothing is logged (values are still returned by ``Monitor.step``);
* an object with ``log_metrics`` (e.g. :class:`geomonitor.callbacks.sinks.TrainerSink`);
* ``wandb.log`` or a W&B run: wrapped in :class:`geomonitor.callbacks.sinks.WandbSink`,
  which charts ``geometry/*`` against ``geometry/step`` (so late values land on their step)
  and adds to the current W&B row without committing it (the loop's own ``wandb.log`` calls
  keep their steps);
* any other callable: ``fn(metrics, step)``;
* a list or tuple of the above: each called on its own, so one that fails does not keep the
  metric from the others (its first failure is warned; later ones are counted in
  ``failures``).

Example:
    >>> seen = []
    >>> sink = as_sink(lambda metrics, step: seen.append((step, metrics)))
    >>> sink.log_metrics({"geometry/sharpness": 2.0}, 10)
    >>> seen
    [(10, {'geometry/sharpness': 2.0})]
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["as_sink", "FanOut"]

_METHODS = ("log_metrics", "log_diagram", "log_profile", "log_spectrum", "alert", "flush")


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class _Callable:
    def __init__(self, fn: Callable[[dict, int], Any]) -> None:
        self.fn = fn

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.fn(dict(metrics), step)


class _Complete:
    """An object with ``log_metrics``, completed with no-ops for the other methods."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        for name in _METHODS:
            setattr(self, name, getattr(inner, name, _noop))


def _is_wandb(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return isinstance(module, str) and module.split(".")[0] == "wandb"


class FanOut:
    """Several sinks, each called on its own; a failing one never stops the others.

    Attributes:
        sinks: the completed sinks.
        failures: sink index -> number of failed calls.
    """

    def __init__(self, sinks: Sequence[Any]) -> None:
        self.sinks = [as_sink(s) for s in sinks]
        self.failures: dict[int, int] = {}

    def _each(self, method: str, *args: Any) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # noqa: BLE001 - one sink never takes the others down
                self.failures[i] = self.failures.get(i, 0) + 1
                if self.failures[i] == 1:
                    warnings.warn(f"sink {i} ({type(getattr(sink, 'inner', sink)).__name__}) failed "
                                  f"in {method}: {exc!r}; the other sinks still get every value",
                                  RuntimeWarning, stacklevel=3)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._each("log_metrics", metrics, step)

    def log_diagram(self, key: str, diagrams: Any, step: int) -> None:
        self._each("log_diagram", key, diagrams, step)

    def log_profile(self, key: str, names: Any, values: Any, step: int) -> None:
        self._each("log_profile", key, names, values, step)

    def log_spectrum(self, key: str, nodes: Any, weights: Any, step: int) -> None:
        self._each("log_spectrum", key, nodes, weights, step)

    def alert(self, title: str, text: str, level: str = "WARN", wait_duration: float = 300.0) -> None:
        self._each("alert", title, text, level, wait_duration)

    def flush(self) -> None:
        self._each("flush")


def as_sink(sink: Any) -> Any:
    """The engine's view of ``sink`` (see the module docstring).

    Raises:
        TypeError: ``sink`` is none of the accepted kinds.
    """
    if sink is None:
        return FanOut([])
    if isinstance(sink, (FanOut, _Complete)):
        return sink
    if isinstance(sink, (list, tuple)):
        return FanOut(sink)
    if _is_wandb(sink) and (callable(sink) or hasattr(sink, "log")):
        from geomonitor.callbacks.sinks import WandbSink  # the sink layer knows W&B

        return _Complete(WandbSink(getattr(sink, "__self__", None) if callable(sink) else sink))
    if hasattr(sink, "log_metrics"):
        return _Complete(sink)
    if callable(sink):
        return _Complete(_Callable(sink))
    raise TypeError("sink must be None, a callable sink(metrics, step), an object with "
                    f"log_metrics(metrics, step), or a list of those; got {type(sink).__name__}")
