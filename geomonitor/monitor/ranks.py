"""One set of values on every rank: what the monitor delivers under ``torch.distributed``.

Every rank measures the same probe set on its own replica, so the values agree -- unless a
measurement fails on one rank only (an out-of-memory on one device, a rank-local file), or a
background job finishes at a different step on each rank. Delivered as they come, the ranks'
``trainer.callback_metrics`` would then differ (keys and values), callbacks such as
``EarlyStopping`` would decide differently per rank, and a failure on a rank other than 0
would never reach the logger (only rank 0 logs).

:func:`agree` is the one collective that prevents it. At the steps where every rank measures
(the asked steps, which all ranks reach together) and at ``close``, each rank contributes
its pending values and its count of failed measurements (``all_gather_object``); every rank
then delivers **rank 0's** values, and adds every rank's new failures to its own counts, so
``Monitor.errors`` (and ``geometry/errors``, their sum, logged at the agreeing step when it
changed) is the **sum over ranks**, the same on every rank and in the checkpoint. Between those steps nothing
is delivered, so background results arrive at the next asked step (or ``close``).

Cost: one ``all_gather_object`` of a small dict per asked step. Failure modes: a rank that
never reaches the agreeing step (only some ranks call ``Monitor.step``) blocks the others,
as any collective does; call the monitor on every rank.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from geomonitor.monitor.keys import metric_key

__all__ = ["world_size", "agree", "torch_gather"]

_ERRORS = metric_key("errors")


def world_size() -> int:
    """Processes in the initialised ``torch.distributed`` group (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def torch_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``all_gather_object``)."""
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def agree(outbox: Mapping[int, Mapping[str, float]], new_errors: Mapping[str, int], *,
          gather: Callable[[Any], list[Any]] = torch_gather
          ) -> tuple[dict[int, dict[str, float]], dict[str, int]]:
    """Rank 0's ``outbox`` (step -> metrics) without its rank-local ``geometry/errors``, and
    the sum over ranks of ``new_errors`` (kind -> failures since the last agreement). A
    collective: every rank calls it at the same point."""
    ranks = gather(({s: dict(m) for s, m in outbox.items()}, dict(new_errors)))
    first = {s: {k: v for k, v in m.items() if k != _ERRORS} for s, m in ranks[0][0].items()}
    total: dict[str, int] = {}
    for _, errors in ranks:
        for kind, n in errors.items():
            total[kind] = total.get(kind, 0) + int(n)
    return {s: m for s, m in first.items() if m}, total
