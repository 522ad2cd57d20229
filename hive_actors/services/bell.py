"""A doorbell for committed events: actors ring it after a commit, followers wake and read.

The events table is the one ordered record of what happened; followers (the web gateway's push
path, the metrics) read it with ``events_since``. Ringing costs the committing actor one lock and
a notify — it never waits for a follower, however slow.
"""

from __future__ import annotations

import threading

__all__ = ["Bell"]


class Bell:
    """A counter that followers wait on; ``ring`` bumps it and wakes them all."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rings = 0

    def ring(self) -> None:
        with self._cond:
            self._rings += 1
            self._cond.notify_all()

    @property
    def rings(self) -> int:
        with self._cond:
            return self._rings

    def wait(self, seen: int, timeout: float | None) -> int:
        """Block until the bell rang past ``seen`` (or ``timeout``); returns the current count."""
        with self._cond:
            self._cond.wait_for(lambda: self._rings > seen, timeout)
            return self._rings
