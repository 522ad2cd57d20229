"""Operator questions: an agent asks, the operator answers once, the answer lands in its inbox.

Asking moves the agent to ``waiting_operator`` (remembering the state it came from);
answering enqueues the answer as an ``operator`` message in the asker's inbox in the same
transaction, and once the agent has no unanswered question left it goes back to that state.
"""

from __future__ import annotations

import logging
from typing import Any

from hive_actors.errors import Conflict, NotFound, Refused

from .db import Database
from .events import EventKind, append_event
from .messages import enqueue
from .records import AgentState, Answer, MessageKind, Question, SendRequest
from .registry import change_state, require_agent, require_live_agent
from .rules import DEFAULT_MAX_BODY_BYTES, can_transition, check_body, format_ts

__all__ = ["Questions", "format_answer"]

log = logging.getLogger(__name__)

_COLUMNS = "id, agent, question, asked, answer, answered_by, answered, message_id"
_QUOTE_CHARS = 200


def _question(row: tuple[Any, ...]) -> Question:
    return Question(
        id=int(row[0]),
        agent=str(row[1]),
        question=str(row[2]),
        asked=float(row[3]),
        answer=None if row[4] is None else str(row[4]),
        answered_by=None if row[5] is None else str(row[5]),
        answered=None if row[6] is None else float(row[6]),
        message_id=None if row[7] is None else int(row[7]),
    )


def format_answer(question: Question, text: str) -> str:
    """The inbox message that carries an answer: which question, then the answer."""
    quoted = question.question
    if len(quoted) > _QUOTE_CHARS:
        quoted = quoted[:_QUOTE_CHARS] + " …"
    return f"Answer to your question {question.id} ({quoted!r}):\n{text}"


class Questions:
    """Ask, answer and list operator questions (one transaction each)."""

    def __init__(self, db: Database, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self._db = db
        self._max_body_bytes = max_body_bytes

    def ask(self, agent: str, question: str) -> Question:
        """Record ``agent``'s question; the agent goes to ``waiting_operator``.

        Raises NotFound (unknown agent), Refused (empty or oversized question, destroyed
        agent) or Conflict (the agent's state cannot go to ``waiting_operator``).
        """
        if not isinstance(question, str) or not question.strip():
            raise Refused(f"agent {agent} asked an empty question: ask something")
        check_body(question, self._max_body_bytes)
        with self._db.transaction():
            asker = require_live_agent(self._db, agent, f"record a question of {agent}")
            if asker.state is not AgentState.WAITING_OPERATOR:
                change_state(
                    self._db, asker, AgentState.WAITING_OPERATOR, reason="asked the operator"
                )
                self._db.execute(
                    "UPDATE agents SET resume_state = ? WHERE name = ?",
                    (str(asker.state), agent),
                )
            question_id = self._db.insert(
                "INSERT INTO questions (agent, question, asked) VALUES (?, ?, ?)",
                (agent, question, self._db.now()),
            )
            append_event(self._db, EventKind.QUESTION_ASKED, agent, {"id": question_id})
            return self.get(question_id)

    def get(self, question_id: int) -> Question:
        """Return one question; raise NotFound."""
        row = self._db.row(f"SELECT {_COLUMNS} FROM questions WHERE id = ?", (question_id,))
        if row is None:
            raise NotFound(f"no question with id {question_id}")
        return _question(row)

    def answer(self, question_id: int, text: str, by: str) -> Answer:
        """Answer a question once; its asker's inbox gets the answer in the same transaction.

        Raises NotFound (unknown id), Conflict (already answered; nothing changes) or Refused
        (empty answer, or an answer over the body limit). The answer to an agent destroyed
        since is recorded and its message kept as stale.
        """
        if not isinstance(text, str) or not text.strip():
            raise Refused(f"the answer to question {question_id} is empty: write an answer")
        if not by:
            raise Refused(f"an answer to question {question_id} needs who answers; got {by!r}")
        with self._db.transaction():
            question = self.get(question_id)
            if question.answered is not None:
                raise Conflict(
                    f"question {question_id} was already answered by {question.answered_by} at "
                    f"{format_ts(question.answered)}; nothing changed"
                )
            message_id = enqueue(
                self._db,
                SendRequest(
                    by, question.agent, format_answer(question, text), MessageKind.OPERATOR
                ),
                self._max_body_bytes,
                to_destroyed_as_stale=True,
            )
            self._db.execute(
                "UPDATE questions SET answer = ?, answered_by = ?, answered = ?, message_id = ? "
                "WHERE id = ?",
                (text, by, self._db.now(), message_id, question_id),
            )
            append_event(
                self._db,
                EventKind.QUESTION_ANSWERED,
                question.agent,
                {"id": question_id, "by": by, "message_id": message_id},
            )
            self._resume(question.agent)
            return Answer(question=self.get(question_id), message_id=message_id)

    def _resume(self, name: str) -> None:
        """Back to the state before the questions, once none is left unanswered."""
        left = self._db.value(
            "SELECT count(*) FROM questions WHERE agent = ? AND answered IS NULL", (name,)
        )
        agent = require_agent(self._db, name)
        if left or agent.state is not AgentState.WAITING_OPERATOR:
            return
        resume = self._db.value("SELECT resume_state FROM agents WHERE name = ?", (name,))
        target = AgentState(resume) if resume is not None else AgentState.IDLE
        if not can_transition(agent.state, target):
            target = AgentState.IDLE
        change_state(self._db, agent, target, reason="operator answered")
        self._db.execute("UPDATE agents SET resume_state = NULL WHERE name = ?", (name,))

    def pending(self, agent: str | None = None) -> list[Question]:
        """Unanswered questions (of ``agent``, or of everyone), oldest first."""
        where, params = ("AND agent = ?", (agent,)) if agent is not None else ("", ())
        rows = self._db.rows(
            f"SELECT {_COLUMNS} FROM questions WHERE answered IS NULL {where} ORDER BY id",
            params,
        )
        return [_question(r) for r in rows]
