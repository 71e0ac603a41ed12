"""The monitor engine, framework-agnostic (torch + numpy): when, what and on which inputs to measure.

* :class:`Monitor` -- the engine any training loop drives (:mod:`.engine`);
* :class:`CostCap` -- skip a due measurement that would exceed ``max_overhead`` (:mod:`.cost`);
* :class:`Family`, :class:`Context`, :class:`Measurement` -- the family contract (:mod:`.family`);
  the families and :func:`build_families` in :mod:`geomonitor.monitor.families`;
* :class:`Every` -- the schedule (:mod:`.schedule`);
* :func:`metric_key`, :data:`FAMILIES` -- metric names, built only here (:mod:`.keys`);
* :class:`ProbeSet` -- the fixed, seeded probe inputs (:mod:`.probe`);
* :class:`LayerSelector`, :func:`reduce_output`, :func:`capture_activations`,
  :class:`LayerCaptureWarning` -- which modules
  and their outputs as (N, D) point clouds (:mod:`.layers`);
* :class:`BackgroundWorker` -- CPU-heavy jobs off the training thread (:mod:`.worker`);
* :func:`as_sink` -- what the engine accepts as a sink (:mod:`.sink`);
* alert rules live in :mod:`geomonitor.monitor.alerts` (transformer instability rules in
  :mod:`geomonitor.monitor.attention_alerts`).
* early stopping on neural persistence (Rieck et al. 2019), ``Monitor(stopping=...)``:
  :mod:`geomonitor.monitor.early_stopping`.
"""
from geomonitor.monitor.cost import CostCap
from geomonitor.monitor.engine import Monitor, MonitorWarning
from geomonitor.monitor.family import Context, Family, Measurement
from geomonitor.monitor.keys import FAMILIES, PREFIX, metric_key
from geomonitor.monitor.layers import (REDUCTIONS, LayerCaptureWarning, LayerSelector,
                                      capture_activations, reduce_output)
from geomonitor.monitor.probe import ProbeSet
from geomonitor.monitor.schedule import Every
from geomonitor.monitor.sink import as_sink
from geomonitor.monitor.worker import BackgroundWorker

__all__ = ["Monitor", "MonitorWarning", "CostCap", "Family", "Context", "Measurement", "Every",
           "FAMILIES", "PREFIX", "metric_key", "ProbeSet", "LayerSelector", "LayerCaptureWarning",
           "REDUCTIONS", "reduce_output", "capture_activations", "BackgroundWorker", "as_sink"]
