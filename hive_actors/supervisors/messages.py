"""What a supervisor understands, and what it answers with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pykka import ActorRef

from hive_actors.messages import Down, Ready
from hive_actors.supervisors.spec import ChildSpec

__all__ = [
    "ChildEvent",
    "ChildInfo",
    "ChildStats",
    "CountChildren",
    "DeleteChild",
    "RestartChild",
    "StartChild",
    "Statistics",
    "SupervisorMessage",
    "TerminateChild",
    "WhichChildren",
]


@dataclass(frozen=True)
class StartChild:
    """Add a child at the end and start it; answers its ref once it is ready."""

    spec: ChildSpec


@dataclass(frozen=True)
class TerminateChild:
    """Stop a child and keep it down (a temporary child is forgotten)."""

    id: str


@dataclass(frozen=True)
class RestartChild:
    """Start a terminated or given-up child again, its backoff and history forgotten."""

    id: str


@dataclass(frozen=True)
class DeleteChild:
    """Forget a child that is down."""

    id: str


@dataclass(frozen=True)
class WhichChildren:
    """Answers a list of :class:`ChildInfo`, in start order."""


@dataclass(frozen=True)
class CountChildren:
    """Answers a dict: specs, active, supervisors, workers."""


@dataclass(frozen=True)
class Statistics:
    """Answers a list of :class:`ChildStats`, in start order."""


@dataclass(frozen=True)
class ChildInfo:
    """One row of ``WhichChildren``."""

    id: str
    ref: ActorRef[Any] | None
    """None while the child is down."""
    state: str
    restart: str
    is_supervisor: bool


@dataclass(frozen=True)
class ChildStats:
    """One row of ``Statistics``: what the metrics and the dashboard read."""

    id: str
    state: str
    """starting, running, backoff, stopping, terminated or given_up."""
    restarts: int
    """Restarts so far."""
    last_failure: str | None
    """Why it last ended abnormally."""
    backoff: float
    """The delay chosen before its latest restart, in seconds."""
    restart: str
    """Its restart type."""
    meta: Any = None


@dataclass(frozen=True, slots=True)
class ChildEvent:
    """A notice a supervisor gives its owner (see ``Supervisor.on_child_event``)."""

    child: str
    kind: str
    """started, restarting, given_up, exited, abandoned or start_failed."""
    detail: str
    restarts: int = 0
    delay: float = 0.0
    meta: Any = None
    limit: str = ""
    """given_up: the child's limit that was hit — ``window`` (too many restarts in its period)
    or ``consecutive`` (too many failures in a row)."""
    count: int = 0
    """given_up: the failures that limit counted (restarts in the window, failures in a row)."""


@dataclass(frozen=True)
class _ReadyTimeout:
    id: str
    urn: str


@dataclass(frozen=True)
class _RestartDue:
    token: int


SupervisorMessage = (
    StartChild
    | TerminateChild
    | RestartChild
    | DeleteChild
    | WhichChildren
    | CountChildren
    | Statistics
    | Ready
    | Down
    | _ReadyTimeout
    | _RestartDue
)
"""Every message a :class:`~hive_actors.supervisors.supervisor.Supervisor` accepts: the requests
above, its children's ``Ready`` and ``Down`` (tagged ``(child id, urn)``), and its own timers."""
