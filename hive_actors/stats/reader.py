"""StatsReader: the web side's own store connection, for ``/api/stats`` and ``/metrics``.

A :class:`~hive_actors.store.Store` is used by one thread at a time; HTTP requests run on worker
threads, so the reader serialises them on a lock. It opens lazily (the web server can start
before the store exists) and reopens after a store error, so a transient failure does not stick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from hive_actors.errors import StoreError
from hive_actors.store import Store

__all__ = ["StatsReader"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class StatsReader:
    """One lazily opened read connection, one caller at a time."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._open_store = open_store
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._closed = False

    def use(self, read: Callable[[Store], T]) -> T:
        """Run ``read`` with the store, under the lock; raise StoreError if it cannot be used."""
        with self._lock:
            if self._closed:
                raise StoreError("stats: the reader is closed (the hive is stopping)")
            if self._store is None:
                self._store = self._open_store()
            try:
                return read(self._store)
            except StoreError:
                # Drop the connection: the next caller gets a fresh one.
                store, self._store = self._store, None
                try:
                    store.close()
                except StoreError as exc:
                    log.warning("stats reader: closing a failed connection: %s", exc)
                raise

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise StoreError."""
        with self._lock:
            self._closed = True
            store, self._store = self._store, None
        if store is not None:
            store.close()
