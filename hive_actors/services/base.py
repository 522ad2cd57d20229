"""ServiceActor: a hive service on its own store connection, findable through the Directory.

The bus, the approval queue and the stats actor are services: each opens its own connection to
the hive's store when it starts (one connection per actor thread), registers under its
``SERVICE`` name so callers reach the live instance after a restart, and rings the hive's bell
after a commit so the event followers (the dashboard) read what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from hive_actors.actor import HiveActor
from hive_actors.services.bell import Bell
from hive_actors.services.directory import Directory
from hive_actors.store import Store

__all__ = ["ServiceActor"]


class ServiceActor(HiveActor):
    """A HiveActor with a store connection, a directory entry and the hive's bell."""

    SERVICE: ClassVar[str]
    """The name the service registers under in the Directory."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        bell: Bell | None = None,
        directory: Directory | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or self.SERVICE)
        self._open_store = open_store
        self._bell = bell or Bell()
        self._directory = directory
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        assert self._store is not None, f"{self.name} has no store before on_start"
        return self._store

    def on_start(self) -> None:
        self._store = self._open_store()
        if self._directory is not None:
            self._directory.register(self.SERVICE, self.actor_ref)

    def on_stop(self) -> None:
        if self._directory is not None:
            self._directory.withdraw(self.SERVICE, self.actor_ref)
        if self._store is not None:
            self._store.close()
