"""StatsActor: writes the hive's telemetry rows ``(agent, ts, key, value)`` and keeps the totals
``/metrics`` reads.

It is the hive's ``stats`` service. Each AgentActor tells it a
:class:`~hive_actors.protocol.TurnRecord` per finished turn; a sampling tick
(``sample_interval``, 15 s) reads inboxes, queues and notes files; a slow tick
(``retention_interval``, 10 min) downsamples and drops old rows (:mod:`.retention`). Rows are
written **batched** on the actor's own store connection: turn records that arrive together
are written by one ``_Flush`` queued behind them (the bus's group commit), a tick's rows in one
transaction. A write that fails is logged and counted (``hive_stats_write_errors_total``) and
never reaches the agent: a turn record is a tell.

The series (``ts`` is wall-clock seconds; a turn's rows carry its end time):

Per turn, agent = the agent (event keys: downsampled by **sum**)

=======================================  ==================================================
``turns``                                1 (turns/min: sum per minute)
``turn.outcome.<o>``                     1, o in ok, compact-retry, failure, timeout,
                                         cancelled (failure: CLI error, no TurnEnd, or an
                                         error the agent added)
``turn.duration_s``                      the turn's duration
``turn.duration_le.<bound>``             1 in the histogram bucket of the duration
                                         (bounds: ``keys.DURATION_BUCKETS``)
``turn.tool_calls``                      tool calls in the turn
``tool.<name>``                          calls of that tool in the turn (full tool name)
``turn.permission_denials``              tool calls refused for lack of an allow rule
``received`` / ``received.<kind>``       messages the turn consumed, total / by kind
``sent`` / ``sent.<kind>``               messages the agent sent during the turn
                                         (messages table: sender = agent, created within
                                         [started, ended]; questions it asked), total / by
                                         recipient: peer, operator (questions), manager,
                                         system (``series.recipient_kind``)
``tokens.<type>``                        tokens by type (input, output, cache_read,
                                         cache_creation)
``tokens.<type>@<model>``                the same, under the model that answered
``cost_usd`` / ``cost_usd@<model>``      the turn's cost (CLI estimate), total / by model
``model@<model>``                        1: the model that answered the turn
=======================================  ==================================================

Per sampling tick (gauges: downsampled by **max**; an unchanged value — or an age that only
grew with the clock — is rewritten only every ``gauge_heartbeat`` seconds)

=======================================  ==================================================
``inbox.depth``                          undelivered messages now
``inbox.depth_max``                      the largest depth sampled over ``depth_window``
``inbox.oldest_age_s``                   age of the oldest undelivered message
``since_last_turn_s``                    seconds since its last turn ended (since it was
                                         registered, if it never had one)
``notes.bytes``                          size of ``<state>/notes.md`` (absent: no row)
``approvals.pending`` (agent ``_hive``)  approvals waiting for the operator
``approvals.oldest_age_s`` (``_hive``)   how long the oldest has waited
``questions.pending`` (``_hive``)        operator questions not answered
=======================================  ==================================================
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hive_actors.actor import HiveActor, unexpected
from hive_actors.clock import Clock, Timer
from hive_actors.errors import StoreError
from hive_actors.hive import Hive
from hive_actors.protocol import TurnRecord
from hive_actors.store import Store

from .config import StatsConfig
from .retention import Cutoffs, cutoffs, plan_retention, scan_ranges
from .series import GaugeFilter, Row, TurnSpan, WindowMax, count_sent, sample_rows, turn_rows
from .storage import (
    apply_retention,
    load_lifecycle,
    load_totals,
    messages_sent,
    read_samples,
    scan_for_retention,
    tail_lifecycle,
    write_rows,
)
from .telemetry import Telemetry

__all__ = [
    "FlushStats",
    "RetainNow",
    "RetentionReport",
    "SampleNow",
    "StatsActor",
    "StatsMessage",
]


@dataclass(frozen=True)
class FlushStats:
    """Ask: write the pending turn records now; answers how many rows were written."""


@dataclass(frozen=True)
class SampleNow:
    """Ask: run a sampling tick now (the timer goes on as before); answers rows written."""


@dataclass(frozen=True)
class RetainNow:
    """Ask: run retention now; answers a :class:`RetentionReport`."""


@dataclass(frozen=True)
class RetentionReport:
    """What one retention run did."""

    scanned: int
    """Rows read (those that crossed a tier boundary since the last run)."""
    dropped: int
    """Rows past the last horizon, deleted."""
    merged: int
    """Rows replaced by per-minute or per-hour aggregates."""
    aggregates: int
    """Aggregate rows written."""
    ok: bool = True
    """False when the run failed (logged and counted; the next run retries)."""


class HeldTurns:
    """Turn records that found no stats actor (it was being restarted): kept, bounded, until
    the next one takes them. Thread-safe."""

    def __init__(self, limit: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._records: deque[TurnRecord] = deque(maxlen=limit)
        self._dropped = 0

    def hold(self, record: TurnRecord) -> None:
        with self._lock:
            if len(self._records) == self._records.maxlen:
                self._dropped += 1  # the oldest gives way
            self._records.append(record)

    def take(self) -> tuple[list[TurnRecord], int]:
        """The held records, and how many older ones gave way to them since the last take."""
        with self._lock:
            records, dropped = list(self._records), self._dropped
            self._records.clear()
            self._dropped = 0
            return records, dropped


@dataclass(frozen=True)
class _Flush:
    pass


@dataclass(frozen=True)
class _Load:
    pass


@dataclass(frozen=True)
class _SampleTick:
    pass


@dataclass(frozen=True)
class _RetainTick:
    pass


StatsMessage = (
    TurnRecord | FlushStats | SampleNow | RetainNow | _Flush | _Load | _SampleTick | _RetainTick
)
"""Every message :class:`StatsActor` accepts; its ``receive`` matches each one."""


class StatsActor(HiveActor):
    """The ``stats`` service (see the module docstring for the series it writes)."""

    SERVICE = "stats"

    def __init__(
        self,
        hive: Hive,
        telemetry: Telemetry,
        *,
        config: StatsConfig | None = None,
        open_store: Callable[[], Store] | None = None,
        clock: Clock | None = None,
        wall: Callable[[], float] = time.time,
        name: str = "stats",
        held: HeldTurns | None = None,
    ) -> None:
        """``held``: where turn records wait while no stats actor runs (taken at each tick)."""
        super().__init__(name=name, clock=clock)
        self.hive = hive
        self.telemetry = telemetry
        self._held = held or HeldTurns()
        self.config = config or StatsConfig()
        self._open_store = open_store or hive.open_store
        self._wall = wall
        self._store: Store | None = None
        self._pending: list[TurnRecord] = []
        self._window = WindowMax(self.config.depth_window)
        self._gauges = GaugeFilter(self.config.gauge_heartbeat)
        self._loaded = False
        self._load_tried = False
        self._cursor = 0
        self._last_cut: Cutoffs | None = None
        self._timers: dict[str, Timer] = {}

    @property
    def store(self) -> Store:
        assert self._store is not None, "the stats actor has no store before on_start"
        return self._store

    # -- lifecycle -------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._store = self._open_store()
        # The totals load runs as the first message, not in on_start: it reads the whole
        # table, and the services started after this one need not wait for it.
        self.actor_ref.tell(_Load())
        self._schedule("sample", self.config.sample_interval, _SampleTick())
        self._schedule("retain", self.config.retention_interval, _RetainTick())
        self.hive.directory.register(self.SERVICE, self.actor_ref)

    def on_stop(self) -> None:
        self.hive.directory.withdraw(self.SERVICE, self.actor_ref)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._store is not None:
            # Turn records already received are written before the connection closes.
            self._write(self._turn_rows())
            self._store.close()

    def _schedule(self, name: str, delay: float, message: Any) -> None:
        self._timers[name] = self.send_after(delay, message)

    # -- messages --------------------------------------------------------------------------------

    def receive(self, message: StatsMessage) -> Any:
        if not self._load_tried:
            # Whatever message comes first (it may have been told before on_start queued the
            # _Load), the totals are loaded before any row is counted on top of them.
            self._load()
        match message:
            case TurnRecord():
                if not self._pending:
                    # Queued behind whatever is in the mailbox now: records that arrive
                    # meanwhile join this batch and share its transaction.
                    self.actor_ref.tell(_Flush())
                self._pending.append(message)
                return None
            case _Flush() | FlushStats():
                return self._write(self._turn_rows())
            case _SampleTick():
                self._schedule("sample", self.config.sample_interval, _SampleTick())
                self._sample()
                return None
            case SampleNow():
                return self._sample()
            case _RetainTick():
                self._schedule("retain", self.config.retention_interval, _RetainTick())
                self._retain()
                return None
            case RetainNow():
                return self._retain()
            case _Load():
                return None  # loaded above, if it was not yet
            case _:
                unexpected(self, message)

    # -- turns -----------------------------------------------------------------------------------

    def _turn_rows(self) -> list[Row]:
        """The rows of every pending record (counted in the telemetry as they are made)."""
        records, self._pending = self._pending, []
        if not records:
            return []
        spans = [TurnSpan(r.agent, float(r.started), float(r.ended)) for r in records]
        try:
            sent = count_sent(spans, messages_sent(self.store.db, spans))
        except Exception as exc:
            # The turns still count; only their sent.* rows read as zero.
            self._failed(f"cannot count the messages sent by {len(records)} turn(s)", exc)
            sent = [Counter() for _ in records]
        rows: list[Row] = []
        for record, out in zip(records, sent, strict=False):
            try:
                made = turn_rows(
                    record.agent, record.started, record.ended, record.end, record.received,
                    record.error, out,
                )
            except Exception as exc:
                self._failed(
                    f"cannot read the turn record {record.turn_id!r} of {record.agent}", exc
                )
                continue
            self.telemetry.add_rows(made)
            rows.extend(made)
        return rows

    # -- sampling --------------------------------------------------------------------------------

    def _sample(self) -> int:
        if not self._loaded:
            self._load()
        # Turns that ended while no stats actor ran (the service held them): counted now.
        held, dropped = self._held.take()
        self._pending.extend(held)
        if dropped:
            self.log.error("%d turn record(s) were lost while no stats actor ran (more than "
                           "the %d held)", dropped, len(held))
        rows = self._turn_rows()
        now = self._wall()
        try:
            samples, hive = read_samples(
                self.store, now, self.telemetry.last_turn, self._notes_path
            )
            events, cursor = tail_lifecycle(self.store.db, self._cursor)
        except Exception as exc:
            self._failed("cannot sample the hive", exc)
        else:
            if self._loaded:
                self._cursor = cursor
                self.telemetry.add_lifecycle(events)
            rows.extend(sample_rows(now, samples, hive, self._window, self._gauges))
        written = self._write(rows)
        if rows and not written:
            self._gauges.forget()  # what was not written is written again next tick
        return written

    def _notes_path(self, agent: str) -> Path:
        return self.hive.agent_paths(agent).state / "notes.md"

    # -- totals ----------------------------------------------------------------------------------

    def _load(self) -> None:
        self._load_tried = True
        try:
            sums, last = load_totals(self.store.db)
            lifecycle, cursor = load_lifecycle(self.store.db)
        except Exception as exc:
            self._failed("cannot load the telemetry totals (retried at the next tick)", exc)
            return
        self.telemetry.load(sums, last, lifecycle)
        self._cursor = cursor
        self._loaded = True
        self.log.info(
            "loaded %d counter series and %d lifecycle event(s) from the store",
            len(sums), sum(lifecycle.values()),
        )

    # -- retention -------------------------------------------------------------------------------

    def _retain(self) -> RetentionReport:
        cut = cutoffs(self._wall(), self.config.retention)
        try:
            rows = scan_for_retention(self.store.db, scan_ranges(cut, self._last_cut))
            plan = plan_retention(rows, cut)
            apply_retention(self.store.db, plan)
        except Exception as exc:
            self._failed("retention failed (retried at the next run)", exc)
            return RetentionReport(0, 0, 0, 0, ok=False)
        self._last_cut = cut
        report = RetentionReport(
            scanned=len(rows),
            dropped=len(plan.drop),
            merged=plan.merged_rows,
            aggregates=len(plan.merges),
        )
        if not plan.empty:
            self.log.info(
                "retention: dropped %d row(s), merged %d into %d aggregate(s)",
                report.dropped, report.merged, report.aggregates,
            )
        return report

    # -- writing ---------------------------------------------------------------------------------

    def _write(self, rows: list[Row]) -> int:
        # A NaN would become NULL (refused by the table), an infinity unreadable JSON.
        finite = [row for row in rows if math.isfinite(row.value)]
        if len(finite) < len(rows):
            self.log.warning(
                "dropped %d stats row(s) with a non-finite value", len(rows) - len(finite)
            )
            rows = finite
        if not rows:
            return 0
        try:
            write_rows(self.store.db, rows)
        except Exception as exc:
            self._failed(f"cannot write {len(rows)} stats row(s); they are lost", exc)
            return 0
        return len(rows)

    def _failed(self, what: str, exc: Exception) -> None:
        self.telemetry.write_failed()
        # A StoreError already says what to do; anything else is a bug worth its traceback.
        if isinstance(exc, StoreError):
            self.log.error("%s: %s", what, exc)
        else:
            self.log.error("%s: %s: %s", what, type(exc).__name__, exc, exc_info=exc)
