"""Running a :class:`~hive_actors.watcher.watch.SystemdWatch` in a thread of its own.

The watcher is asyncio; the hive's actors are threads. :func:`run_in_thread` gives the watcher a
thread and an event loop, and hands back a :class:`WatchThread` whose :meth:`~WatchThread.stop`
is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from hive_actors.errors import HiveError, StartFailure

__all__ = ["WatchThread", "run_in_thread"]

log = logging.getLogger(__name__)


class _Runnable(Protocol):
    def run(self) -> Coroutine[Any, Any, None]:
        """Run until stopped."""

    def stop(self) -> None:
        """Ask run() to return."""


class WatchThread:
    """A watcher running in its own thread; :meth:`stop` it before dropping it."""

    def __init__(self, watch: _Runnable, thread: threading.Thread, box: dict[str, Any]) -> None:
        self._watch = watch
        self._thread = thread
        self._box = box

    @property
    def alive(self) -> bool:
        """Whether the watcher's thread still runs."""
        return self._thread.is_alive()

    @property
    def exception(self) -> BaseException | None:
        """What the watcher died of, once its thread ended (None after a requested stop)."""
        exc: BaseException | None = self._box.get("exception")
        return exc

    def stop(self, timeout: float) -> None:
        """Stop the watcher and wait for its thread; HiveError when it is still running after
        ``timeout`` seconds."""
        self._watch.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise HiveError(
                f"watcher: its thread did not stop within {timeout:g} s; "
                "a D-Bus call may be stuck (see the thread dump)"
            )


def run_in_thread(
    watch: _Runnable,
    running: threading.Event,
    *,
    timeout: float,
    on_exit: Callable[[BaseException | None], None] | None,
) -> WatchThread:
    """Start ``watch.run()`` in a new thread; return once ``running`` is set (the loop runs)."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            asyncio.run(watch.run())
        except BaseException as exc:
            box["exception"] = exc
            log.exception("watcher: died")
        finally:
            if on_exit is not None:
                try:
                    on_exit(box.get("exception"))
                except Exception:
                    log.exception("watcher: on_exit raised")

    thread = threading.Thread(target=main, name="systemd-watch", daemon=True)
    thread.start()
    handle = WatchThread(watch, thread, box)
    if not running.wait(timeout):
        handle.stop(timeout)
        raise StartFailure(f"watcher: its event loop did not start within {timeout:g} s")
    return handle
