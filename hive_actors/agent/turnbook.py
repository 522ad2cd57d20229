"""Which turn each agent is in, for the MCP ``recv`` tool (called from the web thread).

The AgentActor opens a turn before its CLI runs and closes it when the turn ends; ``recv``
claims the agent's new messages under the open turn, so they are acknowledged (or released)
together with the messages the turn started with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["OpenTurn", "TurnBook"]


@dataclass(frozen=True)
class OpenTurn:
    agent: str
    generation: int
    turn_id: str


class TurnBook:
    """Thread-safe agent → open turn."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: dict[str, OpenTurn] = {}

    def open(self, turn: OpenTurn) -> None:
        with self._lock:
            self._turns[turn.agent] = turn

    def close(self, agent: str, turn_id: str) -> None:
        with self._lock:
            current = self._turns.get(agent)
            if current is not None and current.turn_id == turn_id:
                del self._turns[agent]

    def current(self, agent: str) -> OpenTurn | None:
        with self._lock:
            return self._turns.get(agent)
