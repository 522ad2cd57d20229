"""What the hive's live fan-outs did, for ``/metrics``: clients, events sent, resyncs.

The gateway makes a :class:`~.fanout.Fanout` per site (the dashboard, each agent's page) and
puts it on the hive's :class:`FanoutBoard`; a scrape reads the board from its own thread. The
board holds each fan-out weakly: a site that goes (an agent destroyed, the gateway restarted)
leaves its counts to the board's retired totals, so the exported counters never go back.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Literal

from .fanout import Fanout, FanoutCounters

__all__ = ["FanoutBoard", "PageKind", "PageTotals"]

PageKind = Literal["dashboard", "agent"]
"""Which kind of page a fan-out feeds: the metrics' ``page`` label (agent pages are summed)."""


@dataclass
class PageTotals:
    """One kind of page, summed over its fan-outs."""

    clients: int = 0
    """Websocket clients connected now."""
    shared: int = 0
    """Live events written as one shared frame to an idle client."""
    queued: int = 0
    """Live events sent through a client's own queue (it was busy, or frames cannot be shared)."""
    resyncs: int = 0
    """Clients that fell behind and were fed from the events log instead."""

    def add(self, counters: FanoutCounters) -> None:
        self.shared += counters.shared
        self.queued += counters.queued
        self.resyncs += counters.resyncs


class FanoutBoard:
    """The hive's fan-outs, held weakly; thread-safe."""

    def __init__(self) -> None:
        # Re-entrant: a fan-out may be collected (its callback runs) while the lock is held.
        self._lock = threading.RLock()
        self._live: dict[int, tuple[PageKind, weakref.ref[Fanout], FanoutCounters]] = {}
        self._retired: dict[PageKind, PageTotals] = {}

    def add(self, page: PageKind, fanout: Fanout) -> None:
        """Count ``fanout``'s clients and sends under ``page`` from now on."""
        key = id(fanout)
        counters = fanout.counters

        def gone(_ref: weakref.ref[Fanout]) -> None:
            with self._lock:
                entry = self._live.get(key)
                if entry is not None and entry[2] is counters:
                    del self._live[key]
                    self._retired.setdefault(page, PageTotals()).add(counters)

        with self._lock:
            self._live[key] = (page, weakref.ref(fanout, gone), counters)

    def totals(self) -> dict[PageKind, PageTotals]:
        """Every kind of page (both always present), summed over live and retired fan-outs."""
        with self._lock:
            result: dict[PageKind, PageTotals] = {}
            for page in ("dashboard", "agent"):
                retired = self._retired.get(page, PageTotals())
                result[page] = PageTotals(0, retired.shared, retired.queued, retired.resyncs)
            for page, ref, counters in self._live.values():
                fanout = ref()
                totals = result[page]
                totals.add(counters)
                if fanout is not None:
                    totals.clients += fanout.client_count
            return result
