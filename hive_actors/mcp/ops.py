"""What the MCP surface asks of the hive: the :class:`HiveOps` protocol and its result types.

The surface knows nothing of actors or sqlite. It authenticates the caller, checks its role,
then calls one ``HiveOps`` method per tool with the caller's name first. The hive's
implementation (over the bus and approval actors) must be thread-safe and blocking: the
surface calls it from worker threads, under a deadline. A refusal the model can act on is
raised as :class:`hive_actors.errors.Refused` (or a subclass) with a message written for it;
anything else is treated as a hive failure, logged, and reported to the model generically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["AgentStatus", "Draft", "HiveOps", "InboxMessage", "Revival"]


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """One message handed to the caller by ``recv``."""

    id: int
    """The message id (ascending in the order messages were committed)."""
    sender: str
    """Who sent it: an agent's name, ``operator``, or ``hive`` for system messages."""
    kind: str
    """``peer``, ``manager``, ``operator`` or ``system``."""
    body: str
    """The text."""


@dataclass(frozen=True, slots=True)
class Draft:
    """A staged, not yet started agent (``request_spawn_draft``)."""

    name: str
    """The draft agent's name."""
    config_path: str | None = None
    """Where the manager edits and commits its config repository, as the manager sees it."""
    state_path: str | None = None
    """Its persistent state directory, as the manager sees it (initial notes go there)."""


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """One agent as the manager's ``agent_status`` shows it."""

    name: str
    role: str
    """``manager`` or ``agent``."""
    state: str
    """The registry's state: ``idle``, ``busy``, ``backoff``, ``given_up``, ``stopped``…"""
    generation: int
    """Its incarnation (bumped only when the name is created anew)."""
    restarts: int
    """Restarts the supervisor decided for it, among the supervision events the hive keeps."""
    limits: str
    """The restart limits it is held to, in words."""
    last_crash: str | None = None
    """Its latest crash (reason and age), if the hive recorded one."""
    last_notice: str | None = None
    """The latest supervision notice about it (restart or give-up), as the manager was told."""
    log_tail: Sequence[str] = ()
    """Its latest turn-log lines, oldest first."""


@dataclass(frozen=True, slots=True)
class Revival:
    """What ``revive`` did: started the agent, or queued an approval for the operator."""

    name: str
    approval_id: int | None = None
    """The queued ``revive`` approval ([supervision] revive_needs_approval); None: done now."""
    up: bool = False
    """Started now and already up (False: still starting, or waiting for the operator)."""


@runtime_checkable
class HiveOps(Protocol):
    """The hive operations behind the MCP tools; one method per tool, ``caller`` first.

    Every method blocks until the hive has done (and, for writes, durably committed) what
    it was asked, and may be called from several threads at once. Raise ``Refused`` for a
    request the caller can correct (unknown recipient, duplicate request…).
    """

    def send(self, caller: str, to: str, body: str) -> int:
        """Commit a ``peer`` message (``manager`` when the manager sends); return its id."""

    def recv(self, caller: str) -> Sequence[InboxMessage]:
        """Hand ``caller``'s queued messages to its current turn, oldest first."""

    def request_spawn(self, caller: str, name: str) -> int:
        """Queue a one-shot ``spawn`` approval for a new agent ``name``; return its id."""

    def request_spawn_draft(self, caller: str, name: str) -> Draft:
        """Stage agent ``name`` as a draft (config repository and state dir, no container)."""

    def request_spawn_commit(self, caller: str, name: str, ref: str) -> int:
        """Queue a ``spawn_commit`` approval for draft ``name`` at config ``ref``; return its id."""

    def apply_commit(self, caller: str, name: str, ref: str) -> int:
        """Queue an ``apply_commit`` approval of config ``ref`` for agent ``name``; return its id."""

    def ask_operator(self, caller: str, question: str) -> int:
        """Record ``caller``'s question for the operator; return the question id."""

    def agent_status(self, caller: str, name: str) -> AgentStatus:
        """Agent ``name``'s state, restarts, last crash and log tail (NotFound: no such agent)."""

    def revive(self, caller: str, name: str) -> Revival:
        """Start given-up (or stopped, crashed) agent ``name`` again, or queue a ``revive``
        approval when the operator asked to decide revivals."""
