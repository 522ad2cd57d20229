"""ApprovalQueueActor: every approval in one queue, decided exactly once; operator questions.

Spawns (one-shot and two-step) and config commits wait here with the diff the operator reviews.
A decision commits together with its consequence (see :mod:`hive_actors.store.approvals`); after
the commit the queue tells its subscribers ``DecisionMade`` (the agents supervisor spawns or
re-applies) and nudges the bus so the requester's inbox notice wakes it. A question from the
manager waits here too; its answer lands in the asker's inbox as an ``operator`` message.
"""

from __future__ import annotations

from typing import Any, Callable

import pykka
from pykka import ActorRef

from hive_actors.actor import unexpected
from hive_actors.protocol import (
    AnswerQuestion,
    AskOperator,
    Decide,
    DecisionMade,
    ListApprovals,
    ListQuestions,
    Nudge,
    RequestApproval,
    Subscribe,
    Unsubscribe,
)
from hive_actors.services.base import ServiceActor
from hive_actors.services.bell import Bell
from hive_actors.services.directory import Directory
from hive_actors.store import Store

__all__ = ["ApprovalQueueActor", "ApprovalsMessage"]

ApprovalsMessage = (
    RequestApproval
    | Decide
    | ListApprovals
    | AskOperator
    | AnswerQuestion
    | ListQuestions
    | Subscribe
    | Unsubscribe
)
"""Every message :class:`ApprovalQueueActor` accepts; its ``receive`` matches each one."""


class ApprovalQueueActor(ServiceActor):
    """The operator's queue: approvals and questions, on its own store connection."""

    SERVICE = "approvals"

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        bell: Bell | None = None,
        directory: Directory | None = None,
        name: str = "approvals",
    ) -> None:
        super().__init__(open_store, bell=bell, directory=directory, name=name)
        self._subscribers: list[ActorRef[Any]] = []

    def receive(self, message: ApprovalsMessage) -> Any:
        match message:
            case RequestApproval(
                kind=kind, agent=agent, requested_by=by, diff=diff, ref=ref, reason=reason
            ):
                approval = self.store.approvals.request(
                    kind, agent, requested_by=by, diff=diff, ref=ref, reason=reason
                )
                self._bell.ring()
                return approval
            case Decide(approval_id=aid, approve=approve, by=by, note=note):
                approval = self.store.approvals.decide(aid, approve, by, note)
                self._bell.ring()
                self._nudge(approval.requested_by)
                for ref in list(self._subscribers):
                    try:
                        ref.tell(DecisionMade(approval))
                    except pykka.ActorDeadError:
                        self._subscribers.remove(ref)
                return approval
            case ListApprovals(recent=recent):
                return self.store.approvals.recent() if recent else self.store.approvals.pending()
            case AskOperator(agent=agent, question=question):
                asked = self.store.questions.ask(agent, question)
                self._bell.ring()
                return asked
            case AnswerQuestion(question_id=qid, text=text, by=by):
                answer = self.store.questions.answer(qid, text, by)
                self._bell.ring()
                self._nudge(answer.question.agent)
                return answer
            case ListQuestions(agent=agent):
                return self.store.questions.pending(agent)
            case Subscribe(ref=ref):
                if ref not in self._subscribers:
                    self._subscribers.append(ref)
                return None
            case Unsubscribe(ref=ref):
                if ref in self._subscribers:
                    self._subscribers.remove(ref)
                return None
            case _:
                unexpected(self, message)

    def _nudge(self, agent: str) -> None:
        """Mail for ``agent`` was committed here, not through the bus: wake its subscriber."""
        if self._directory is not None:
            self._directory.tell("bus", Nudge(agent))
