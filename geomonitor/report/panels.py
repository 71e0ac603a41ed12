"""The report's panels: one matplotlib figure per aspect of the run, each with a line on how
to read it and its reference.

A panel is a function ``(series, tables) -> Panel | None`` (``None`` when the run holds
nothing for it). ``series`` maps a key to ``(steps, values)`` sorted by step; ``tables`` maps
a table key to ``[(step, Table), ...]``. Figures are small (about 10 x 3.2 inches at 80 dpi)
PNGs, so a report of a few dozen layers stays a few hundred KB.
"""
from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from geomonitor.monitor.keys import PREFIX

__all__ = ["PANELS", "Panel"]

Series = dict[str, tuple[list[int], list[float]]]
Tables = dict[str, list[tuple[int, Any]]]

_MAX_LINES = 12     # lines per axis before the rest are left out (named in the caption)
_N_SNAPSHOTS = 4    # steps shown for diagrams and profiles


class Panel(NamedTuple):
    """A titled figure (base64 PNG) with how to read it and its reference."""

    title: str
    png: str
    how: str
    ref: str


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(n: int, width: float = 10.0, height: float = 3.2) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), squeeze=False)
    flat = list(axes.reshape(-1))
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _keys(series: Series, prefix: str) -> list[str]:
    return [k for k in series if k.startswith(prefix)]


def _split(series: Series, family: str) -> dict[str, dict[str, str]]:
    """summary -> layer -> key, for ``geometry/<family>/<layer>/<summary>`` keys."""
    out: dict[str, dict[str, str]] = {}
    for key in _keys(series, f"{PREFIX}/{family}/"):
        rest = key[len(PREFIX) + len(family) + 2:]
        layer, _, summary = rest.rpartition("/")
        out.setdefault(summary or rest, {})[layer or "-"] = key
    return out


def _natural(label: str) -> tuple:
    """Sort key: numbers inside names compare as numbers (``h.2`` before ``h.10``); the
    network ``mean`` last, so a layer keeps its colour from one axis to the next."""
    parts = re.split(r"(\d+)", label)
    return (label == "mean", [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts])


def _lines(ax: Any, series: Series, named: dict[str, str], title: str) -> None:
    for label, key in sorted(named.items(), key=lambda kv: _natural(kv[0]))[:_MAX_LINES]:
        steps, values = series[key]
        ax.plot(steps, values, "o-", ms=2.5, lw=1.2, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if 1 < len(named) <= _MAX_LINES:
        ax.legend(fontsize=7)


def _alert_lines(axes: list[Any], series: Series) -> list[str]:
    names = [k for k in series if k.startswith("alerts/")]
    for key in names:
        for s in series[key][0]:
            for ax in axes:
                ax.axvline(s, color="tab:red", lw=0.8, alpha=0.6)
    return [k.split("/", 1)[1] for k in names]


def _grouped(series: Series, family: str, title: str, how: str, ref: str) -> Panel | None:
    groups = _split(series, family)
    if not groups:
        return None
    fig, axes = _figure(len(groups))
    for ax, (summary, named) in zip(axes, sorted(groups.items())):
        _lines(ax, series, named, summary)
    return Panel(title, _png(fig), how, ref)


def loss_and_sharpness(series: Series, tables: Tables) -> Panel | None:
    loss = {k: k for k in series if "loss" in k.split("/")[-1] and not k.startswith(PREFIX)}
    sharp, ratio = f"{PREFIX}/sharpness", f"{PREFIX}/eos_ratio"
    if not loss and sharp not in series and ratio not in series:
        return None
    fig, axes = _figure(2)
    if loss:
        _lines(axes[0], series, loss, "loss")
        values = [v for k in loss for v in series[k][1] if math.isfinite(v)]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            axes[0].set_yscale("log")
    if sharp in series:
        _lines(axes[1], series, {"sharpness λ_max": sharp}, "sharpness")
        if ratio in series:  # eos_ratio = sharpness / threshold, so threshold = sharpness / ratio
            r = dict(zip(*series[ratio]))
            pts = [(s, v / r[s]) for s, v in zip(*series[sharp]) if r.get(s)]
            if pts:
                axes[1].plot(*zip(*pts), "k--", lw=1, label="threshold (2/η or preconditioned)")
                axes[1].legend(fontsize=7)
    elif ratio in series:
        _lines(axes[1], series, {"eos_ratio": ratio}, "sharpness / threshold")
        axes[1].axhline(1.0, color="k", ls="--", lw=1)
    alerts = _alert_lines(axes, series)
    how = ("Sharpness (top Hessian eigenvalue) rising to the dashed threshold 2/η means training "
           "reached the edge of stability: the loss turns non-monotone; staying above it calls "
           "for a lower learning rate.")
    if alerts:
        how += f" Red lines: alerts ({', '.join(alerts)})."
    return Panel("Loss and sharpness", _png(fig), how,
                 "Cohen et al., Gradient Descent on Neural Networks Typically Occurs at the Edge "
                 "of Stability, ICLR 2021")


def _snapshots(steps: list[int]) -> list[int]:
    if len(steps) <= _N_SNAPSHOTS:
        return steps
    idx = np.linspace(0, len(steps) - 1, _N_SNAPSHOTS).round().astype(int)
    return [steps[i] for i in sorted(set(idx.tolist()))]


def intrinsic_dimension(series: Series, tables: Tables) -> Panel | None:
    layers = {k[len(PREFIX) + 4:]: k for k in _keys(series, f"{PREFIX}/id/")}
    if not layers:
        return None
    fig, axes = _figure(2)
    _lines(axes[0], series, layers, "ID per layer over time")
    profile = [(s, t) for s, t in tables.get(f"{PREFIX}/id_profile", [])
               if {"layer", "value"} <= set(t.columns)]
    if profile:
        # a table per measured step, or (the W&B line-series chart) one table whose ``step``
        # column holds the steps so far: rows regrouped by the step they describe
        shots: dict[int, list[tuple[str, float]]] = {}
        for s, t in profile:
            col = {c: i for i, c in enumerate(t.columns)}
            rows: dict[int, list[tuple[str, float]]] = {}
            for r in t.data:
                rows.setdefault(int(r[col["step"]]) if "step" in col else s, []).append(
                    (r[col["layer"]], r[col["value"]]))
            shots.update(rows)
        for s in _snapshots(sorted(shots)):
            names = [n for n, _ in shots[s]]
            axes[1].plot(range(len(names)), [v for _, v in shots[s]], "o-", ms=3, label=f"step {s}")
        axes[1].set_xticks(range(len(names)), names, rotation=30, fontsize=7, ha="right")
    else:  # the profile from the per-layer values, layers in the order they were logged
        by_step: dict[int, dict[str, float]] = {}
        for name, key in layers.items():
            for s, v in zip(*series[key]):
                by_step.setdefault(s, {})[name] = v
        full = [s for s in sorted(by_step) if len(by_step[s]) == len(layers)]
        for s in _snapshots(full):
            axes[1].plot(range(len(layers)), [by_step[s][n] for n in layers], "o-", ms=3,
                         label=f"step {s}")
        axes[1].set_xticks(range(len(layers)), list(layers), rotation=30, fontsize=7, ha="right")
    axes[1].set_title("ID profile across depth", fontsize=10)
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return Panel("Intrinsic dimension", _png(fig),
                 "The ID of a layer's representation of the probe set: a hunchback profile (rising, "
                 "then falling towards the output) goes with generalization; a layer falling "
                 "towards 1-2 is collapsing.",
                 "Ansuini et al., Intrinsic Dimension of Data Representations in Deep Neural "
                 "Networks, NeurIPS 2019 (TwoNN: Facco et al., Sci. Rep. 2017)")


def persistence(series: Series, tables: Tables) -> Panel | None:
    diagrams = {k: v for k, v in tables.items() if k.startswith(f"{PREFIX}/ph/")
                and all({"dim", "birth", "death"} <= set(t.columns) for _, t in v)}
    if not diagrams:
        return None
    keys = sorted(diagrams)[:3]
    steps_of = {k: _snapshots(sorted(dict(diagrams[k]))) for k in keys}
    n_cols = max(len(v) for v in steps_of.values())
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(keys), n_cols, figsize=(2.6 * n_cols, 2.5 * len(keys)),
                             squeeze=False)
    for i, key in enumerate(keys):
        shots = dict(diagrams[key])
        layer = key[len(PREFIX) + 4:].rsplit("/", 1)[0]
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(steps_of[key]):
                ax.set_visible(False)
                continue
            s = steps_of[key][j]
            t = shots[s]
            col = {c: n for n, c in enumerate(t.columns)}
            d = np.asarray([[r[col["dim"]], r[col["birth"]], r[col["death"]]] for r in t.data],
                           dtype=float).reshape(-1, 3)
            top = float(d[:, 1:].max()) if d.size else 1.0
            for dim in sorted(set(d[:, 0].astype(int).tolist())):
                m = d[:, 0] == dim
                ax.scatter(d[m, 1], d[m, 2], s=6, label=f"H{dim}")
            ax.plot([0, top], [0, top], "k:", lw=0.8)
            ax.set_title(f"{layer}, step {s}", fontsize=8)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    return Panel("Persistence diagrams", _png(fig),
                 "Each point is a feature (H0: a cluster, H1: a loop) of the probe set's "
                 "representation, born and dying as the scale grows; points far from the diagonal "
                 "are robust. Training usually simplifies the topology layer after layer.",
                 "Naitzat, Zhitnikov & Lim, Topology of Deep Neural Networks, JMLR 2020")


def persistence_summaries(series: Series, tables: Tables) -> Panel | None:
    groups = {s: n for s, n in _split(series, "ph").items() if s != "diagram"}
    if not groups:
        return None
    fig, axes = _figure(len(groups))
    for ax, (summary, named) in zip(axes, sorted(groups.items())):
        _lines(ax, series, named, summary)
    return Panel("Persistence summaries over time", _png(fig),
                 "Total persistence, entropy and number of bars per homology dimension and layer: "
                 "falling values mean the representation gets simpler (fewer, shorter-lived "
                 "features).", "Edelsbrunner & Harer, Computational Topology, AMS 2010")


def neural_persistence(series: Series, tables: Tables) -> Panel | None:
    keys = _keys(series, f"{PREFIX}/neural_persistence/")
    if not keys:
        return None
    fig, axes = _figure(1, width=6.0)
    _lines(axes[0], series, {k.rsplit("/", 1)[1]: k for k in keys}, "neural persistence")
    return Panel("Neural persistence", _png(fig),
                 "The persistence of each layer's weight graph, normalized: it rises as the "
                 "network learns structure and plateaus when learning stops (a stopping signal).",
                 "Rieck et al., Neural Persistence, ICLR 2019")


def symmetry(series: Series, tables: Tables) -> Panel | None:
    return _grouped(series, "symmetry", "Symmetry",
                    "Imbalance between a layer's incoming and outgoing weights (gradient flow keeps "
                    "it constant, noise and weight decay shrink it); ranks falling and dead or "
                    "duplicate units rising mean capacity lost to symmetry.",
                    "Du, Hu & Lee, NeurIPS 2018; Ziyin et al., arXiv 2502.05300 (2025)")


def collapse(series: Series, tables: Tables) -> Panel | None:
    return _grouped(series, "neural_collapse", "Neural collapse",
                    "NC1 (within-class variability over between-class) falling towards 0 means "
                    "the last features collapse to their class means, typical of the terminal "
                    "phase of training.", "Papyan, Han & Donoho, PNAS 2020")


def connectivity(series: Series, tables: Tables) -> Panel | None:
    return _grouped(series, "connectivity", "Mode connectivity",
                    "The loss barrier on the straight line between two solutions: near 0 means "
                    "they lie in one linearly connected basin.",
                    "Frankle et al., Linear Mode Connectivity and the Lottery Ticket Hypothesis, "
                    "ICML 2020")


def equivariance(series: Series, tables: Tables) -> Panel | None:
    return _grouped(series, "equivariance", "Equivariance",
                    "How far a layer's output is from commuting with a transformation of the "
                    "input: 0 is exactly equivariant; falling values mean the symmetry is learned.",
                    "Lenc & Vedaldi, Understanding Image Representations by Measuring their "
                    "Equivariance and Equivalence, CVPR 2015")


def bookkeeping(series: Series, tables: Tables) -> Panel | None:
    named = {}
    for fam in ("skipped", "dropped"):
        named.update({f"{fam}: {k.rsplit('/', 1)[1]}": k for k in _keys(series, f"{PREFIX}/{fam}/")})
    if f"{PREFIX}/errors" in series:
        named["errors"] = f"{PREFIX}/errors"
    if not named:
        return None
    fig, axes = _figure(1, width=6.0)
    _lines(axes[0], series, named, "skipped / dropped / errors (counts)")
    return Panel("Skipped, dropped and errors", _png(fig),
                 "Running counts: skipped = occurrences the cost cap left out, dropped = background "
                 "measurements dropped as too many were pending, errors = failed measurements. "
                 "Flat is healthy.", "geomonitor README, 'Guarantees'")


PANELS: tuple[Callable[[Series, Tables], Panel | None], ...] = (
    loss_and_sharpness, intrinsic_dimension, persistence, persistence_summaries,
    neural_persistence, symmetry, collapse, connectivity, equivariance, bookkeeping)
