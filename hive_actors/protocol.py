"""The hive's domain messages: what the bus, the approval queue and the agents say to each other.

Requests are asked (``ref.ask(msg)``) and answered with a value or an error; notices are told.
Every message is a frozen dataclass; actors dispatch them with ``match``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pykka import ActorRef

from hive_actors.store.records import ApprovalKind, MessageKind

__all__ = [
    "Ack",
    "AnswerQuestion",
    "AskOperator",
    "Claim",
    "Decide",
    "DecisionMade",
    "GetModel",
    "InboxStatsRequest",
    "ListApprovals",
    "ListQuestions",
    "MailArrived",
    "Nudge",
    "Release",
    "RequestApproval",
    "Send",
    "SetModel",
    "StaleMessages",
    "Subscribe",
    "TurnRecord",
    "Unsubscribe",
]

# -- bus ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Commit a message; answers its id once durable (group-committed with concurrent sends)."""

    sender: str
    recipient: str
    body: str
    kind: MessageKind = MessageKind.PEER


@dataclass(frozen=True)
class Claim:
    """Hand the agent's queued messages of ``generation`` to turn ``turn_id``; answers them."""

    agent: str
    generation: int
    turn_id: str
    limit: int | None = None


@dataclass(frozen=True)
class Ack:
    """The turn ended: its messages are delivered. Answers how many."""

    turn_id: str


@dataclass(frozen=True)
class Release:
    """The turn failed: its messages go back to the inbox. Answers how many."""

    turn_id: str
    reason: str = "released"


@dataclass(frozen=True)
class GetModel:
    """Answers the agent's runtime model override, or None."""

    agent: str


@dataclass(frozen=True)
class SetModel:
    """Set (or clear, with None) the runtime model override; ``persist`` writes
    ``<state>/model`` so it survives a restart. Answers the agent's row."""

    agent: str
    model: str | None
    persist: bool = False


@dataclass(frozen=True)
class InboxStatsRequest:
    """Answers {agent: InboxStats} for every agent."""


@dataclass(frozen=True)
class StaleMessages:
    """Answers the stale messages (for one agent, or all)."""

    agent: str | None = None


@dataclass(frozen=True)
class Subscribe:
    """Tell ``ref`` a :class:`MailArrived` whenever ``agent``'s inbox gets messages."""

    agent: str
    ref: ActorRef[Any]


@dataclass(frozen=True)
class Unsubscribe:
    agent: str
    ref: ActorRef[Any]


@dataclass(frozen=True)
class Nudge:
    """Someone else committed mail for ``agent`` (an answer, a decision): wake its subscriber."""

    agent: str


@dataclass(frozen=True)
class MailArrived:
    """Told to an agent's subscriber: its inbox has new messages."""

    agent: str


# -- approvals and questions -------------------------------------------------------------------


@dataclass(frozen=True)
class RequestApproval:
    """Queue an approval; answers the :class:`~hive_actors.store.records.Approval`."""

    kind: ApprovalKind
    agent: str
    requested_by: str
    diff: str = ""
    ref: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Decide:
    """Approve or deny, exactly once; answers the decided Approval."""

    approval_id: int
    approve: bool
    by: str
    note: str | None = None


@dataclass(frozen=True)
class DecisionMade:
    """Told to the approval queue's subscribers after a decision committed."""

    approval: Any


@dataclass(frozen=True)
class ListApprovals:
    """Answers the pending approvals (or the recent ones, with ``recent``)."""

    recent: bool = False


@dataclass(frozen=True)
class AskOperator:
    """The agent asks the operator; answers the Question. The agent waits on the operator."""

    agent: str
    question: str


@dataclass(frozen=True)
class AnswerQuestion:
    """Answer once; the answer lands in the asker's inbox as an operator message."""

    question_id: int
    text: str
    by: str


@dataclass(frozen=True)
class ListQuestions:
    """Answers the pending questions (of one agent, or all)."""

    agent: str | None = None


# -- telemetry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnRecord:
    """One finished turn, told by its AgentActor to the stats actor."""

    agent: str
    turn_id: str
    started: float
    """Wall-clock seconds when the turn claimed its messages."""
    ended: float
    """Wall-clock seconds when it ended."""
    end: Any
    """The :class:`hive_actors.harness.TurnEnd` (None when the worker failed before the CLI)."""
    received: Any
    """Messages the turn consumed, counted by kind: ``{"peer": 2, "operator": 1}``."""
    error: str | None = None
