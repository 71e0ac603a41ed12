"""``TopologyFamily``: Vietoris–Rips persistence (H0, H1) of layer activations, off-thread.

Diagrams by giotto-ph (Pérez, Hess et al. 2021, "giotto-ph: A Python Library for
High-Performance Computation of Persistent Homology of Vietoris–Rips Filtrations") on at
most ``n_landmarks`` maxmin landmarks (first landmark seeded by ``seed + step``), exact H0 on
all points up to ``exact_h0_max_points`` points (default 2048; the default probe set has 256)
and H0 of the landmarks above (the H0 summaries then describe the landmark cloud, within
bottleneck distance ``2 * hausdorff_radius`` of the full cloud's H0, like H1; the keys do not
change); summaries from :func:`geomonitor.topology.summarize`. Topology of
representations along depth and training: Naitzat, Zhitnikov & Lim 2020 ("Topology of deep
neural networks", JMLR). Keys: ``geometry/ph/<layer>/<summary>`` and, for W&B, the diagram
``geometry/ph/<layer>/diagram``.

Two halves: the tensor work (exact H0, landmarks, their distances;
:func:`~geomonitor.topology.prepare_diagrams`) runs on the training thread, on the CPU for
probe sets up to ``CPU_MAX_POINTS`` points (its loops of tiny kernels are slower on an
accelerator at these sizes) and on the activations' device above. giotto-ph, which keeps the
GIL while it computes, runs in a child process
(:class:`~geomonitor.topology.ripser_process.RipserProcess`, created lazily at the first
measurement and stopped by ``close``); the returned job, run by the engine's background
thread, only waits on that child. The training thread never takes a lock the job holds. The
child runs at nice 19 while training runs; :meth:`TopologyFamily.prioritize` (called by
``Monitor.close(wait=True)`` before it waits) brings it back to the training process's
priority where the operating system permits.

Cost: O(N² D) tensor work per layer on the training thread (the exact H0's spanning tree
is most of it: above ``exact_h0_max_points`` only the landmarks' O(N m D) and O(m² D) remain);
giotto-ph (worst case cubic in the number of simplices on m landmarks) on another core, its
CPU time per request reported as ``background_cpu`` (the child's one-time start-up, about a
second of CPU at nice 19, is not: it is no cost of a measurement and would hold the cost
cap's plan back for the whole run; the wall-time overhead in ``benchmarks/bench_defaults.py``
includes it).

Example:
    >>> fam = TopologyFamily(Every(n_epochs=1), n_landmarks=128)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import metric_key
from geomonitor.monitor.schedule import Every

__all__ = ["TopologyFamily", "CPU_MAX_POINTS"]

# a probe set this small is faster on the CPU: prepare_diagrams at N = 1024, D = 256 took
# 18 ms on an H100 host's CPU against 26 ms on the H100 (30 / 35 ms at N = 2048)
CPU_MAX_POINTS = 1024


class TopologyFamily(Family):
    """Persistence summaries (and diagrams) per selected layer (see module doc).

    Args:
        schedule: when to measure.
        maxdim: 0 (H0 only, no child process) or 1.
        n_landmarks: landmarks for H1 (>= 3), ``None`` for all points.
        seed: seed of the landmark choice (``seed + step``).
        log_diagrams: also hand the diagrams to the sink (W&B table and scatter plot).
        solver: ``solver(D, maxdim) -> diagrams`` instead of the giotto-ph child process
            (e.g. ``geomonitor.topology.ripser_process.ripser_in_process``).
        exact_h0_max_points: largest probe set whose H0 is exact on every point; a larger one
            gets H0 of its landmarks (from giotto-ph, off the training thread). ``None``:
            always exact. With ``n_landmarks=None`` H0 is always exact.
    """

    name = "topology"
    needs_activations = True

    def __init__(self, schedule: Every, *, maxdim: int = 1, n_landmarks: int | None = 128,
                 seed: int = 0, log_diagrams: bool = True,
                 solver: Callable[[np.ndarray, int], Any] | None = None,
                 exact_h0_max_points: int | None = 2048) -> None:
        super().__init__(schedule)
        if maxdim not in (0, 1) or isinstance(maxdim, bool):
            raise ValueError(f"maxdim must be 0 or 1, got {maxdim!r}")
        if n_landmarks is not None and (isinstance(n_landmarks, bool) or not isinstance(n_landmarks, int)
                                        or n_landmarks < 3):
            raise ValueError(f"n_landmarks must be an int >= 3 or None, got {n_landmarks!r}")
        if solver is not None and not callable(solver):
            raise ValueError(f"solver must be callable or None, got {solver!r}")
        if exact_h0_max_points is not None and (
                isinstance(exact_h0_max_points, bool) or not isinstance(exact_h0_max_points, int)
                or exact_h0_max_points < 2):
            raise ValueError(f"exact_h0_max_points must be an int >= 2 or None, got "
                             f"{exact_h0_max_points!r}")
        self.exact_h0_max_points = exact_h0_max_points
        self.maxdim = maxdim
        self.n_landmarks = n_landmarks
        self.seed = seed
        self.log_diagrams = bool(log_diagrams)
        self.solver = solver
        self._ripser: Any = None  # created at the first measurement: the family stays picklable

    def close(self) -> None:
        ripser, self._ripser = self._ripser, None
        if ripser is not None:
            ripser.close()

    def prioritize(self) -> None:
        ripser = self._ripser
        if ripser is not None:
            ripser.prioritize()  # where refused, Monitor.close bounds its wait instead

    def run(self, ctx: Context) -> Callable[[], Measurement]:
        from geomonitor.topology import prepare_diagrams

        prepared, errors = {}, []
        for layer, X in ctx.activations().items():
            try:
                if X.shape[0] <= CPU_MAX_POINTS:
                    X = X.cpu()  # no-op on the CPU
                gen = torch.Generator().manual_seed(self.seed + ctx.step)
                exact = (self.n_landmarks is None or self.exact_h0_max_points is None
                         or X.shape[0] <= self.exact_h0_max_points)
                prepared[layer] = prepare_diagrams(X, maxdim=self.maxdim,
                                                   n_landmarks=self.n_landmarks, generator=gen,
                                                   exact_h0=exact)
            except Exception as exc:  # noqa: BLE001 - one layer's failure is reported
                errors.append(exc)
        solver = self.solver
        if solver is None and (self.maxdim > 0 or any(p.distances is not None
                                                      for p in prepared.values())):
            if self._ripser is None:
                from geomonitor.topology.ripser_process import RipserProcess

                # launched by its first call, in the job; nice 19 until prioritize()
                self._ripser = RipserProcess(low_priority=True)
            solver = self._ripser
        log_diagrams = self.log_diagrams
        return lambda: _completed(prepared, errors, solver, log_diagrams)


def _completed(prepared: dict[str, Any], errors: list[BaseException], solver: Any,
               log_diagrams: bool) -> Measurement:
    """Finish prepared diagrams with ``solver`` (run on the background thread)."""
    out = Measurement(errors=list(errors))
    # the child's one-time start-up (imports, ~1 s of CPU at nice 19) is not a cost of each
    # measurement: only its requests' CPU is reported, so the cost cap plans on that
    cpu0 = getattr(solver, "cpu_time", 0.0)
    for layer, prep in prepared.items():
        if getattr(solver, "closed", False):  # the fit is over: measurement cancelled
            break
        try:
            dgms = prep.complete(solver)
            summary = _summarize(dgms)
        except Exception as exc:  # noqa: BLE001 - one layer's failure is reported
            out.errors.append(exc)
            continue
        for s, v in summary.items():
            out.metrics[metric_key("ph", layer, s)] = float(v)
        if log_diagrams:
            seq = getattr(dgms, "diagrams", dgms)
            out.diagrams[metric_key("ph", layer, "diagram")] = [
                np.asarray(d, dtype=float).reshape(-1, 2) for d in seq]
    out.background_cpu = getattr(solver, "cpu_time", 0.0) - cpu0
    return out


def _summarize(dgms: Any) -> dict[str, float]:
    from geomonitor.topology import summarize

    return summarize(dgms)
