"""geomonitor.monitor.ranks.agree with a scripted gather (the 2-process runs are in
test_monitor_ddp_agree.py): rank 0's values without its rank-local error count, and the
failures of every rank summed per kind."""
from __future__ import annotations

from geomonitor.monitor.ranks import agree, world_size


def test_agree_keeps_rank_zeros_values_and_sums_the_failures():
    sent = []
    rank1 = ({3: {"geometry/id/a": 9.0, "geometry/errors": 4.0}, 5: {"geometry/errors": 4.0}},
             {"id": 2, "sink": 1})

    def gather(obj):
        sent.append(obj)
        return [obj, rank1]

    outbox = {2: {"geometry/id/a": 1.0}, 3: {"geometry/id/a": 2.0, "geometry/errors": 1.0},
              4: {"geometry/errors": 1.0}}
    values, errors = agree(outbox, {"id": 1}, gather=gather)
    assert values == {2: {"geometry/id/a": 1.0}, 3: {"geometry/id/a": 2.0}}
    assert errors == {"id": 3, "sink": 1}
    assert sent == [(outbox, {"id": 1})]


def test_world_size_is_one_without_a_process_group():
    assert world_size() == 1
