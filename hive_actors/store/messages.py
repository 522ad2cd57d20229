"""The bus's durable part: inboxes with an at-least-once hand-over to turns.

A message's life: ``queued`` (committed; the id goes back to the sender only after the
commit) → ``in_flight`` (handed to a turn by :meth:`Messages.claim`) → ``delivered`` (the turn
ended: :meth:`Messages.ack`). A released turn (:meth:`Messages.release`, or the start-up
recovery after a crash) puts its messages back to ``queued``, and the next turn gets them again,
before newer ones. A generation is an incarnation: what is still undelivered when an agent is
destroyed goes ``stale``; no restart of anything does that.

Order: ids are allocated in commit order and every hand-over is ``ORDER BY id``, so messages
from one sender to one recipient arrive in the order they were sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hive_actors.errors import Conflict, NotFound, Refused

from .db import Database
from .events import EventKind, append_event, append_events
from .handover import settle
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
from .rules import DEFAULT_MAX_BODY_BYTES, check_body, check_sender

__all__ = ["Messages", "enqueue", "sent_payload"]

log = logging.getLogger(__name__)

_COLUMNS = (
    "id, sender, recipient, kind, body, generation, status, turn_id, claims, created, delivered"
)
# Repeated verbatim in every inbox query so the planner can use the partial index.
_OPEN = "status IN ('queued', 'in_flight')"


_KINDS = {kind.value: kind for kind in MessageKind}
_STATUSES = {status.value: status for status in MessageStatus}


def _message(row: tuple[Any, ...]) -> Message:
    # Built once per listed message: positional arguments and dict lookups instead of Enum
    # calls cost a third. The columns' types are the schema's own (INTEGER PRIMARY KEY, TEXT,
    # INTEGER and REAL affinities), so the values need no conversion.
    return Message(
        row[0], row[1], row[2], _KINDS[row[3]], row[4], row[5], _STATUSES[row[6]], row[7],
        row[8], row[9], row[10],
    )


def _kind(kind: object) -> MessageKind:
    if type(kind) is MessageKind:  # the common case, without Enum's lookup machinery
        return kind
    try:
        return MessageKind(str(kind))
    except ValueError:
        known = ", ".join(k.value for k in MessageKind)
        raise Refused(f"unknown message kind {kind!r}: use one of {known}") from None


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a message from one sender of one kind to one recipient goes, once checked."""

    recipient: str
    kind: str
    generation: int
    status: str


_RouteKey = tuple[str, str, MessageKind]
"""(sender, recipient, kind): everything a route depends on besides the agent rows."""

_INSERT_MESSAGES = (
    "INSERT INTO messages (sender, recipient, kind, body, generation, status, created)"
)
# What json.dumps uses for a string with its default ensure_ascii=True (the C encoder).
_json_str = json.encoder.encode_basestring_ascii


def sent_payload(
    message_id: int, sender: str, kind: str, size: int, generation: int, status: str
) -> str:
    """The ``message.sent`` event's payload, exactly as :func:`events.encode_payload` writes it.

    Formatted directly because it is written once per message on the bus's hot path, where
    building a dict and running the generic encoder was a measurable share of a send.
    """
    return (
        f'{{"bytes": {size}, "from": {_json_str(sender)}, "generation": {generation}, '
        f'"id": {message_id}, "kind": {_json_str(kind)}, "status": {_json_str(status)}}}'
    )


def _route(
    request: SendRequest, kind: MessageKind, find: AgentLookup, to_destroyed_as_stale: bool
) -> _Route:
    """Check the sender and recipient of ``request``; raise NotFound or Refused."""
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
    # Addressed to the current incarnation: a generation changes only when the name is
    # created anew, so the mail of a stopped or restarting agent is still its own.
    return _Route(recipient.name, str(kind), recipient.generation, str(status))


def _check(
    request: SendRequest,
    max_body_bytes: int,
    find: AgentLookup,
    to_destroyed_as_stale: bool,
    routes: dict[_RouteKey, _Route] | None = None,
) -> tuple[_Route, int]:
    """Validate ``request`` without writing; return its route and its body's UTF-8 size.

    ``routes`` caches the routes already checked in this transaction (nothing in a batch
    changes an agent, so one check per sender, recipient and kind is enough). The order of
    the checks decides which refusal a request with several faults gets: kind, body, sender,
    recipient.
    """
    kind = _kind(request.kind)
    if not isinstance(request.body, str):
        raise Refused(f"a message body must be text, got {type(request.body).__name__}")
    size = check_body(request.body, max_body_bytes)
    if routes is None:
        return _route(request, kind, find, to_destroyed_as_stale), size
    key = (request.sender, request.recipient, kind)
    route = routes.get(key)
    if route is None:
        # Refusals are not cached: each request gets its own exception object.
        route = routes[key] = _route(request, kind, find, to_destroyed_as_stale)
    return route, size


def _insert(db: Database, checked: Sequence[tuple[SendRequest, _Route, int]]) -> list[int]:
    """Write checked messages and their ``message.sent`` events; return the stored ids.

    Multi-row INSERTs (:meth:`Database.insert_rows`): a batch's messages cost one sqlite
    call, and their events another, instead of one each per message.
    """
    now = db.now()
    ids = db.insert_rows(
        _INSERT_MESSAGES,
        [
            (request.sender, route.recipient, route.kind, request.body, route.generation,
             route.status, now)
            for request, route, _ in checked
        ],
    )
    # The body stays in the messages table; the event carries what a live view needs.
    append_events(
        db,
        EventKind.MESSAGE_SENT,
        now,
        [
            (route.recipient, sent_payload(message_id, request.sender, route.kind, size,
                                           route.generation, route.status))
            for message_id, (request, route, size) in zip(ids, checked)
        ],
    )
    return ids


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
    ``lookup`` finds agent rows (default: read them from ``db``).

    Raises NotFound for an unknown recipient (or agent sender), Refused for a destroyed
    recipient, a body over ``max_body_bytes``, or a kind that does not match the sender.
    With ``to_destroyed_as_stale`` a message to a destroyed agent is kept as ``stale``
    instead of refused (an operator's answer must be recorded even if its asker is gone).
    """
    db.require_transaction()
    find: AgentLookup = lookup if lookup is not None else (lambda name: fetch_agent(db, name))
    route, size = _check(request, max_body_bytes, find, to_destroyed_as_stale)
    return _insert(db, [(request, route, size)])[0]


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
        """
        with self._db.transaction():
            return self.enqueue_many(requests)

    def enqueue_many(self, requests: Sequence[SendRequest]) -> list[int | Refused]:
        """:meth:`send_many` inside the caller's transaction (the bus's group commit).

        Each sender/recipient pair is checked once per call (nothing in a batch changes an
        agent), and the accepted rows are written after all the checks, with one multi-row
        INSERT for the messages and one for their events. No savepoint is needed: a refusal
        happens before any write, and any other error fails the caller's transaction.
        """
        self._db.require_transaction()
        agents: dict[str, Agent | None] = {}
        routes: dict[_RouteKey, _Route] = {}

        def lookup(name: str) -> Agent | None:
            if name not in agents:
                agents[name] = fetch_agent(self._db, name)
            return agents[name]

        results: list[int | Refused | None] = []
        checked: list[tuple[SendRequest, _Route, int]] = []
        for request in requests:
            try:
                route, size = _check(request, self.max_body_bytes, lookup, False, routes)
            except Refused as refused:
                results.append(refused)
            else:
                results.append(None)  # the id, once the rows are written below
                checked.append((request, route, size))
        ids = iter(_insert(self._db, checked) if checked else [])
        return [next(ids) if result is None else result for result in results]

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
                    f"generation {generation}: messages go only to the current incarnation"
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
            ids = [r[0] for r in rows]
            # The ids travel as one JSON parameter: one statement text whatever their number,
            # so it is prepared once.
            self._db.execute(
                "UPDATE messages SET status = 'in_flight', turn_id = ?, claims = claims + 1 "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (turn_id, json.dumps(ids)),
            )
            append_event(
                self._db,
                EventKind.MESSAGE_CLAIMED,
                agent,
                {"turn_id": turn_id, "generation": generation, "ids": ids},
            )
            # The rows as the UPDATE left them, without reading them again.
            return [
                Message(r[0], r[1], r[2], _KINDS[r[3]], r[4], r[5], MessageStatus.IN_FLIGHT,
                        turn_id, r[8] + 1, r[9], r[10])
                for r in rows
            ]

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
        return settle(self._db, status, reason=reason, turn_id=turn_id)

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
