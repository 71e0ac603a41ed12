"""Monitor logic, framework-agnostic (torch + numpy): when, what and on which inputs to measure.

* :class:`Every` -- the schedule (:mod:`.schedule`);
* :func:`metric_key`, :data:`FAMILIES` -- metric names, built only here (:mod:`.keys`);
* :class:`ProbeSet` -- the fixed, seeded probe inputs (:mod:`.probe`);
* :class:`LayerSelector`, :func:`reduce_output`, :func:`capture_activations`,
  :class:`LayerCaptureWarning` -- which modules
  and their outputs as (N, D) point clouds (:mod:`.layers`);
* :class:`BackgroundWorker` -- CPU-heavy jobs off the training thread (:mod:`.worker`);
* :class:`OverheadBudget` -- defers due measurements while they cost too much (:mod:`.budget`);
* :class:`Admission` -- which due measurements run now: schedules, queue, budget (:mod:`.admission`);
* :class:`AfterEffectMeter` -- the slowdown a measurement leaves in later steps (:mod:`.aftereffect`);
* alert rules live in :mod:`geomonitor.monitor.alerts`.
"""
from geomonitor.monitor.admission import Admission
from geomonitor.monitor.aftereffect import AfterEffectMeter
from geomonitor.monitor.budget import OverheadBudget
from geomonitor.monitor.keys import FAMILIES, PREFIX, metric_key
from geomonitor.monitor.layers import (REDUCTIONS, LayerCaptureWarning, LayerSelector,
                                      capture_activations, reduce_output)
from geomonitor.monitor.probe import ProbeSet
from geomonitor.monitor.schedule import Every
from geomonitor.monitor.worker import BackgroundWorker

__all__ = ["Every", "FAMILIES", "PREFIX", "metric_key", "ProbeSet", "LayerSelector", "LayerCaptureWarning",
           "REDUCTIONS",
           "reduce_output", "capture_activations", "BackgroundWorker", "OverheadBudget",
           "Admission", "AfterEffectMeter"]
