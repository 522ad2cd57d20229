"""The store's value types: enums of the stored vocabularies and frozen rows.

Every row the store hands out is a frozen dataclass, so an actor can pass it on in a message
without anyone mutating it under another actor's feet. Timestamps are wall-clock seconds
(float) from the store's injected clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Agent",
    "AgentState",
    "Answer",
    "Approval",
    "ApprovalKind",
    "ApprovalStatus",
    "Event",
    "InboxStats",
    "Message",
    "MessageKind",
    "MessageStatus",
    "Question",
    "Role",
    "SendRequest",
]


class Role(enum.StrEnum):
    """What an agent is in the hive."""

    MANAGER = "manager"
    AGENT = "agent"


class AgentState(enum.StrEnum):
    """An agent's lifecycle state; the legal moves are :data:`rules.TRANSITIONS`."""

    DRAFT = "draft"
    """Config repo and state dir staged by the manager, no container yet."""
    PENDING = "pending"
    """Approved, waiting for the supervisor to spawn it."""
    STARTING = "starting"
    """Spawned (generation bumped), container coming up."""
    IDLE = "idle"
    BUSY = "busy"
    """In a turn."""
    WAITING_APPROVAL = "waiting_approval"
    WAITING_OPERATOR = "waiting_operator"
    """Asked the operator a question that is not answered yet."""
    CRASHED = "crashed"
    BACKOFF = "backoff"
    """Crashed, waiting out the restart backoff."""
    GIVEN_UP = "given_up"
    """Past the restart intensity: the operator must act."""
    STOPPED = "stopped"
    DESTROYED = "destroyed"
    """Container gone; ``kept_state`` says whether its state dir was kept (K3PT ST4T3)."""


class MessageKind(enum.StrEnum):
    """Who a message comes from, as the recipient's prompt and the stats see it."""

    PEER = "peer"
    OPERATOR = "operator"
    MANAGER = "manager"
    SYSTEM = "system"


class MessageStatus(enum.StrEnum):
    """Where a message is in the at-least-once hand-over."""

    QUEUED = "queued"
    """Committed, not handed to a turn (or handed and released again)."""
    IN_FLIGHT = "in_flight"
    """Handed to a turn that has not ended yet."""
    DELIVERED = "delivered"
    """The turn that consumed it ended (acknowledged)."""
    STALE = "stale"
    """Addressed to an older generation of its recipient: kept, never delivered."""


class ApprovalKind(enum.StrEnum):
    """What the manager asks the operator to approve."""

    SPAWN = "spawn"
    """One-shot spawn of a new agent by name."""
    SPAWN_COMMIT = "spawn_commit"
    """Second step of a two-step spawn: a draft agent and a config ref."""
    APPLY_COMMIT = "apply_commit"
    """A config change (a ref) for an existing agent."""
    REVIVE = "revive"
    """Start a given-up, stopped or crashed agent again (the manager's ``revive`` when
    ``[supervision] revive_needs_approval`` is set); ``reason`` says why."""


class ApprovalStatus(enum.StrEnum):
    """An approval's decision; it moves out of ``pending`` exactly once."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class Agent:
    """One row of the agent registry."""

    name: str
    role: Role
    generation: int
    """The incarnation: 1 for a new agent, bumped only when the name is created anew (a
    destroyed agent registered again). Messages carry the generation they were addressed to;
    restarts of the container, the actor or the daemon never change it."""
    state: AgentState
    web_port: int | None
    model: str | None
    """The operator's runtime model override, or None for the agent's configured model."""
    model_persisted: bool
    """Whether the override is also in ``<state_dir>/model`` and so survives a restart."""
    kept_state: bool
    """Destroyed with its state dir kept (shown as K3PT ST4T3)."""
    created: float
    updated: float
    epoch: int = 0
    """Bumped each time an AgentActor starts the agent (:meth:`Registry.spawn`): the crash path
    ties a container's runs to it, so a crash of an earlier start never ends a later one."""


@dataclass(frozen=True, slots=True)
class SendRequest:
    """One message to send; :meth:`Messages.send_many` takes a batch of these."""

    sender: str
    """An agent name for ``peer``/``manager`` kinds; a label (``operator``, ``hive``…) else."""
    recipient: str
    body: str
    kind: MessageKind = MessageKind.PEER


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message."""

    id: int
    sender: str
    recipient: str
    kind: MessageKind
    body: str
    generation: int
    """The recipient's generation when the message was committed."""
    status: MessageStatus
    turn_id: str | None
    """The turn it is (or last was) handed to."""
    claims: int
    """How many turns it was handed to: more than one means it was redelivered."""
    created: float
    delivered: float | None


@dataclass(frozen=True, slots=True)
class InboxStats:
    """An agent's undelivered messages, for metrics."""

    agent: str
    depth: int
    """Queued plus in-flight messages of the agent's current generation."""
    oldest_age: float
    """Seconds since the oldest of them was committed; 0.0 for an empty inbox."""


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval request and its decision."""

    id: int
    kind: ApprovalKind
    agent: str
    ref: str | None
    """The config commit to apply (``spawn_commit``, ``apply_commit``)."""
    diff: str
    """What the operator reviews."""
    requested_by: str
    requested: float
    status: ApprovalStatus
    decided_by: str | None
    decided: float | None
    note: str | None
    carried_out: float | None = None
    """When the approved consequence was carried out (or failed); None: not yet."""
    outcome: str | None = None
    """How it went: ``agent starting``, ``config applied; agent restarting``, ``failed: …``."""
    reason: str | None = None
    """Why the requester asks (a ``revive``: the agent's state and last crash)."""


@dataclass(frozen=True, slots=True)
class Question:
    """One question an agent asked the operator."""

    id: int
    agent: str
    question: str
    asked: float
    answer: str | None
    answered_by: str | None
    answered: float | None
    message_id: int | None
    """The ``operator`` message that carried the answer to the agent's inbox."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What :meth:`Questions.answer` returns: the answered question and its inbox message."""

    question: Question
    message_id: int


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the audit log the UI replays."""

    id: int
    """Monotonic: never reused, even after the newest row is deleted."""
    ts: float
    kind: str
    agent: str | None
    payload: Mapping[str, Any] = field(default_factory=dict)
