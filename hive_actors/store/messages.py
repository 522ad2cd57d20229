"""The bus's durable part: inboxes with an at-least-once hand-over to turns.

A message's life: ``queued`` (committed; the id goes back to the sender only after the
commit) → ``in_flight`` (handed to a turn by :meth:`Messages.claim`) → ``delivered`` (the turn
ended: :meth:`Messages.ack`). A released turn (:meth:`Messages.release`, or the start-up
recovery after a crash) puts its messages back to ``queued``, and the next turn gets them again,
before newer ones. A spawn marks what is still undelivered for an older generation ``stale``.

Order: ids are allocated in commit order and every hand-over is ``ORDER BY id``, so messages
from one sender to one recipient arrive in the order they were sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hive_actors.errors import Conflict, NotFound, Refused

from .db import Database
from .events import EventKind, append_event
from .records import (
    Agent,
    AgentState,
    InboxStats,
    Message,
    MessageKind,
    MessageStatus,
    SendRequest,
)
from .registry import AgentLookup, fetch_agent, require_agent, require_live_agent
from .rules import DEFAULT_MAX_BODY_BYTES, address_generation, check_body, check_sender

__all__ = ["Messages", "enqueue"]

log = logging.getLogger(__name__)

_COLUMNS = (
    "id, sender, recipient, kind, body, generation, status, turn_id, claims, created, delivered"
)
# Repeated verbatim in every inbox query so the planner can use the partial index.
_OPEN = "status IN ('queued', 'in_flight')"


def _message(row: tuple[Any, ...]) -> Message:
    return Message(
        id=int(row[0]),
        sender=str(row[1]),
        recipient=str(row[2]),
        kind=MessageKind(row[3]),
        body=str(row[4]),
        generation=int(row[5]),
        status=MessageStatus(row[6]),
        turn_id=None if row[7] is None else str(row[7]),
        claims=int(row[8]),
        created=float(row[9]),
        delivered=None if row[10] is None else float(row[10]),
    )


def _kind(kind: object) -> MessageKind:
    try:
        return MessageKind(str(kind))
    except ValueError:
        known = ", ".join(k.value for k in MessageKind)
        raise Refused(f"unknown message kind {kind!r}: use one of {known}") from None


def enqueue(
    db: Database,
    request: SendRequest,
    max_body_bytes: int,
    *,
    to_destroyed_as_stale: bool = False,
    lookup: AgentLookup | None = None,
) -> int:
    """Validate and insert one message inside the caller's transaction; return its id.

    Every check happens before the first write, so a refusal leaves nothing to roll back.
    ``lookup`` finds agent rows (a batch passes a cache, so each agent is read once).

    Raises NotFound for an unknown recipient (or agent sender), Refused for a destroyed
    recipient, a body over ``max_body_bytes``, or a kind that does not match the sender.
    With ``to_destroyed_as_stale`` a message to a destroyed agent is kept as ``stale``
    instead of refused (an operator's answer must be recorded even if its asker is gone).
    """
    db.require_transaction()
    find: AgentLookup = lookup if lookup is not None else (lambda name: fetch_agent(db, name))
    kind = _kind(request.kind)
    if not isinstance(request.body, str):
        raise Refused(f"a message body must be text, got {type(request.body).__name__}")
    size = check_body(request.body, max_body_bytes)
    sender_role = None
    if kind in (MessageKind.PEER, MessageKind.MANAGER):
        sender = require_live_agent(find, request.sender, f"send as {request.sender}")
        sender_role = sender.role
    check_sender(kind, request.sender, sender_role)
    recipient = find(request.recipient)
    if recipient is None:
        raise NotFound(
            f"no agent named {request.recipient!r} to send to: check the name "
            "(the registry lists the hive's agents)"
        )
    status = MessageStatus.QUEUED
    if recipient.state is AgentState.DESTROYED:
        if not to_destroyed_as_stale:
            raise Refused(
                f"cannot send to {recipient.name}: the agent was destroyed and would never "
                "read it — request its spawn again first"
            )
        status = MessageStatus.STALE
    generation = address_generation(recipient.state, recipient.generation)
    message_id = db.insert(
        "INSERT INTO messages (sender, recipient, kind, body, generation, status, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            request.sender,
            recipient.name,
            str(kind),
            request.body,
            generation,
            str(status),
            db.now(),
        ),
    )
    # The body stays in the messages table; the event carries what a live view needs.
    append_event(
        db,
        EventKind.MESSAGE_SENT,
        recipient.name,
        {
            "id": message_id,
            "from": request.sender,
            "kind": str(kind),
            "bytes": size,
            "generation": generation,
            "status": str(status),
        },
    )
    return message_id


class Messages:
    """Inboxes: send, the claim/ack/release hand-over, and inbox metrics."""

    def __init__(self, db: Database, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self._db = db
        self.max_body_bytes = max_body_bytes
        """The body size limit in UTF-8 bytes ([store] max_body_bytes)."""

    def send(
        self, sender: str, recipient: str, body: str, kind: MessageKind = MessageKind.PEER
    ) -> int:
        """Commit one message; return its id once it is durable.

        Raises NotFound (unknown recipient or agent sender) or Refused (body over the limit,
        destroyed recipient, kind not matching the sender); nothing changes then.
        """
        with self._db.transaction():
            return enqueue(
                self._db, SendRequest(sender, recipient, body, kind), self.max_body_bytes
            )

    def send_many(self, requests: Sequence[SendRequest]) -> list[int | Refused]:
        """Commit a batch in ONE transaction (group commit); return an id or a refusal each.

        A refused request changes nothing (every check runs before its first write) and does
        not hold back the others: the bus actor acknowledges each sender with its own result,
        after the single commit returned. Any other error (StoreError) fails the whole batch.
        Each agent row is read once per batch: nothing in a batch changes an agent.
        """
        results: list[int | Refused] = []
        agents: dict[str, Agent | None] = {}

        def lookup(name: str) -> Agent | None:
            if name not in agents:
                agents[name] = fetch_agent(self._db, name)
            return agents[name]

        with self._db.transaction():
            for request in requests:
                try:
                    results.append(
                        enqueue(self._db, request, self.max_body_bytes, lookup=lookup)
                    )
                except Refused as refused:
                    results.append(refused)
        return results

    def get(self, message_id: int) -> Message:
        """Return one message; raise NotFound."""
        row = self._db.row(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        if row is None:
            raise NotFound(f"no message with id {message_id}")
        return _message(row)

    def claim(
        self, agent: str, generation: int, turn_id: str, limit: int | None = None
    ) -> list[Message]:
        """Hand ``agent``'s queued messages for ``generation`` to turn ``turn_id``, in order.

        They become ``in_flight`` until :meth:`ack` (delivered) or :meth:`release` (queued
        again). A turn may claim more than once (each ``recv``). Raises NotFound for an
        unknown agent, Conflict if ``generation`` is not the agent's current one or the turn
        id already holds another agent's messages.
        """
        if not turn_id:
            raise Refused(f"a claim for {agent} needs a turn id, got {turn_id!r}")
        if limit is not None and limit < 1:
            raise Refused(f"a claim limit must be positive or None, got {limit}")
        with self._db.transaction():
            current = require_agent(self._db, agent)
            if current.generation != generation:
                raise Conflict(
                    f"agent {agent} is at generation {current.generation}, the turn asked for "
                    f"generation {generation}: messages go only to the current spawn"
                )
            other = self._db.value(
                "SELECT recipient FROM messages WHERE turn_id = ? AND status = 'in_flight' "
                "AND recipient <> ? LIMIT 1",
                (turn_id, agent),
            )
            if other is not None:
                raise Conflict(
                    f"turn id {turn_id!r} already holds messages of agent {other}: use a turn id "
                    "unique to one agent's turn"
                )
            rows = self._db.rows(
                f"SELECT {_COLUMNS} FROM messages WHERE recipient = ? AND generation = ? "
                f"AND {_OPEN} AND status = 'queued' ORDER BY id LIMIT ?",
                (agent, generation, -1 if limit is None else limit),
            )
            if not rows:
                return []
            ids = [int(r[0]) for r in rows]
            self._db.execute(
                "UPDATE messages SET status = 'in_flight', turn_id = ?, claims = claims + 1 "
                f"WHERE id IN ({','.join('?' * len(ids))})",
                (turn_id, *ids),
            )
            append_event(
                self._db,
                EventKind.MESSAGE_CLAIMED,
                agent,
                {"turn_id": turn_id, "generation": generation, "ids": ids},
            )
            claimed = self._db.rows(
                f"SELECT {_COLUMNS} FROM messages WHERE id IN ({','.join('?' * len(ids))}) "
                "ORDER BY id",
                ids,
            )
            return [_message(r) for r in claimed]

    def ack(self, turn_id: str) -> int:
        """The turn ended: mark its in-flight messages delivered; return how many."""
        return self._settle(turn_id, MessageStatus.DELIVERED, reason="acked")

    def release(self, turn_id: str, *, reason: str = "released") -> int:
        """The turn failed: put its in-flight messages back for the next turn; return how many."""
        return self._settle(turn_id, MessageStatus.QUEUED, reason=reason)

    def release_all(self, *, reason: str = "startup") -> int:
        """Put every in-flight message back (the hive starts: no turn of before survives)."""
        with self._db.transaction():
            turns = self._db.rows(
                "SELECT DISTINCT turn_id FROM messages WHERE status = 'in_flight' ORDER BY turn_id"
            )
            return sum(self._settle(str(t[0]), MessageStatus.QUEUED, reason=reason) for t in turns)

    def _settle(self, turn_id: str, status: MessageStatus, *, reason: str) -> int:
        with self._db.transaction():
            rows = self._db.rows(
                "SELECT id, recipient FROM messages WHERE turn_id = ? AND status = 'in_flight' "
                "ORDER BY id",
                (turn_id,),
            )
            if not rows:
                return 0
            ids = [int(r[0]) for r in rows]
            delivered = self._db.now() if status is MessageStatus.DELIVERED else None
            self._db.execute(
                "UPDATE messages SET status = ?, delivered = ? "
                "WHERE turn_id = ? AND status = 'in_flight'",
                (str(status), delivered, turn_id),
            )
            kind = (
                EventKind.MESSAGE_DELIVERED
                if status is MessageStatus.DELIVERED
                else EventKind.MESSAGE_RELEASED
            )
            append_event(
                self._db, kind, str(rows[0][1]), {"turn_id": turn_id, "ids": ids, "reason": reason}
            )
            return len(ids)

    def undelivered(self, agent: str) -> list[Message]:
        """``agent``'s queued and in-flight messages, oldest first."""
        rows = self._db.rows(
            f"SELECT {_COLUMNS} FROM messages WHERE recipient = ? AND {_OPEN} ORDER BY id",
            (agent,),
        )
        return [_message(r) for r in rows]

    def stale(self, agent: str | None = None, limit: int = 1000) -> list[Message]:
        """Stale messages (for the operator), newest first; all agents when ``agent`` is None."""
        where, params = ("AND recipient = ?", (agent,)) if agent is not None else ("", ())
        rows = self._db.rows(
            f"SELECT {_COLUMNS} FROM messages WHERE status = 'stale' {where} "
            "ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [_message(r) for r in rows]

    def inbox_depth(self, agent: str) -> int:
        """How many messages ``agent`` has not consumed yet (queued + in flight)."""
        return int(
            self._db.value(
                f"SELECT count(*) FROM messages WHERE recipient = ? AND {_OPEN}", (agent,)
            )
        )

    def oldest_age(self, agent: str, now: float | None = None) -> float:
        """Seconds since ``agent``'s oldest unconsumed message was sent; 0.0 if none."""
        oldest = self._db.value(
            f"SELECT min(created) FROM messages WHERE recipient = ? AND {_OPEN}", (agent,)
        )
        if oldest is None:
            return 0.0
        at = self._db.now() if now is None else now
        return max(0.0, at - float(oldest))

    def inbox_stats(self, now: float | None = None) -> dict[str, InboxStats]:
        """Depth and oldest age of every non-destroyed agent, in one query (for metrics)."""
        at = self._db.now() if now is None else now
        rows = self._db.rows(
            "SELECT a.name, count(m.id), min(m.created) FROM agents AS a "
            f"LEFT JOIN messages AS m ON m.recipient = a.name AND m.{_OPEN} "
            "WHERE a.state <> 'destroyed' GROUP BY a.name ORDER BY a.name"
        )
        return {
            str(name): InboxStats(
                agent=str(name),
                depth=int(depth),
                oldest_age=0.0 if oldest is None else max(0.0, at - float(oldest)),
            )
            for name, depth, oldest in rows
        }
