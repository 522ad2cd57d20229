"""The board the metrics read the fan-outs from: live clients, sends, and counts that outlive
the fan-outs that made them."""

from __future__ import annotations

import gc

from hive_actors.httpd.fanout import Fanout
from hive_actors.httpd.fanout_board import FanoutBoard, PageTotals
from hive_actors.httpd.fanout_types import Snapshot


def fanout() -> Fanout:
    return Fanout(lambda: Snapshot({}, 0), lambda after, limit: [])


def test_pages_are_summed_by_kind_and_a_gone_fanout_leaves_its_counts() -> None:
    board = FanoutBoard()
    assert board.totals() == {"dashboard": PageTotals(), "agent": PageTotals()}
    dashboard, alice, bob = fanout(), fanout(), fanout()
    board.add("dashboard", dashboard)
    board.add("agent", alice)
    board.add("agent", bob)
    # What the loop thread counts as it sends (set here directly: no loop runs in this test).
    dashboard.counters.shared, dashboard.counters.resyncs = 5, 1
    alice.counters.shared, alice.counters.queued = 3, 2
    bob.counters.shared = 4
    assert board.totals() == {
        "dashboard": PageTotals(clients=0, shared=5, queued=0, resyncs=1),
        "agent": PageTotals(clients=0, shared=7, queued=2, resyncs=0),
    }
    del alice  # an agent destroyed: its page and fan-out go
    gc.collect()
    totals = board.totals()
    assert totals["agent"] == PageTotals(clients=0, shared=7, queued=2, resyncs=0)
    bob.counters.shared += 1
    assert board.totals()["agent"].shared == 8
