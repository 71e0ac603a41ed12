"""The end-of-run summary: what each family measured, what it cost, how to get more points.

:func:`summarize` reads a :class:`~geomonitor.monitor.Monitor` into a plain dict (what
``Monitor.summary()`` returns); :func:`format_summary` renders it as the table printed at
``close`` on rank 0::

    geomonitor: 1000 steps, monitor cost 4.6% of training (max_overhead 5%)
      family              points  skipped  dropped  errors  cost (steps)  period: asked -> in force
      id                       6        0        0       0           1.2  10 -> 170
      ...
      more points: max_overhead=0.12 runs every family at its asked period

The cost is the family's last measurement (thread plus background CPU) in mean training
steps; ``needed`` is the ``max_overhead`` at which the asked periods would fit.
"""
from __future__ import annotations

from typing import Any

from geomonitor.monitor.cost import PAUSED

__all__ = ["format_summary", "period_text", "summarize"]


def period_text(period: int | None) -> str:
    """``"170 steps"``, ``"paused"`` (no rate affords the family), or ``"-"`` (not known)."""
    if period is None:
        return "-"
    return "paused" if period >= PAUSED else f"{period} steps"


def summarize(monitor: Any) -> dict[str, Any]:
    """Per-family counts, costs and periods of ``monitor``, and the run's totals."""
    cap, periods = monitor.cap, monitor.periods
    families: dict[str, dict[str, Any]] = {}
    needed = 0.0
    for fam in monitor.families:
        name = fam.name
        cost = cap.in_steps(cap.cost[name]) if name in cap.cost else None
        asked = periods.asked(name)
        if cost is not None and asked:
            needed += cost / asked
        families[name] = {
            "enabled": fam.enabled, "points": monitor.measured.get(name, 0),
            "skipped": monitor.skipped.get(name, 0), "dropped": monitor.dropped.get(name, 0),
            "errors": monitor.errors.get(name, 0), "cost_steps": cost,
            "period_asked": asked, "period": periods.in_force(name),
        }
    return {"steps": cap.step, "overhead": cap.overhead(), "max_overhead": cap.fraction,
            "needed_overhead": needed, "families": families}


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def format_summary(s: dict[str, Any]) -> str:
    """The table of :func:`summarize` (module docstring)."""
    cap = "no cap" if s["max_overhead"] is None else f"max_overhead {s['max_overhead']:.0%}"
    lines = [f"geomonitor: {s['steps']} steps, monitor cost {s['overhead']:.1%} of training ({cap})",
             f"  {'family':<20}{'points':>7}{'skipped':>9}{'dropped':>9}{'errors':>8}"
             f"{'cost (steps)':>14}  period: asked -> in force"]
    stretched = False
    for name, f in s["families"].items():
        if not f["enabled"]:
            lines.append(f"  {name:<20}  disabled (see the warning)")
            continue
        force = period_text(f["period"]).replace(" steps", "")
        stretched |= f["period"] != f["period_asked"] or f["skipped"] > 0
        lines.append(f"  {name:<20}{f['points']:>7}{f['skipped']:>9}{f['dropped']:>9}{f['errors']:>8}"
                     f"{_cell(f['cost_steps'], '{:.1f}'):>14}  {_cell(f['period_asked'])} -> {force}")
    if stretched and s["max_overhead"] is not None:
        lines.append(f"  more points: max_overhead={min(1.0, s['needed_overhead']):.2g} runs every family "
                     "at its asked period; or turn families off (<family>_every_n_steps=None)")
    if any(f["dropped"] for f in s["families"].values()):
        lines.append("  dropped: background jobs still pending at a due step (max_pending) or at close")
    if any(f["errors"] for f in s["families"].values()):
        lines.append("  errors: the warnings name each failed measurement (strict=True raises)")
    return "\n".join(lines)
