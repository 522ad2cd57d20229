"""The push path: follow the hive's bell, read what was committed, hand it to the browsers.

Actors ring the bell after every commit (:mod:`hive_actors.services.bell`); ringing costs them a lock and
a notify, never a wait. The pump is a thread of the gateway: it waits on the bell, reads the
events after the last one it handed on (on its own store connection, in a read transaction that
never blocks a writer), and publishes them — :meth:`~hive_actors.httpd.Fanout.publish` is O(1)
and never waits for a browser. A commit whose ring was missed is picked up by the next ring or
by the idle timeout, whichever comes first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from hive_actors.services.bell import Bell

__all__ = ["EventPump"]

log = logging.getLogger(__name__)


class EventPump:
    """A thread that publishes every committed event, in id order, exactly once."""

    def __init__(
        self,
        bell: Bell,
        read: Callable[[int, int], Sequence[Any]],
        publish: Callable[[Sequence[Any]], None],
        *,
        after: int,
        on_failure: Callable[[BaseException], None],
        page: int = 500,
        idle_timeout: float = 1.0,
        name: str = "gateway-pump",
    ) -> None:
        """``read(after_id, limit)`` returns events (objects with an ``id``) oldest first;
        ``publish(events)`` hands a batch on and must not block. The pump starts after event
        ``after``; if reading or publishing raises, it calls ``on_failure`` and ends."""
        self._bell = bell
        self._read = read
        self._publish = publish
        self._on_failure = on_failure
        self._page = page
        self._idle = idle_timeout
        self._stopping = threading.Event()
        self.last_id = after
        """The newest event handed on."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it (bounded)."""
        self._stopping.set()
        self._bell.ring()  # wakes the wait at once; other followers just find nothing new
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("gateway: the event pump did not stop within %g s", timeout)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                # Read the count first: a ring that comes during the read is not lost.
                rings = self._bell.rings
                batch = self._read(self.last_id, self._page)
                if batch:
                    self._publish(batch)
                    self.last_id = int(batch[-1].id)
                    if len(batch) == self._page:
                        continue  # more is waiting
                self._bell.wait(rings, self._idle)
        except BaseException as exc:
            if not self._stopping.is_set():
                log.exception("gateway: the event pump failed after event %d", self.last_id)
                self._on_failure(exc)
