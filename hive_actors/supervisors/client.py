"""Blocking calls on a supervisor, for code outside the actor system (CLI, tests, the gateway's
worker threads). Actors must not use these from inside a handler: tell, and handle the answer."""

from __future__ import annotations

from typing import Any

from pykka import ActorRef

from hive_actors.supervisors.messages import (
    ChildInfo,
    ChildStats,
    CountChildren,
    DeleteChild,
    RestartChild,
    StartChild,
    Statistics,
    TerminateChild,
    WhichChildren,
)
from hive_actors.supervisors.spec import ChildSpec

__all__ = ["SupervisorClient"]


class SupervisorClient:
    """A supervisor's ref with OTP's API as methods; every call has a deadline."""

    def __init__(self, ref: ActorRef[Any], timeout: float = 30.0) -> None:
        self.ref = ref
        self.timeout = timeout

    def _ask(self, message: Any, timeout: float | None) -> Any:
        return self.ref.ask(message, timeout=self.timeout if timeout is None else timeout)

    def start_child(self, spec: ChildSpec, timeout: float | None = None) -> ActorRef[Any]:
        """Start a child and return its ref once it is ready."""
        return self._ask(StartChild(spec), timeout)  # type: ignore[no-any-return]

    def terminate_child(self, child_id: str, timeout: float | None = None) -> None:
        self._ask(TerminateChild(child_id), timeout)

    def restart_child(self, child_id: str, timeout: float | None = None) -> ActorRef[Any]:
        return self._ask(RestartChild(child_id), timeout)  # type: ignore[no-any-return]

    def delete_child(self, child_id: str, timeout: float | None = None) -> None:
        self._ask(DeleteChild(child_id), timeout)

    def which_children(self, timeout: float | None = None) -> list[ChildInfo]:
        return self._ask(WhichChildren(), timeout)  # type: ignore[no-any-return]

    def count_children(self, timeout: float | None = None) -> dict[str, int]:
        return self._ask(CountChildren(), timeout)  # type: ignore[no-any-return]

    def statistics(self, timeout: float | None = None) -> list[ChildStats]:
        return self._ask(Statistics(), timeout)  # type: ignore[no-any-return]
