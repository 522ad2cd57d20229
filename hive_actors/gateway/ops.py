"""The operator's decisions, carried to the hive's actors (blocking; call from worker threads).

Every call goes to the live service through the hive's directory and waits with a deadline, so
a restarting service is a clear 503 and never a hang; the API runs these in worker threads,
never on the event loop. The operator is always the one who asks (``by="operator"``).

Starting an agent can take long (its container comes up, a supervisor may be backing off):
:meth:`OperatorOps.spawn`, :meth:`~OperatorOps.revive` and :meth:`~OperatorOps.stop` wait up
to ``settle`` seconds and then report that the change is still under way (the page sees the
rest live through the events).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from hive_actors.agent.supervisor import DestroyAgent, ReviveAgent, StopAgent
from hive_actors.errors import Conflict, NotFound
from hive_actors.hive import Hive
from hive_actors.protocol import AnswerQuestion, Decide, RequestApproval, Send, SetModel
from hive_actors.store import AgentState, Answer, Approval, ApprovalKind, MessageKind
from hive_actors.store.names import validate_name

__all__ = ["OPERATOR", "OperatorOps"]

log = logging.getLogger(__name__)

OPERATOR = "operator"
"""Who the dashboard's decisions and messages come from."""


class OperatorOps:
    """The operator's operations over the hive's actors (thread-safe, blocking, bounded)."""

    def __init__(
        self,
        hive: Hive,
        *,
        spawn_diff: Callable[[str], str],
        timeout: float = 30.0,
        settle: float = 10.0,
    ) -> None:
        """``spawn_diff(name)`` is what the operator approves when spawning ``name`` by hand;
        ``timeout`` bounds every ask; ``settle`` is how long a start or stop is waited for."""
        self._hive = hive
        self._spawn_diff = spawn_diff
        self.timeout = timeout
        self.settle = settle

    def _ask(self, service: str, message: Any) -> Any:
        ref = self._hive.directory.get(service)
        try:
            return ref.ask(message, timeout=self.timeout)
        except pykka.Timeout as exc:
            raise TimeoutError(
                f"the hive's {service} service did not answer within {self.timeout:g} s; it may "
                "be overloaded or stuck — try again, and look at the hive's log"
            ) from exc

    def _ask_settled(self, service: str, message: Any) -> bool:
        """Ask and wait up to ``settle`` seconds: True when done, False when still under way."""
        future = self._hive.directory.get(service).ask(message, block=False)
        try:
            future.get(timeout=self.settle)
        except pykka.Timeout:
            return False
        return True

    # -- model, messages -------------------------------------------------------------------

    def set_model(self, agent: str, model: str | None, persist: bool) -> None:
        """Set (a name) or clear (None) the agent's runtime model override."""
        self._ask("bus", SetModel(agent, model, persist))

    def message(self, agent: str, text: str) -> int:
        """Send the operator's message to ``agent``; the stored message id."""
        return int(self._ask("bus", Send(OPERATOR, agent, text, MessageKind.OPERATOR)))

    # -- approvals, questions --------------------------------------------------------------

    def decide(self, approval_id: int, approve: bool, note: str | None) -> Approval:
        """Approve or deny once; Conflict for a second decision, NotFound for no such id."""
        decided: Approval = self._ask("approvals", Decide(approval_id, approve, OPERATOR, note))
        return decided

    def answer(self, question_id: int, text: str) -> Answer:
        """Answer a question once; the answer lands in the asker's inbox."""
        answer: Answer = self._ask("approvals", AnswerQuestion(question_id, text, OPERATOR))
        return answer

    # -- agents' lives ---------------------------------------------------------------------

    def spawn(self, name: str) -> Approval:
        """The operator spawns ``name`` by hand: a spawn request the operator approves at once.

        Going through the approval queue keeps one path for every spawn: the registry row, the
        audit events and the supervisor's start are the same as for the manager's requests.
        """
        validate_name(name)
        request = RequestApproval(
            ApprovalKind.SPAWN, name, OPERATOR, diff=self._spawn_diff(name)
        )
        approval: Approval = self._ask("approvals", request)
        return self.decide(approval.id, True, "spawned by the operator from the dashboard")

    def stop(self, name: str) -> bool:
        """Stop the agent and keep it down; True once stopped, False if still stopping."""
        return self._ask_settled("agents", StopAgent(name))

    def revive(self, name: str) -> bool:
        """Start a given-up, stopped or kept-state agent again; True once it is up."""
        return self._ask_settled("agents", ReviveAgent(name))

    def destroy(self, name: str, keep_state: bool) -> None:
        """Destroy the agent's container, keeping its state dir (K3PT ST4T3) or not."""
        self._ask("agents", DestroyAgent(name, keep_state))

    def purge(self, name: str, state_kept: Callable[[], bool]) -> None:
        """Delete a destroyed agent's kept state for good.

        Only a destroyed agent whose state is still on disk can be purged (``state_kept``);
        the agents' supervisor deletes it and records the purge in the registry.
        """
        with self._hive.open_store() as store:
            row = store.registry.find(name)
            if row is None:
                raise NotFound(f"no agent named {name!r}")
            if row.state is not AgentState.DESTROYED or not row.kept_state or not state_kept():
                raise Conflict(
                    f"agent {name} is {row.state}"
                    + (" with no kept state" if row.state is AgentState.DESTROYED else "")
                    + ": only a destroyed agent whose state was kept (K3PT ST4T3) can be "
                    "purged; destroy it first"
                )
        self._ask("agents", DestroyAgent(name, keep_state=False))
