"""The hive's own stops, announced to the crash watcher before they happen.

A unit the hive stops must not be taken for a crashed one, so every stop the hive asks of its
container backend is announced first (``expect_stop``) and every start clears it. The watcher may
be restarting at that moment, so :class:`StopIntents` keeps the announcements and hands them to
each watcher that attaches. :class:`WatchedBackend` is the container backend the AgentActors
use when the crash watcher runs: the real backend, with each ``stop`` announced and each
``start`` clearing the announcement.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

__all__ = ["IntentSink", "StopIntents", "WatchedBackend"]


class IntentSink(Protocol):
    """What :class:`StopIntents` drives: a running :class:`~hive_actors.watcher.SystemdWatch`."""

    def expect_stop(self, agent: str) -> None:
        """The hive is stopping ``agent``'s unit."""

    def clear_intent(self, agent: str) -> None:
        """Forget a stop announcement."""


class StopIntents:
    """The stops the hive has under way, relayed to the watcher attached now. Thread-safe."""

    def __init__(self) -> None:
        # Lock order: this lock, then the watcher's own (it never calls back into us).
        self._lock = threading.Lock()
        self._sink: IntentSink | None = None
        self._stopping: set[str] = set()

    def attach(self, sink: IntentSink) -> None:
        """A watcher starts: it gets every stop still under way."""
        with self._lock:
            self._sink = sink
            for agent in sorted(self._stopping):
                sink.expect_stop(agent)

    def detach(self, sink: IntentSink) -> None:
        """A watcher ends (only the attached one is dropped)."""
        with self._lock:
            if self._sink is sink:
                self._sink = None

    def expect_stop(self, agent: str) -> None:
        """The hive is about to stop ``agent``'s container."""
        with self._lock:
            self._stopping.add(agent)
            if self._sink is not None:
                self._sink.expect_stop(agent)

    def clear(self, agent: str) -> None:
        """The hive starts ``agent``'s container again: its next end is not the hive's doing."""
        with self._lock:
            self._stopping.discard(agent)
            if self._sink is not None:
                self._sink.clear_intent(agent)

    def settled(self, agent: str) -> None:
        """The watcher saw the announced stop end (it forgets its copy by itself)."""
        with self._lock:
            self._stopping.discard(agent)

    def stopping(self) -> frozenset[str]:
        """The agents whose stop is announced and not settled."""
        with self._lock:
            return frozenset(self._stopping)


class WatchedBackend:
    """A container backend whose stops are announced to the crash watcher (see the module
    docstring); everything else goes straight to ``inner``."""

    def __init__(self, inner: Any, intents: StopIntents) -> None:
        self.inner = inner
        self.intents = intents

    def create(self, name: str, spec: Any) -> None:
        """See ``ContainerBackend.create``."""
        self.inner.create(name, spec)

    def start(self, name: str) -> None:
        """Clear any stop announcement, then start."""
        self.intents.clear(name)
        self.inner.start(name)

    def stop(self, name: str, *, grace: Any = None) -> Any:
        """Announce the stop, then stop. A stop that fails keeps its announcement until the
        next start: the unit's end is then not taken for a crash on a guess."""
        self.intents.expect_stop(name)
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
