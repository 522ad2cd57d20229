"""The hive operations behind the MCP tools, over the hive's actors (blocking, thread-safe).

The MCP surface authenticates the caller and calls these from worker threads. Every call goes
to the live service through the :class:`~hive_actors.directory.Directory` with a deadline, so a
restarting bus is a clear "try again" and never a hang.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hive_actors.agent.turnbook import TurnBook
from hive_actors.directory import Directory
from hive_actors.errors import Refused
from hive_actors.mcp.ops import Draft, InboxMessage
from hive_actors.protocol import AskOperator, Claim, RequestApproval, Send
from hive_actors.store import ApprovalKind, MessageKind, Role, Store
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
    ) -> None:
        self._directory = directory
        self._turns = turns
        self._pool = StorePool(open_store, name="mcp operations")
        """The callers' role reads: MCP calls run on worker threads that come and go, so the
        connections are pooled (a few kept), not one per thread."""
        self._drafts = drafts
        """Stages drafts and reads config refs (``hive_actors.agent.configs.ConfigDesk``)."""
        self._timeout = timeout

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
        paths = self._drafts.stage(name, by=caller)
        return Draft(name, config_path=str(paths.config / "proposed"), state_path=str(paths.state))

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
