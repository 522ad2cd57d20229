"""The hive operations behind the MCP tools, over the hive's actors (blocking, thread-safe).

The MCP surface authenticates the caller and calls these from worker threads. Every call goes
to the live service through the :class:`~hive_actors.services.directory.Directory` with a deadline, so a
restarting bus is a clear "try again" and never a hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from hive_actors.agent.supervisor import ReviveAgent
from hive_actors.agent.turnbook import TurnBook
from hive_actors.errors import Refused
from hive_actors.mcp.ops import AgentStatus, Draft, InboxMessage, Revival
from hive_actors.protocol import AskOperator, Claim, RequestApproval, Send
from hive_actors.services.directory import Directory
from hive_actors.store import AgentState, ApprovalKind, MessageKind, Role, Store
from hive_actors.store.events import EventKind
from hive_actors.store.pool import StorePool

__all__ = ["ActorHiveOps"]


class ActorHiveOps:
    """:class:`hive_actors.mcp.ops.HiveOps` over the bus and the approval queue."""

    def __init__(
        self,
        directory: Directory,
        turns: TurnBook,
        open_store: Callable[[], Store],
        drafts: Any,
        *,
        timeout: float = 30.0,
        revive_needs_approval: bool = False,
        limits: str = "",
        log_tail: int = 20,
    ) -> None:
        """``revive_needs_approval``: ``revive`` queues an approval instead of starting the
        agent; ``limits``: the agents' restart limits in words (``agent_status`` shows them);
        ``log_tail``: how many turn-log lines ``agent_status`` shows."""
        self._directory = directory
        self._turns = turns
        self._pool = StorePool(open_store, name="mcp operations")
        """The callers' role reads: MCP calls run on worker threads that come and go, so the
        connections are pooled (a few kept), not one per thread."""
        self._drafts = drafts
        """Stages drafts and reads config refs (``hive_actors.agent.configs.ConfigDesk``)."""
        self._timeout = timeout
        self._revive_needs_approval = revive_needs_approval
        self._limits = limits
        self._log_tail = log_tail

    def _ask(self, service: str, message: Any) -> Any:
        return self._directory.get(service).ask(message, timeout=self._timeout)

    def _role(self, caller: str) -> Role:
        # A pooled connection: opening a store per tool call would check the schema and the
        # hive lock on every send.
        with self._pool.connection() as store:
            return store.registry.get(caller).role

    def close(self) -> None:
        """Close the pooled connections (the daemon's end; later calls raise HiveError)."""
        self._pool.close()

    def send(self, caller: str, to: str, body: str) -> int:
        kind = MessageKind.MANAGER if self._role(caller) is Role.MANAGER else MessageKind.PEER
        return int(self._ask("bus", Send(caller, to, body, kind)))

    def recv(self, caller: str) -> Sequence[InboxMessage]:
        turn = self._turns.current(caller)
        if turn is None:
            raise Refused(f"{caller} has no turn open: recv works only during a turn")
        claimed = self._ask("bus", Claim(caller, turn.generation, turn.turn_id))
        return [InboxMessage(m.id, m.sender, str(m.kind), m.body) for m in claimed]

    def request_spawn(self, caller: str, name: str) -> int:
        diff = self._drafts.spawn_diff(name)
        approval = self._ask(
            "approvals", RequestApproval(ApprovalKind.SPAWN, name, caller, diff=diff)
        )
        return int(approval.id)

    def request_spawn_draft(self, caller: str, name: str) -> Draft:
        self._drafts.stage(name, by=caller)
        # As the manager sees them: in its container's view under the nixos backend.
        config_path, state_path = self._drafts.draft_paths(name)
        return Draft(name, config_path=config_path, state_path=state_path)

    def request_spawn_commit(self, caller: str, name: str, ref: str) -> int:
        sha, diff = self._drafts.review(name, ref)
        approval = self._ask(
            "approvals",
            RequestApproval(ApprovalKind.SPAWN_COMMIT, name, caller, diff=diff, ref=sha),
        )
        return int(approval.id)

    def apply_commit(self, caller: str, name: str, ref: str) -> int:
        sha, diff = self._drafts.review(name, ref)
        approval = self._ask(
            "approvals",
            RequestApproval(ApprovalKind.APPLY_COMMIT, name, caller, diff=diff, ref=sha),
        )
        return int(approval.id)

    def ask_operator(self, caller: str, question: str) -> int:
        return int(self._ask("approvals", AskOperator(caller, question)).id)

    def agent_status(self, caller: str, name: str) -> AgentStatus:
        with self._pool.connection() as store:
            row = store.registry.get(name)
            supervision = store.events.latest(
                name,
                (EventKind.AGENT_CRASHED, EventKind.AGENT_RESTARTING, EventKind.AGENT_GIVEN_UP),
                200,
            )
            lines = store.events.latest(name, (EventKind.TURN_LOG,), self._log_tail)
        now = time.time()
        crash = next((e for e in supervision if e.kind == EventKind.AGENT_CRASHED
                      and "ignored" not in e.payload), None)
        notice = next((e for e in supervision if e.kind != EventKind.AGENT_CRASHED), None)
        last_crash = None
        if crash is not None:
            epoch = crash.payload.get("epoch")
            start = "failed to start: " if crash.payload.get("phase") == "start" else ""
            last_crash = (f"{start}{crash.payload.get('reason', '?')} ({_ago(now - crash.ts)} ago"
                          + (f", epoch {epoch})" if epoch is not None else ")"))
        return AgentStatus(
            name=row.name,
            role=str(row.role),
            state=str(row.state),
            generation=row.generation,
            restarts=sum(1 for e in supervision if e.kind == EventKind.AGENT_RESTARTING),
            limits=self._limits,
            last_crash=last_crash,
            last_notice=None if notice is None else str(notice.payload.get("notice", "")),
            log_tail=[str(e.payload.get("line", "")) for e in reversed(lines)],
        )

    def revive(self, caller: str, name: str) -> Revival:
        with self._pool.connection() as store:
            row = store.registry.get(name)
        if row.role is Role.MANAGER:
            raise Refused(f"{name} is the manager: only the operator revives the manager")
        if self._revive_needs_approval:
            status = self.agent_status(caller, name)
            reason = (f"{caller} asks to revive {name} ({row.state}); last crash: "
                      f"{status.last_crash or 'none recorded'}")
            if status.last_notice:
                reason += f"; {status.last_notice}"
            approval = self._ask(
                "approvals", RequestApproval(ApprovalKind.REVIVE, name, caller, reason=reason)
            )
            return Revival(name, approval_id=int(approval.id))
        if row.state not in (AgentState.GIVEN_UP, AgentState.STOPPED, AgentState.CRASHED):
            raise Refused(f"agent {name} is {row.state}: only a given-up, stopped or crashed "
                          "agent can be revived")
        # The supervisor answers once the agent is up; a slow start is not a failure.
        future = self._directory.get("agents").ask(ReviveAgent(name), block=False)
        try:
            future.get(timeout=min(10.0, self._timeout / 2))
        except pykka.Timeout:
            return Revival(name, up=False)
        return Revival(name, up=True)


def _ago(seconds: float) -> str:
    """``42 s``, ``3 min``, ``2 h``: an age for the model."""
    if seconds < 120:
        return f"{max(0, round(seconds))} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"
