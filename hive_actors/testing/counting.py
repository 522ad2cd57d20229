"""A Hive whose store connections count their commits (to see group commit at work)."""

from __future__ import annotations

import threading
from typing import Any

from hive_actors.hive import Hive
from hive_actors.store import Store

__all__ = ["CountingHive"]


class CountingHive(Hive):
    """Counts every commit of every store connection it opens (sqlite's commit hook)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commits = 0
        self._lock = threading.Lock()

    def _count(self) -> bool:
        with self._lock:
            self.commits += 1
        return False  # False lets the commit go ahead

    def open_store(self) -> Store:
        store = super().open_store()
        store.db.connection.set_commit_hook(self._count)
        return store
