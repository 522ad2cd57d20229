"""The store's pure decision logic: no sqlite, no clock, no threads.

The agent lifecycle lives in one table, :data:`TRANSITIONS`; the I/O modules ask
:func:`check_transition` before they write, so an illegal move is refused with the same words
wherever it is attempted.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from hive_actors.errors import Conflict, Refused

from .records import AgentState, ApprovalKind, MessageKind, Role

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ENTERED_VIA",
    "RUNNING_STATES",
    "SPAWN_SOURCES",
    "SYSTEM_SENDER",
    "TRANSITIONS",
    "can_transition",
    "check_approval_request",
    "check_body",
    "check_sender",
    "check_transition",
    "clip_utf8",
    "format_ts",
]

S = AgentState

# Every legal move of the agent lifecycle. A crash can happen in any running state; a stop is
# always possible while the agent has a container; destroy needs the container down first
# (stopped, crashed, given up…) so the backend never destroys a running container behind the
# supervisor's back.
_RUNNING = (S.IDLE, S.BUSY, S.WAITING_APPROVAL, S.WAITING_OPERATOR)
TRANSITIONS: Mapping[AgentState, frozenset[AgentState]] = {
    S.DRAFT: frozenset({S.PENDING, S.DESTROYED}),
    S.PENDING: frozenset({S.STARTING, S.STOPPED, S.DESTROYED}),
    S.STARTING: frozenset({S.IDLE, S.CRASHED, S.STOPPED}),
    S.IDLE: frozenset({S.BUSY, S.WAITING_APPROVAL, S.WAITING_OPERATOR, S.CRASHED, S.STOPPED}),
    S.BUSY: frozenset({S.IDLE, S.WAITING_APPROVAL, S.WAITING_OPERATOR, S.CRASHED, S.STOPPED}),
    S.WAITING_APPROVAL: frozenset({S.IDLE, S.BUSY, S.WAITING_OPERATOR, S.CRASHED, S.STOPPED}),
    S.WAITING_OPERATOR: frozenset({S.IDLE, S.BUSY, S.WAITING_APPROVAL, S.CRASHED, S.STOPPED}),
    S.CRASHED: frozenset({S.BACKOFF, S.STARTING, S.GIVEN_UP, S.STOPPED, S.DESTROYED}),
    S.BACKOFF: frozenset({S.STARTING, S.GIVEN_UP, S.STOPPED, S.DESTROYED}),
    S.GIVEN_UP: frozenset({S.STARTING, S.STOPPED, S.DESTROYED}),
    S.STOPPED: frozenset({S.STARTING, S.DESTROYED}),
    # A destroyed name comes back only through a new draft or an approved spawn.
    S.DESTROYED: frozenset({S.DRAFT, S.PENDING}),
}
"""state -> the states it may move to."""

RUNNING_STATES: frozenset[AgentState] = frozenset(_RUNNING)
"""States in which the agent's container runs and takes turns."""

SPAWN_SOURCES: frozenset[AgentState] = frozenset(
    s for s, targets in TRANSITIONS.items() if S.STARTING in targets
)
"""States from which a spawn (a move to ``starting``) is legal."""

ENTERED_VIA: Mapping[AgentState, str] = {
    S.STARTING: "spawn(name), which bumps the epoch",
    S.DESTROYED: "destroy(name, keep_state=...), which records the kept state",
}
"""States with side effects beyond the state column, entered only through a dedicated call."""

DEFAULT_MAX_BODY_BYTES = 64 * 1024
"""Default message body limit ([store] max_body_bytes)."""

SYSTEM_SENDER = "hive"
"""The sender label of the messages the hive itself writes (kind ``system``)."""


def can_transition(current: AgentState, target: AgentState) -> bool:
    """Return whether the lifecycle allows ``current`` -> ``target``."""
    return target in TRANSITIONS[current]


def check_transition(name: str, current: AgentState, target: AgentState) -> None:
    """Raise :class:`Conflict` if ``name`` may not move from ``current`` to ``target``."""
    if can_transition(current, target):
        return
    allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing"
    raise Conflict(
        f"agent {name} cannot go from {current} to {target}: from {current} it may go to "
        f"{allowed}"
    )


def check_body(body: str, limit: int) -> int:
    """Return the UTF-8 size of ``body``; raise :class:`Refused` past ``limit`` bytes."""
    size = len(body.encode("utf-8"))
    if size > limit:
        raise Refused(
            f"message body is {size} bytes, over the {limit}-byte limit: send a shorter message "
            "or put the content in a file and send its path ([store] max_body_bytes)"
        )
    return size


def check_sender(kind: MessageKind, sender: str, sender_role: Role | None) -> None:
    """Check that a message's kind matches its sender.

    ``peer`` and ``manager`` messages come from a registered agent (``sender_role`` is its
    role, None when the sender is unknown — the caller raises NotFound for that); a
    ``manager`` message must come from the manager. ``operator`` and ``system`` senders are
    labels and only need to be non-empty.
    """
    if not sender:
        raise Refused(f"a {kind} message needs a sender; got an empty one")
    if kind is MessageKind.MANAGER and sender_role is not Role.MANAGER:
        raise Refused(
            f"a manager message must come from the manager, not from {sender} "
            f"(a {sender_role}): send it as kind 'peer'"
        )


def check_approval_request(
    kind: ApprovalKind, name: str, state: AgentState | None, ref: str | None
) -> None:
    """Check an approval request against the named agent's state (None: no such agent).

    * ``spawn``: the name is free (never used, or destroyed);
    * ``spawn_commit``: the agent is a draft and a ref is given;
    * ``apply_commit``: the agent exists, is neither a draft nor destroyed, and a ref is given;
    * ``revive``: the agent is given up, stopped or crashed.
    """
    if kind is ApprovalKind.SPAWN:
        if state is not None and state is not AgentState.DESTROYED:
            raise Conflict(f"cannot request spawn of {name}: an agent {name} exists ({state})")
        return
    if kind is ApprovalKind.REVIVE:
        if state not in (AgentState.GIVEN_UP, AgentState.STOPPED, AgentState.CRASHED):
            now = "does not exist" if state is None else f"is {state}"
            raise Conflict(
                f"cannot request revive of {name}: it {now}; only a given-up, stopped or crashed "
                "agent can be revived"
            )
        return
    if not ref:
        raise Refused(f"a {kind} request for {name} needs a config ref (a commit); got {ref!r}")
    if kind is ApprovalKind.SPAWN_COMMIT:
        if state is not AgentState.DRAFT:
            now = "does not exist" if state is None else f"is {state}"
            raise Conflict(
                f"cannot request spawn_commit of {name}: it {now}, and only a draft can be "
                "spawned from a commit — request a draft first"
            )
        return
    if state is None or state in (AgentState.DRAFT, AgentState.DESTROYED):
        now = "does not exist" if state is None else f"is {state}"
        raise Conflict(
            f"cannot request apply_commit for {name}: it {now}; apply_commit changes an existing "
            "agent (use spawn_commit for a draft)"
        )


def clip_utf8(text: str, limit: int) -> str:
    """Return ``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def format_ts(ts: float) -> str:
    """Format wall-clock seconds for an operator: ``2025-01-02 03:04:05Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
