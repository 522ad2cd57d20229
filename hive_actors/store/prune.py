"""Retention of the store's history: old events and closed mail, pruned in small steps.

The events log, delivered and stale messages, decided approvals and answered questions are
history: the hive runs without them, the dashboard shows their recent part. They are kept for
``[store] retention_days`` and the log and the messages table up to ``max_events`` and
``max_messages`` rows; the rest is deleted by :class:`Pruner`, which the StoreActor drives on
its timer. Each :meth:`Pruner.step` is one bounded DELETE (at most ``prune_batch`` rows, after
reading at most that many) in its own short ``BEGIN IMMEDIATE`` transaction, so a writer (the
bus) waits at most one small step for the write lock, never a whole purge.

What is never pruned, whatever its age: queued and in-flight messages (open mail), messages an
operator question refers to, pending approvals, approved ones not carried out yet, unanswered
questions, and the agents themselves. Event ids stay monotonic (AUTOINCREMENT): a reader that
resumes from a pruned id sees ``oldest_event_id() > since + 1`` and takes a snapshot instead
of a gap (:mod:`hive_actors.httpd.fanout`, ``GET /api/events``).

A freed page is reused by later rows: the file stops growing at its high-water mark rather than
shrinking (sqlite returns space to the disk only on ``VACUUM``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from hive_actors.errors import ConfigError

from .db import Database

__all__ = ["DAY", "PruneReport", "PruneStep", "Pruner", "RetentionLimits", "Table"]

DAY = 86400.0


@dataclass(frozen=True)
class RetentionLimits:
    """How much history the store keeps (``[store]`` keys; 0 turns a limit off)."""

    retention_days: float = 30.0
    """Events, closed messages, decided approvals and answered questions older than this many
    days are pruned (0: kept whatever their age)."""
    max_events: int = 1_000_000
    """The newest this many events are kept at most (0: no cap)."""
    max_messages: int = 200_000
    """Closed messages older than the newest this many (by id) are pruned (0: no cap)."""
    prune_batch: int = 500
    """Most rows one step reads and deletes (one short transaction)."""
    prune_interval: float = 60.0
    """Seconds between pruning runs; a run goes on step by step while there is work."""
    prune_pause: float = 0.05
    """Seconds between two steps of a run: the bus's commits get the write lock in between."""

    def __post_init__(self) -> None:
        for name in ("retention_days", "prune_pause"):
            value = getattr(self, name)
            if _not_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"[store] {name} = {value!r} must be a number 0 or more (0 turns it off)"
                    if name == "retention_days"
                    else f"[store] {name} = {value!r} must be 0 or more seconds"
                )
        for name in ("max_events", "max_messages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"[store] {name} = {value!r} must be a whole number 0 or more "
                    "(0: no cap)"
                )
        if isinstance(self.prune_batch, bool) or not isinstance(self.prune_batch, int) or not (
            1 <= self.prune_batch <= 100_000
        ):
            raise ConfigError(
                f"[store] prune_batch = {self.prune_batch!r} must be a whole number in "
                "1..100000 (rows per pruning step; a few hundred keeps each step short)"
            )
        value = self.prune_interval
        if _not_number(value) or not math.isfinite(value) or value <= 0:
            raise ConfigError(
                f"[store] prune_interval = {value!r} must be a positive number of seconds"
            )

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (else the pruner never runs)."""
        return bool(self.retention_days or self.max_events or self.max_messages)

    def cutoff(self, now: float) -> float:
        """The timestamp below which history is old (-inf: no age limit)."""
        return now - self.retention_days * DAY if self.retention_days else -math.inf


def _not_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float)


class Table(enum.StrEnum):
    """The tables a pruning run visits, in this order (questions before the messages they
    may refer to)."""

    EVENTS = "events"
    QUESTIONS = "questions"
    APPROVALS = "approvals"
    MESSAGES = "messages"


@dataclass(frozen=True)
class PruneStep:
    """What one step did."""

    table: Table | None
    """The table it pruned (None: the run is over, nothing was left to do)."""
    deleted: int
    more: bool
    """Whether the run has more steps to take."""


@dataclass
class PruneReport:
    """What a run did so far, by table."""

    deleted: dict[str, int] = field(default_factory=dict)
    steps: int = 0

    def add(self, step: PruneStep) -> None:
        self.steps += 1
        if step.table is not None and step.deleted:
            self.deleted[str(step.table)] = self.deleted.get(str(step.table), 0) + step.deleted

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


_CLOSED = ("delivered", "stale")


class Pruner:
    """Prunes one store step by step; a run visits each table until it has nothing old left.

    Used from the one thread that owns ``db`` (the StoreActor's). :meth:`start` begins a run at
    ``now``; :meth:`step` takes one bounded step of it and says whether more remain.
    """

    def __init__(self, db: Database, limits: RetentionLimits) -> None:
        self._db = db
        self.limits = limits
        self._tables: list[Table] = []
        self._cut = -math.inf
        self._message_cursor = 0

    @property
    def running(self) -> bool:
        """Whether a run has steps left."""
        return bool(self._tables)

    def start(self, now: float) -> None:
        """Begin a run: history older than ``now - retention_days`` (or past a cap) goes."""
        self._tables = list(Table) if self.limits.enabled else []
        self._cut = self.limits.cutoff(now)
        self._message_cursor = 0

    def run(self, now: float) -> PruneReport:
        """A whole run at once, step after step (tests and tools; the actor paces its steps)."""
        self.start(now)
        report = PruneReport()
        while self.running:
            report.add(self.step())
        return report

    def step(self) -> PruneStep:
        """One bounded DELETE, in its own transaction; ``more``: call again."""
        while self._tables:
            table = self._tables[0]
            with self._db.transaction():
                deleted, more = self._prune(table)
            if not more:
                self._tables.pop(0)
            if deleted or more:
                return PruneStep(table, deleted, bool(self._tables))
        return PruneStep(None, 0, False)

    def _prune(self, table: Table) -> tuple[int, bool]:
        batch = self.limits.prune_batch
        if table is Table.EVENTS:
            return self._events(batch)
        if table is Table.MESSAGES:
            return self._messages(batch)
        if self._cut == -math.inf:
            return 0, False
        if table is Table.QUESTIONS:
            sql = (
                "DELETE FROM questions WHERE id IN (SELECT id FROM questions "
                "WHERE answered IS NOT NULL AND answered < ? ORDER BY id LIMIT ?)"
            )
        else:
            # Pending approvals wait for the operator; approved ones not carried out yet are
            # carried out at the next start: both stay.
            sql = (
                "DELETE FROM approvals WHERE id IN (SELECT id FROM approvals "
                "WHERE status <> 'pending' AND decided IS NOT NULL AND decided < ? "
                "AND NOT (status = 'approved' AND carried_out IS NULL) ORDER BY id LIMIT ?)"
            )
        deleted = self._db.execute(sql, (self._cut, batch))
        return deleted, deleted == batch

    def _events(self, batch: int) -> tuple[int, bool]:
        # The oldest `batch` rows, at most: ids (and, but for clock steps, times) grow with
        # the log, so what is old is a prefix and the read never scans the whole table.
        cap = self._cap_id("events", self.limits.max_events)
        deleted = self._db.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ts FROM events "
            "ORDER BY id LIMIT ?) WHERE id <= ? OR ts < ?)",
            (batch, cap, self._cut),
        )
        return deleted, deleted == batch

    def _messages(self, batch: int) -> tuple[int, bool]:
        # Open mail is interleaved with closed mail: the run walks the table in id order
        # (a cursor, `batch` rows a step) and stops at the first message young enough to stay.
        cap = self._cap_id("messages", self.limits.max_messages)
        rows = self._db.rows(
            "SELECT id, status, coalesce(delivered, created), created FROM messages "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (self._message_cursor, batch),
        )
        if not rows:
            return 0, False
        old = [r for r in rows if r[0] <= cap or r[3] < self._cut]
        ids = [r[0] for r in old if r[1] in _CLOSED and (r[0] <= cap or r[2] < self._cut)]
        deleted = 0
        if ids:
            marks = ", ".join("?" for _ in ids)
            deleted = self._db.execute(
                f"DELETE FROM messages WHERE id IN ({marks}) AND status IN ('delivered', "
                "'stale') AND id NOT IN (SELECT message_id FROM questions "
                "WHERE message_id IS NOT NULL)",
                ids,
            )
        self._message_cursor = rows[-1][0]
        # Past the first message that is neither over the cap nor old, everything is newer.
        more = len(rows) == batch and len(old) == len(rows)
        return deleted, more

    def _cap_id(self, table: str, cap: int) -> int:
        """Rows with an id at or below this are past the ``cap`` newest (-1: no cap)."""
        if not cap:
            return -1
        last = self._db.value("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        return int(last or 0) - cap
