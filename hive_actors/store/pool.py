"""A bounded pool of store connections for callers on short-lived worker threads.

Actors own their connection for their whole life (opened in ``on_start``, closed in
``on_stop``). Web requests, MCP tool calls and websocket reads run instead on worker threads
that come and go (anyio's idle workers exit after a few seconds, the next request starts a new
one): a connection per thread, kept, is a leak — two descriptors (the file and its WAL) and a
page cache per thread that ever ran a read. A :class:`StorePool` lends a connection for one
use and takes it back: at most ``max_idle`` stay open between uses, whatever the threads do,
and :meth:`StorePool.close` (by the pool's owner, when it stops) closes them.

A connection is used by one thread at a time (it is lent to one caller at a time); one that
comes back inside a transaction, or after a :class:`~hive_actors.errors.StoreError`, is closed
instead of kept: the next caller gets a fresh one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hive_actors.errors import HiveError, StoreError

from .store import Store

__all__ = ["DEFAULT_MAX_IDLE", "StorePool"]

log = logging.getLogger(__name__)

DEFAULT_MAX_IDLE = 4
"""Connections a pool keeps open between uses (more may be lent at once; they are closed
when they come back)."""


class StorePool:
    """Lends store connections to any thread, one caller at a time each; thread-safe."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        max_idle: int = DEFAULT_MAX_IDLE,
        name: str = "store pool",
    ) -> None:
        if max_idle < 0:
            raise ValueError(f"{name}: max_idle must be 0 or more, got {max_idle}")
        self._open_store = open_store
        self._max_idle = max_idle
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[Store] = []
        self._lent = 0
        self._closed = False
        self.opened = 0
        """Connections opened so far (a test's and a benchmark's view of the churn)."""

    @property
    def open_count(self) -> int:
        """Connections open now: idle in the pool plus lent out."""
        with self._lock:
            return len(self._idle) + self._lent

    @contextmanager
    def connection(self) -> Iterator[Store]:
        """Lend a connection for the ``with`` block; raise HiveError once the pool is closed."""
        store = self._take()
        # A refusal or a NotFound leaves the connection as good as it was; a store error
        # (a busy file, a disk error) may not: that one is closed.
        healthy = True
        try:
            yield store
        except StoreError:
            healthy = False
            raise
        finally:
            idle = not store.db.in_transaction and store.db.connection.get_autocommit()
            self._give_back(store, healthy and idle)

    def close(self) -> None:
        """Close the idle connections; those lent out are closed as they come back.

        Idempotent; later :meth:`connection` calls raise HiveError.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for store in idle:
            self._close(store)

    def _take(self) -> Store:
        with self._lock:
            if self._closed:
                raise HiveError(f"{self._name} is closed (its owner is stopping)")
            if self._idle:
                self._lent += 1
                return self._idle.pop()
            self._lent += 1
        try:
            store = self._open_store()
        except BaseException:
            with self._lock:
                self._lent -= 1
            raise
        with self._lock:
            self.opened += 1
        return store

    def _give_back(self, store: Store, keep: bool) -> None:
        with self._lock:
            self._lent -= 1
            if keep and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(store)
                return
        self._close(store)

    def _close(self, store: Store) -> None:
        try:
            store.close()
        except StoreError as exc:
            log.warning("%s: closing a connection failed: %s", self._name, exc)
