"""The audit log: one row per change, written in the transaction of the change it records.

Because the event and the change commit together, a reader replaying ``events_since(id)``
never sees an event for a change that was rolled back, nor misses one that committed.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .db import Database
from .records import Event

__all__ = [
    "ACTOR_EVENTS",
    "DEFAULT_REPLAY_LIMIT",
    "EventKind",
    "EventLog",
    "append_event",
    "append_events",
    "encode_payload",
]

DEFAULT_REPLAY_LIMIT = 1000


class EventKind(enum.StrEnum):
    """The kinds of events the store writes."""

    AGENT_REGISTERED = "agent.registered"
    AGENT_STATE = "agent.state"
    AGENT_SPAWNED = "agent.spawned"
    AGENT_DESTROYED = "agent.destroyed"
    AGENT_PORT = "agent.port"
    AGENT_MODEL = "agent.model"
    MESSAGE_SENT = "message.sent"
    MESSAGE_CLAIMED = "message.claimed"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_RELEASED = "message.released"
    MESSAGE_STALE = "message.stale"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_DECIDED = "approval.decided"
    APPROVAL_CARRIED_OUT = "approval.carried_out"
    QUESTION_ASKED = "question.asked"
    QUESTION_ANSWERED = "question.answered"
    TURN_STARTED = "turn.started"
    TURN_LOG = "turn.log"
    TURN_ENDED = "turn.ended"
    AGENT_CRASHED = "agent.crashed"
    AGENT_RESTARTING = "agent.restarting"
    AGENT_GIVEN_UP = "agent.given_up"
    NOTES_COMPACTED = "notes.compacted"


ACTOR_EVENTS = frozenset({
    EventKind.TURN_STARTED,
    EventKind.TURN_LOG,
    EventKind.TURN_ENDED,
    EventKind.AGENT_CRASHED,
    EventKind.AGENT_RESTARTING,
    EventKind.AGENT_GIVEN_UP,
    EventKind.NOTES_COMPACTED,
})
"""Kinds no store change writes: the actors record them with :meth:`EventLog.record`."""


_EVENT_COLUMNS = "INSERT INTO events (ts, kind, agent, payload)"
_INSERT_EVENT = f"{_EVENT_COLUMNS} VALUES (?, ?, ?, ?)"


def encode_payload(payload: Mapping[str, Any]) -> str:
    """An event payload as stored: JSON with sorted keys (a stable text for a given payload)."""
    return json.dumps(dict(payload), sort_keys=True)


def append_event(
    db: Database, kind: EventKind, agent: str | None, payload: Mapping[str, Any]
) -> int:
    """Append an event inside the caller's transaction; return its id."""
    db.require_transaction()
    return db.insert(_INSERT_EVENT, (db.now(), str(kind), agent, encode_payload(payload)))


def append_events(
    db: Database, kind: EventKind, ts: float, entries: Sequence[tuple[str | None, str]]
) -> None:
    """Append events of one ``kind`` and time inside the caller's transaction, in order.

    ``entries`` are (agent, payload) with the payload already encoded as
    :func:`encode_payload` does; the rows go in multi-row INSERTs (a batch of sends writes
    one event per message).
    """
    db.require_transaction()
    if entries:
        name = str(kind)
        db.insert_rows(_EVENT_COLUMNS, [(ts, name, agent, payload) for agent, payload in entries])


class EventLog:
    """Reads the audit log for replay (the UI's websocket catches up with it)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def events_since(self, after_id: int, limit: int = DEFAULT_REPLAY_LIMIT) -> list[Event]:
        """Return up to ``limit`` events with an id above ``after_id``, oldest first."""
        rows = self._db.rows(
            "SELECT id, ts, kind, agent, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [
            Event(id=r[0], ts=r[1], kind=r[2], agent=r[3], payload=json.loads(r[4])) for r in rows
        ]

    def latest(self, agent: str, kinds: Sequence[EventKind], limit: int) -> list[Event]:
        """The newest ``limit`` events of ``agent`` of the given kinds, newest first."""
        if not kinds or limit <= 0:
            return []
        marks = ", ".join("?" for _ in kinds)
        rows = self._db.rows(
            f"SELECT id, ts, kind, agent, payload FROM events WHERE agent = ? AND kind IN ({marks}) "
            "ORDER BY id DESC LIMIT ?",
            (agent, *(str(k) for k in kinds), limit),
        )
        return [
            Event(id=r[0], ts=r[1], kind=r[2], agent=r[3], payload=json.loads(r[4])) for r in rows
        ]

    def record(self, kind: EventKind, agent: str | None, payload: Mapping[str, Any]) -> int:
        """Append one event in its own transaction (for facts with no row of their own: turn
        log lines, crashes, restarts); return its id."""
        with self._db.transaction():
            return append_event(self._db, kind, agent, payload)

    def record_many(
        self, entries: list[tuple[EventKind, str | None, Mapping[str, Any]]]
    ) -> list[int]:
        """Append several events in ONE transaction (one fsync for a burst of log lines)."""
        with self._db.transaction():
            return [append_event(self._db, kind, agent, payload) for kind, agent, payload in entries]

    def last_event_id(self) -> int:
        """Return the newest event id ever written, 0 for a fresh log.

        Read from ``sqlite_sequence`` (AUTOINCREMENT's counter) rather than ``max(id)``, so it
        stays right if old events are pruned.
        """
        last = self._db.value("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return int(last or 0)

    def oldest_event_id(self) -> int:
        """The oldest event id the log still holds; one past :meth:`last_event_id` when it
        holds none (everything was pruned, or nothing was written)."""
        oldest = self._db.value(
            "SELECT coalesce((SELECT min(id) FROM events), "
            "(SELECT seq FROM sqlite_sequence WHERE name = 'events') + 1, 1)"
        )
        return int(oldest)
