"""Where the hive's services are now: role name → the current actor ref.

A service registers itself in ``on_start`` and withdraws in ``on_stop``; a restarted service
registers its new ref, so whoever looks it up at the moment of use always reaches the live one.
One Directory per hive (not a global), so tests run hives side by side.
"""

from __future__ import annotations

import threading
from typing import Any

from pykka import ActorDeadError, ActorRef

from hive_actors.errors import HiveError

__all__ = ["Directory", "ServiceDown"]


class ServiceDown(HiveError):
    """A service the caller needs is not running right now (it may be restarting)."""


class Directory:
    """A thread-safe map of service names to live actor refs."""

    def __init__(self) -> None:
        # A plain lock for lookups (every tell takes it), the condition on it for waiters.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._refs: dict[str, ActorRef[Any]] = {}

    def register(self, name: str, ref: ActorRef[Any]) -> None:
        with self._changed:
            self._refs[name] = ref
            self._changed.notify_all()

    def wait(
        self, name: str, timeout: float, *, other_than: ActorRef[Any] | None = None
    ) -> ActorRef[Any]:
        """Block until ``name`` is registered (by a ref other than ``other_than``: a successor).

        Raises ServiceDown after ``timeout`` seconds.
        """
        with self._changed:
            found = self._changed.wait_for(
                lambda: self._refs.get(name) not in (None, other_than), timeout
            )
            if not found:
                raise ServiceDown(f"the hive's {name} service did not come up within {timeout:g} s")
            return self._refs[name]

    def withdraw(self, name: str, ref: ActorRef[Any]) -> None:
        """Remove ``name`` if it still points at ``ref`` (a successor may have registered)."""
        with self._lock:
            if self._refs.get(name) == ref:
                del self._refs[name]

    def find(self, name: str) -> ActorRef[Any] | None:
        with self._lock:
            return self._refs.get(name)

    def get(self, name: str) -> ActorRef[Any]:
        ref = self.find(name)
        if ref is None or not ref.is_alive():
            raise ServiceDown(f"the hive's {name} service is not running (it may be restarting); "
                              "try again in a moment")
        return ref

    def tell(self, name: str, message: Any) -> bool:
        """Tell ``name`` if it is up; False (and nothing sent) if it is not."""
        with self._lock:  # find(), inline: every tell of the hive goes through here
            ref = self._refs.get(name)
        if ref is None:
            return False
        try:
            ref.tell(message)
        except ActorDeadError:  # it died between find and tell
            return False
        return True
