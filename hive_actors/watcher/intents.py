"""The hive's own stops, told to the crash watcher before they happen.

A unit the hive stops must not be taken for a crashed one, so every stop the hive asks of its
container backend is told to the :class:`~hive_actors.watcher.actor.CrashWatcherActor` first
(:class:`~hive_actors.watcher.reports.StopExpected`) and every start clears it
(:class:`~hive_actors.watcher.reports.StopCleared`); after a start, the run it began
(:class:`~hive_actors.watcher.messages.RunStarted`, for a backend that names its runs in its
status) is told too. The tell goes into the watcher's mailbox before the backend is asked to
stop: the signals and exits the stop causes reach the same mailbox later, so they are judged
with the intent known (FIFO order, no lock, no shared state).

:class:`StopIntents` is the watcher actor's private record of them (owned by its thread);
:class:`WatchedBackend` is the container backend the AgentActors use when the crash watcher
runs (on every backend): the real backend, with each ``stop`` told first, each ``start``
clearing it and the run it began told after it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hive_actors.containers.base import view_changed
from hive_actors.watcher.messages import RunStarted
from hive_actors.watcher.reports import StopCleared, StopExpected
from hive_actors.watcher.verdicts import FailedStop, Stopped, Verdict

__all__ = ["StopIntents", "WatchedBackend"]


class StopIntents:
    """The stops the hive has under way, per agent. Not thread-safe: one owner (the crash
    watcher actor, or a test's judge) reads and changes it."""

    def __init__(self) -> None:
        self._stopping: set[str] = set()

    def expect_stop(self, agent: str) -> None:
        """The hive is about to stop ``agent``'s container."""
        self._stopping.add(agent)

    def clear(self, agent: str) -> None:
        """The hive starts ``agent``'s container again: its next end is not the hive's doing."""
        self._stopping.discard(agent)

    def hive_stop(self, agent: str) -> bool:
        """Whether the hive asked for ``agent``'s unit to stop."""
        return agent in self._stopping

    def settle(self, agent: str, verdict: Verdict) -> None:
        """Drop the intent once the stop it announced has ended, one way or the other."""
        if isinstance(verdict, (Stopped, FailedStop)) and verdict.by == "hive":
            self._stopping.discard(agent)

    def stopping(self) -> frozenset[str]:
        """The agents whose stop is announced and not settled."""
        return frozenset(self._stopping)


class WatchedBackend:
    """A container backend whose stops are told to the crash watcher (see the module
    docstring); everything else goes straight to ``inner``.

    ``tell(message)`` delivers a :class:`~hive_actors.watcher.reports.StopExpected`,
    :class:`~hive_actors.watcher.reports.StopCleared` or
    :class:`~hive_actors.watcher.messages.RunStarted` to the crash watcher's mailbox (the
    daemon's tells it through the directory; one told while no watcher runs is dropped, and
    the next watcher reads the unit afresh)."""

    def __init__(
        self, inner: Any, tell: Callable[[StopExpected | StopCleared | RunStarted], object]
    ) -> None:
        self.inner = inner
        self._tell = tell

    def create(self, name: str, spec: Any) -> None:
        """See ``ContainerBackend.create``."""
        self.inner.create(name, spec)

    def start(self, name: str) -> None:
        """Clear any stop announcement, start, then tell the run that runs now (when the
        backend names its runs): it is the epoch's that announced itself before this start."""
        self._tell(StopCleared(name))
        self.inner.start(name)
        run_id = getattr(self.inner.status(name), "run_id", "")
        if run_id:
            self._tell(RunStarted(name, run_id))

    def stop(self, name: str, *, grace: Any = None) -> Any:
        """Announce the stop, then stop. A stop that fails keeps its announcement until the
        next start: the unit's end is then not taken for a crash on a guess."""
        self._tell(StopExpected(name))
        return self.inner.stop(name, grace=grace)

    def destroy(self, name: str, *, keep_state: bool) -> None:
        """See ``ContainerBackend.destroy``."""
        self.inner.destroy(name, keep_state=keep_state)

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """See ``ContainerBackend.exec``."""
        proc: subprocess.Popen[bytes] = self.inner.exec(name, argv, env, cwd)
        return proc

    def environment(self, name: str) -> dict[str, str]:
        """See ``ContainerBackend.environment``."""
        return dict(self.inner.environment(name))

    def inside(self, name: str, host_path: str | os.PathLike[str]) -> str:
        """See ``ContainerBackend.inside``."""
        return str(self.inner.inside(name, host_path))

    def pty_shell(self, name: str) -> tuple[int, int]:
        """See ``ContainerBackend.pty_shell``."""
        pid, master = self.inner.pty_shell(name)
        return int(pid), int(master)

    def status(self, name: str) -> Any:
        """See ``ContainerBackend.status``."""
        return self.inner.status(name)

    def view_changed(self, name: str) -> bool:
        """See ``ContainerBackend`` (False for an inner backend without it)."""
        return view_changed(self.inner, name)

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """See ``ContainerBackend.subscribe``."""
        unsubscribe: Callable[[], None] = self.inner.subscribe(callback)
        return unsubscribe

    def close(self) -> None:
        """See ``ContainerBackend.close``."""
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Backend-specific extras (``NixosBackend.report``…) pass through unchanged.
        return getattr(self.inner, name)
