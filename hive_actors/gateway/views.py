"""What the pages see: JSON views of the store's rows, and the per-agent tallies. Pure.

The dashboard renders from a snapshot and then applies events; an event carries, besides the
store's payload, the *current* view of what it changed (``view``): the agent row, the approval,
the question. Those views are built here from records the reader fetched in the same read
transaction as the events, so a page that replaces its row with each event's view is never
behind the log.

The :class:`Tally` folds the events log into what no table holds: per agent, the turns it ran,
its last turn, and the restarts the supervisor made. It is a fold over event ids, so it can be
caught up from the log at any time and applying an event twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hive_actors.store import Agent, AgentState, Approval, Event, Question
from hive_actors.store.events import EventKind

__all__ = [
    "AGENT_VIEW_KINDS",
    "TALLY_KINDS",
    "AgentTally",
    "Tally",
    "WireEvent",
    "agent_view",
    "approval_view",
    "counts",
    "question_view",
]

TALLY_KINDS: tuple[str, ...] = (
    str(EventKind.TURN_STARTED), str(EventKind.TURN_ENDED), str(EventKind.AGENT_RESTARTING)
)
"""The event kinds the tally counts; the reader fetches only these when it catches up."""

AGENT_VIEW_KINDS = frozenset(
    str(k)
    for k in (
        EventKind.AGENT_REGISTERED,
        EventKind.AGENT_STATE,
        EventKind.AGENT_SPAWNED,
        EventKind.AGENT_DESTROYED,
        EventKind.AGENT_PORT,
        EventKind.AGENT_MODEL,
        EventKind.MESSAGE_SENT,
        EventKind.MESSAGE_CLAIMED,
        EventKind.MESSAGE_DELIVERED,
        EventKind.MESSAGE_RELEASED,
        EventKind.MESSAGE_STALE,
        EventKind.TURN_STARTED,
        EventKind.TURN_ENDED,
        EventKind.AGENT_CRASHED,
        EventKind.AGENT_RESTARTING,
        EventKind.AGENT_GIVEN_UP,
        EventKind.QUESTION_ASKED,
        EventKind.QUESTION_ANSWERED,
        EventKind.APPROVAL_DECIDED,
    )
)
"""Events after which the page needs the agent's row again (state, inbox, tallies, model)."""


@dataclass(frozen=True)
class WireEvent:
    """An event as the browsers get it: the store's event plus the views it changed."""

    id: int
    ts: float
    kind: str
    agent: str | None
    payload: Mapping[str, Any]
    view: Mapping[str, Any] = field(default_factory=dict)
    """``{"agent": {...}}``, ``{"approval": {...}}``, ``{"question": {...}}`` as they are now."""

    @classmethod
    def of(cls, event: Event, view: Mapping[str, Any] | None = None) -> WireEvent:
        return cls(event.id, event.ts, event.kind, event.agent, event.payload, view or {})


@dataclass(frozen=True)
class AgentTally:
    """What the events log says about one agent beyond its registry row."""

    turns: int = 0
    """Turns that ended (any outcome), over every generation."""
    restarts: int = 0
    """Restarts the agents supervisor made after crashes."""
    last_turn: Mapping[str, Any] | None = None
    """The last ended turn: ``ts``, ``outcome``, ``duration_s``, ``model``, ``error``."""
    model: str | None = None
    """The model the last turn started with (its ``turn.started``: the override then, or the
    agent's configured model); the running turn's while one runs."""


class Tally:
    """The fold of the events log into per-agent tallies (not thread-safe: lock around it)."""

    def __init__(self) -> None:
        self.position = 0
        """Every event up to this id has been applied (or was of no interest)."""
        self._agents: dict[str, AgentTally] = {}

    def apply(self, events: Iterable[Event], upto: int) -> None:
        """Apply ``events`` (all tally-kind events with ids in (position, upto], in order)."""
        for event in events:
            if event.id <= self.position or event.agent is None:
                continue
            old = self._agents.get(event.agent, AgentTally())
            if event.kind == EventKind.TURN_STARTED:
                model = event.payload.get("model")
                if isinstance(model, str):
                    self._agents[event.agent] = replace(old, model=model)
            elif event.kind == EventKind.TURN_ENDED:
                p = event.payload
                last = {
                    "ts": event.ts,
                    "outcome": p.get("outcome"),
                    "duration_s": p.get("duration_s"),
                    "model": p.get("model"),
                    "error": p.get("error"),
                }
                self._agents[event.agent] = replace(old, turns=old.turns + 1, last_turn=last)
            elif event.kind == EventKind.AGENT_RESTARTING:
                self._agents[event.agent] = replace(old, restarts=old.restarts + 1)
        self.position = max(self.position, upto)

    def of(self, agent: str) -> AgentTally:
        """The agent's tally (zeros for an agent with no turn and no restart)."""
        return self._agents.get(agent, AgentTally())


def agent_view(
    agent: Agent,
    *,
    inbox_depth: int,
    inbox_oldest_age: float,
    tally: AgentTally,
    state_kept: bool,
    page_error: str | None = None,
    configured_model: str | None = None,
) -> dict[str, Any]:
    """One agent as the pages show it.

    ``state_kept`` says whether its state directory is still on disk: a destroyed agent is in
    K3PT ST4T3 only while it is (a purge removes it). ``configured_model`` is the model the
    agent runs without an override: its applied ``agent.toml``'s, else the hive default (None
    when neither is known).

    The model fields: ``model_next`` is what the next turn will use (the override, else the
    configured model — never a cleared override, never a placeholder), ``model_override`` the
    operator's override (None when cleared), ``model_last`` what the last turn ran with (None
    before any). ``model`` (= ``model_override``) and ``model_in_use`` (= ``model_next``) are
    the older names, kept for API clients.
    """
    destroyed = agent.state is AgentState.DESTROYED
    model_next = agent.model or configured_model
    return {
        "name": agent.name,
        "role": str(agent.role),
        "state": str(agent.state),
        "generation": agent.generation,
        "model_next": model_next,
        "model_override": agent.model,
        "model_last": tally.model,
        "model_persisted": agent.model_persisted,
        "model": agent.model,
        "model_in_use": model_next,
        "web_port": agent.web_port,
        "kept_state": destroyed and agent.kept_state and state_kept,
        "inbox_depth": inbox_depth,
        "inbox_oldest_age": round(inbox_oldest_age, 3),
        "turns": tally.turns,
        "restarts": tally.restarts,
        "last_turn": None if tally.last_turn is None else dict(tally.last_turn),
        "page_error": page_error,
        "updated": agent.updated,
    }


def approval_view(approval: Approval) -> dict[str, Any]:
    """One approval with the diff the operator reviews."""
    return {
        "id": approval.id,
        "kind": str(approval.kind),
        "agent": approval.agent,
        "ref": approval.ref,
        "diff": approval.diff,
        "requested_by": approval.requested_by,
        "requested": approval.requested,
        "status": str(approval.status),
        "decided_by": approval.decided_by,
        "decided": approval.decided,
        "note": approval.note,
        "carried_out": approval.carried_out,
        "outcome": approval.outcome,
        "reason": approval.reason,
    }


def question_view(question: Question) -> dict[str, Any]:
    """One operator question (answered or not)."""
    return {
        "id": question.id,
        "agent": question.agent,
        "question": question.question,
        "asked": question.asked,
        "answer": question.answer,
        "answered_by": question.answered_by,
        "answered": question.answered,
    }


def counts(
    agents: Iterable[Mapping[str, Any]], approvals: int, questions: int
) -> dict[str, int]:
    """The dashboard's headline numbers from agent views and the pending counts."""
    rows = list(agents)
    return {
        "agents": sum(1 for a in rows if a["state"] not in ("destroyed", "draft")),
        "approvals": approvals,
        "questions": questions,
        "drafts": sum(1 for a in rows if a["state"] == "draft"),
        "kept_state": sum(1 for a in rows if a["kept_state"]),
    }
