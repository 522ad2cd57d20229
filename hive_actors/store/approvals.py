"""The approval queue: what the manager asks and the operator decides, exactly once.

A decision and its consequence commit together: approving a ``spawn`` registers the agent
(``pending``, for the supervisor to spawn), approving a ``spawn_commit`` moves the draft to
``pending``; an ``apply_commit`` changes no row here (the host applies the ref and restarts the
agent). What the host did is recorded afterwards (:meth:`Approvals.record_outcome`); an approved
row without it is :meth:`Approvals.outstanding`, carried out when the hive starts. Whoever
asked, if it is a registered agent, finds the outcome in its inbox as a
``system`` message from the same transaction.
"""

from __future__ import annotations

import logging
from typing import Any

from hive_actors.errors import Conflict, NotFound, Refused

from .db import Database
from .events import EventKind, append_event
from .messages import enqueue
from .names import validate_name
from .records import AgentState, Approval, ApprovalKind, ApprovalStatus, MessageKind, SendRequest
from .registry import change_state, fetch_agent, register_agent
from .rules import (
    DEFAULT_MAX_BODY_BYTES,
    SYSTEM_SENDER,
    check_approval_request,
    clip_utf8,
    format_ts,
)

__all__ = ["Approvals"]

log = logging.getLogger(__name__)

_COLUMNS = (
    "id, kind, agent, ref, diff, requested_by, requested, status, decided_by, decided, note, "
    "carried_out, outcome, reason"
)
# An operator's note is for humans; the copy in the requester's inbox is capped so a long one
# cannot push the notification over the body limit and block the decision.
_NOTE_IN_MESSAGE = 2000


def _approval(row: tuple[Any, ...]) -> Approval:
    return Approval(
        id=int(row[0]),
        kind=ApprovalKind(row[1]),
        agent=str(row[2]),
        ref=None if row[3] is None else str(row[3]),
        diff=str(row[4]),
        requested_by=str(row[5]),
        requested=float(row[6]),
        status=ApprovalStatus(row[7]),
        decided_by=None if row[8] is None else str(row[8]),
        decided=None if row[9] is None else float(row[9]),
        note=None if row[10] is None else str(row[10]),
        carried_out=None if row[11] is None else float(row[11]),
        outcome=None if row[12] is None else str(row[12]),
        reason=None if row[13] is None else str(row[13]),
    )


def _kind(kind: object) -> ApprovalKind:
    try:
        return ApprovalKind(str(kind))
    except ValueError:
        known = ", ".join(k.value for k in ApprovalKind)
        raise Refused(f"unknown approval kind {kind!r}: use one of {known}") from None


class Approvals:
    """Request, decide and list approvals (one transaction each)."""

    def __init__(self, db: Database, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self._db = db
        self._max_body_bytes = max_body_bytes

    def request(
        self,
        kind: ApprovalKind,
        agent: str,
        *,
        requested_by: str,
        diff: str = "",
        ref: str | None = None,
        reason: str | None = None,
    ) -> Approval:
        """Queue an approval for the operator; return it (``pending``).

        ``spawn`` needs a free, valid name; ``spawn_commit`` a draft agent and a ref;
        ``apply_commit`` an existing agent and a ref; ``revive`` a given-up, stopped or crashed
        agent (``reason``: why, shown to the operator). Raises ConfigError (bad name), Conflict
        (wrong agent state, or the same request is already pending) or Refused.
        """
        kind = _kind(kind)
        if not requested_by:
            raise Refused(f"a {kind} request for {agent} needs a requester; got an empty one")
        with self._db.transaction():
            if kind is ApprovalKind.SPAWN:
                validate_name(agent)
            existing = fetch_agent(self._db, agent)
            check_approval_request(kind, agent, None if existing is None else existing.state, ref)
            twin = self._db.row(
                "SELECT id, requested FROM approvals WHERE status = 'pending' AND kind = ? "
                "AND agent = ?",
                (str(kind), agent),
            )
            if twin is not None:
                raise Conflict(
                    f"approval {twin[0]} already asks for {kind} of {agent} (pending since "
                    f"{format_ts(float(twin[1]))}): wait for the operator, or have it denied first"
                )
            approval_id = self._db.insert(
                "INSERT INTO approvals (kind, agent, ref, diff, requested_by, requested, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(kind), agent, ref, diff, requested_by, self._db.now(), reason),
            )
            append_event(
                self._db,
                EventKind.APPROVAL_REQUESTED,
                agent,
                {"id": approval_id, "kind": str(kind), "ref": ref, "requested_by": requested_by,
                 "reason": reason},
            )
            return self.get(approval_id)

    def get(self, approval_id: int) -> Approval:
        """Return one approval; raise NotFound."""
        row = self._db.row(f"SELECT {_COLUMNS} FROM approvals WHERE id = ?", (approval_id,))
        if row is None:
            raise NotFound(f"no approval with id {approval_id}")
        return _approval(row)

    def decide(self, approval_id: int, approve: bool, by: str, note: str | None = None) -> Approval:
        """Approve or deny a pending approval, exactly once; return it decided.

        A second decision raises Conflict ("approval 12 was already approved by operator at
        …") and changes nothing; so does an approval whose consequence is no longer possible
        (e.g. the name was taken meanwhile) — deny it instead.
        """
        if not by:
            raise Refused(f"a decision on approval {approval_id} needs a decider; got {by!r}")
        with self._db.transaction():
            approval = self.get(approval_id)
            if approval.status is not ApprovalStatus.PENDING:
                assert approval.decided is not None
                raise Conflict(
                    f"approval {approval_id} was already {approval.status} by "
                    f"{approval.decided_by} at {format_ts(approval.decided)}; nothing changed"
                )
            status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
            if approve:
                self._carry_out(approval)
            self._db.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided = ?, note = ? "
                "WHERE id = ?",
                (str(status), by, self._db.now(), note, approval_id),
            )
            append_event(
                self._db,
                EventKind.APPROVAL_DECIDED,
                approval.agent,
                {"id": approval_id, "kind": str(approval.kind), "status": str(status), "by": by},
            )
            self._notify(approval, status, by, note)
            return self.get(approval_id)

    def outstanding(self) -> list[Approval]:
        """Approved approvals not carried out yet (the hive stopped in between), oldest first."""
        rows = self._db.rows(
            f"SELECT {_COLUMNS} FROM approvals WHERE status = 'approved' AND carried_out IS NULL "
            "ORDER BY id"
        )
        return [_approval(row) for row in rows]

    def record_outcome(self, approval_id: int, outcome: str) -> Approval:
        """Record that an approved approval was carried out (``outcome`` says how, or
        ``failed: …``), once; Conflict for a second time, or for one not approved."""
        outcome = clip_utf8(outcome, _NOTE_IN_MESSAGE)
        with self._db.transaction():
            approval = self.get(approval_id)
            if approval.status is not ApprovalStatus.APPROVED:
                raise Conflict(f"approval {approval_id} is {approval.status}: only an approved "
                               "one is carried out")
            if approval.carried_out is not None:
                raise Conflict(f"approval {approval_id} was already carried out at "
                               f"{format_ts(approval.carried_out)} ({approval.outcome})")
            self._db.execute(
                "UPDATE approvals SET carried_out = ?, outcome = ? WHERE id = ?",
                (self._db.now(), outcome, approval_id),
            )
            append_event(
                self._db,
                EventKind.APPROVAL_CARRIED_OUT,
                approval.agent,
                {"id": approval_id, "kind": str(approval.kind), "outcome": outcome},
            )
            return self.get(approval_id)

    def _carry_out(self, approval: Approval) -> None:
        if approval.kind is ApprovalKind.SPAWN:
            register_agent(self._db, approval.agent, state=AgentState.PENDING)
        elif approval.kind is ApprovalKind.SPAWN_COMMIT:
            agent = fetch_agent(self._db, approval.agent)
            if agent is None:
                raise NotFound(f"approval {approval.id}: no agent named {approval.agent!r}")
            change_state(
                self._db,
                agent,
                AgentState.PENDING,
                reason=f"approval {approval.id}",
                ref=approval.ref,
            )

    def _notify(
        self, approval: Approval, status: ApprovalStatus, by: str, note: str | None
    ) -> None:
        asker = fetch_agent(self._db, approval.requested_by)
        if asker is None or asker.state is AgentState.DESTROYED:
            return
        what = f"{approval.kind} {approval.agent}" + (f" @ {approval.ref}" if approval.ref else "")
        body = f"approval {approval.id} ({what}) was {status} by {by}"
        if note:
            clipped = note if len(note) <= _NOTE_IN_MESSAGE else note[:_NOTE_IN_MESSAGE] + " …"
            body += f": {clipped}"
        enqueue(
            self._db,
            SendRequest(
                SYSTEM_SENDER, asker.name, clip_utf8(body, self._max_body_bytes), MessageKind.SYSTEM
            ),
            self._max_body_bytes,
        )

    def pending(self) -> list[Approval]:
        """Pending approvals, oldest first."""
        rows = self._db.rows(
            f"SELECT {_COLUMNS} FROM approvals WHERE status = 'pending' ORDER BY id"
        )
        return [_approval(r) for r in rows]

    def recent(self, limit: int = 100) -> list[Approval]:
        """The newest approvals of any status, newest first."""
        rows = self._db.rows(f"SELECT {_COLUMNS} FROM approvals ORDER BY id DESC LIMIT ?", (limit,))
        return [_approval(r) for r in rows]

    def pending_count(self) -> int:
        """How many approvals wait for the operator."""
        return int(self._db.value("SELECT count(*) FROM approvals WHERE status = 'pending'"))

    def oldest_pending_age(self, now: float | None = None) -> float:
        """Seconds the oldest pending approval has waited; 0.0 if none."""
        oldest = self._db.value("SELECT min(requested) FROM approvals WHERE status = 'pending'")
        if oldest is None:
            return 0.0
        at = self._db.now() if now is None else now
        return max(0.0, at - float(oldest))
