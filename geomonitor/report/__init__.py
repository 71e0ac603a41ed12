"""``geomonitor report``: one self-contained HTML page that reads a run's geometry.

:func:`write_report` reads a run with :func:`geomonitor.read_run` (any kind it reads) and
writes one HTML file: a panel per aspect the run holds (loss beside sharpness and its
threshold with the alerts, intrinsic dimension over time and across depth, persistence
diagrams and their summaries, neural persistence, symmetry, neural collapse, connectivity,
equivariance, skipped/dropped/errors), each a PNG inlined as base64 with one line on how to
read it and the reference. No script, no external file, no network: it opens from disk.

Cost: one matplotlib figure per panel (about a second in all for a small run). Failure
modes: a panel whose figure fails is replaced by its error message (the rest of the page is
written); a run with no values at all still gives a page that says so.
"""
from __future__ import annotations

import datetime as _dt
import html
import os
from typing import Any

from geomonitor.runs import Table, read_run, run_kind

__all__ = ["render_report", "write_report"]

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
background:#f6f7f9;color:#1d2430}header{background:#1d2430;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;font-size:13px;color:#c9d1dc}
main{max-width:1100px;margin:0 auto;padding:12px 24px}section{background:#fff;border:1px solid
#e1e5ea;border-radius:6px;margin:14px 0;padding:10px 16px}h2{font-size:16px;margin:4px 0}
p.how{font-size:13px;margin:4px 0}p.ref{font-size:11px;color:#66707d;margin:2px 0 8px}
img{max-width:100%;height:auto;display:block}pre{font-size:12px;color:#a33}
table{font-size:12px;border-collapse:collapse}td{padding:1px 10px 1px 0}"""


def _collect(rows: list[Any]) -> tuple[dict, dict]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    tables: dict[str, list[tuple[int, Table]]] = {}
    for r in rows:
        if isinstance(r.value, Table):
            tables.setdefault(r.key, []).append((r.step, r.value))
        else:
            s = series.setdefault(r.key, ([], []))
            s[0].append(r.step)
            s[1].append(r.value)
    return series, tables


def render_report(rows: list[Any], title: str = "geomonitor report") -> str:
    """The HTML page for ``rows`` (as :func:`geomonitor.read_run` gives them)."""
    from geomonitor.report.panels import PANELS

    series, tables = _collect(rows)
    steps = sorted({r.step for r in rows})
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body><header><h1>{html.escape(title)}</h1>"
             f"<p>{len(series)} series, {sum(map(len, tables.values()))} tables, steps "
             f"{steps[0] if steps else '-'}–{steps[-1] if steps else '-'} · written "
             f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC by geomonitor</p>"
             "</header><main>"]
    shown = 0
    for panel_fn in PANELS:
        try:
            panel = panel_fn(series, tables)
        except Exception as exc:  # noqa: BLE001 - one panel never takes the page down
            parts.append(f"<section><h2>{panel_fn.__name__}</h2><pre>panel failed: "
                         f"{html.escape(repr(exc))}</pre></section>")
            continue
        if panel is None:
            continue
        shown += 1
        parts.append(f"<section><h2>{html.escape(panel.title)}</h2><p class=how>"
                     f"{html.escape(panel.how)}</p><p class=ref>{html.escape(panel.ref)}</p>"
                     f"<img alt=\"{html.escape(panel.title)}\" src=\"data:image/png;base64,"
                     f"{panel.png}\"></section>")
    if not shown:
        parts.append("<section><p class=how>This run holds no values geomonitor plots.</p></section>")
    others = sorted(k for k in series if not k.startswith(("geometry/", "alerts/")))
    if others:
        cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{series[k][1][-1]:.6g}</td>"
                        f"<td>step {series[k][0][-1]}</td></tr>" for k in others)
        parts.append(f"<section><h2>Other values (last)</h2><table>{cells}</table></section>")
    parts.append("</main></body></html>")
    return "".join(parts)


def write_report(run: str | os.PathLike, out: str | os.PathLike = "report.html") -> str:
    """Read the run at ``run`` and write its report to ``out``; returns ``out``'s path.

    Raises:
        FileNotFoundError, ValueError: as :func:`geomonitor.read_run`.
    """
    kind, path = run_kind(run)
    rows = read_run(path, kind=kind)
    page = render_report(rows, title=f"geomonitor report: {os.fspath(run)} ({kind})")
    out = os.fspath(out)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return out
