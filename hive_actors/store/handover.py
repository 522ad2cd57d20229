"""Settling in-flight messages: the end of a hand-over, shared by the inboxes and the registry.

A claimed message is ``in_flight`` until the turn that took it ends: delivered when it ended
well, queued again otherwise. The registry settles an agent's in-flight mail too when a new
AgentActor starts it (no turn of an earlier start can still end), in the same transaction as the
start, so a message is never left in flight by a turn that no longer exists.
"""

from __future__ import annotations

from .db import Database
from .events import EventKind, append_event
from .records import MessageStatus

__all__ = ["settle"]


def settle(
    db: Database,
    status: MessageStatus,
    *,
    reason: str,
    turn_id: str | None = None,
    recipient: str | None = None,
) -> int:
    """Move the in-flight messages of ``turn_id`` (or of every turn of ``recipient``) to
    ``status`` (delivered or queued) inside one transaction; record one event per turn; return
    how many moved."""
    if (turn_id is None) == (recipient is None):
        raise ValueError("settle needs exactly one of turn_id and recipient")
    column, value = ("turn_id", turn_id) if turn_id is not None else ("recipient", recipient)
    with db.transaction():
        delivered = db.now() if status is MessageStatus.DELIVERED else None
        rows = db.rows(
            "UPDATE messages SET status = ?, delivered = ? "
            f"WHERE {column} = ? AND status = 'in_flight' RETURNING id, recipient, turn_id",
            (str(status), delivered, value),
        )
        if not rows:
            return 0
        kind = (
            EventKind.MESSAGE_DELIVERED
            if status is MessageStatus.DELIVERED
            else EventKind.MESSAGE_RELEASED
        )
        by_turn: dict[str, list[tuple[int, str]]] = {}
        for message_id, to, turn in rows:
            by_turn.setdefault(str(turn), []).append((int(message_id), str(to)))
        for turn in sorted(by_turn):
            taken = sorted(by_turn[turn])  # RETURNING's order is unspecified
            append_event(
                db,
                kind,
                taken[0][1],
                {"turn_id": turn, "ids": [i for i, _ in taken], "reason": reason},
            )
        return len(rows)
