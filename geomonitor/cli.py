"""The ``geomonitor`` command (also ``python -m geomonitor``).

``geomonitor report RUN [-o report.html]`` writes the HTML report of a run
(:func:`geomonitor.report.write_report`).
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geomonitor",
                                description="geomonitor: the geometry of a model while it trains.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser(
        "report", help="write one self-contained HTML report of a run",
        description="Write one self-contained HTML page (figures inline, no network) with the "
                    "run's loss and sharpness, intrinsic dimension, persistence, neural "
                    "persistence, symmetry, connectivity/equivariance and bookkeeping panels.")
    r.add_argument("run", metavar="RUN",
                   help="a W&B run directory (offline or synced), a Lightning CSVLogger version "
                        "directory, a TensorBoard event directory, an MLflow run directory, a "
                        "Hugging Face trainer_state.json or checkpoint folder, or a JsonlSink file")
    r.add_argument("-o", "--output", default="report.html",
                   help="the HTML file to write (default: report.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 bad run path)."""
    args = _parser().parse_args(argv)
    from geomonitor.report import write_report

    try:
        out = write_report(args.run, args.output)
    except (FileNotFoundError, ValueError) as exc:
        print(f"geomonitor report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {out}")
    return 0
