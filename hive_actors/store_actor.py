"""StoreActor: the first child of the hive; it owns the sqlite file.

It opens the file (creating or migrating it), takes the hive's lock on it — a second hive on the
same file fails here with a clear error — and runs start-up recovery: every message that was in
flight when the previous hive died goes back to its inbox (no turn survives the daemon). Only then
is it ready, so every service started after it (bus, approvals, agents…) finds a current schema.
Those services open their own connections; this one stays open to hold the lock.
"""

from __future__ import annotations

from typing import Any, Callable

from hive_actors.actor import HiveActor
from hive_actors.store import Store

__all__ = ["StoreActor"]


class StoreActor(HiveActor):
    """Holds the hive's store open (and locked) for the life of the tree."""

    def __init__(self, open_store: Callable[[], Store], *, name: str = "store") -> None:
        super().__init__(name=name)
        self._open_store = open_store
        self._store: Store | None = None
        self.recovery: Any = None

    def on_start(self) -> None:
        self._store = self._open_store()
        self.recovery = self._store.recover()
        self.log.info(
            "store open at %s (recovered %d in-flight message(s))",
            self._store.path,
            self.recovery.released,
        )

    def on_stop(self) -> None:
        if self._store is not None:
            self._store.close()

