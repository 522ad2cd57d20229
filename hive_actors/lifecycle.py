"""Who is alive, who is ready, and who wants to know: monitors and readiness, across threads.

Each :class:`~hive_actors.actor.HiveActor` registers a :class:`Life` when it is built. The Life
records readiness and the exit reason, and holds the monitors (actors told :class:`Down`) and the
readiness watchers (actors told :class:`Ready`). Registration and notification happen under the
Life's lock, so a watch that races with the actor's death still gets exactly one ``Down``: either
the death finds the monitor in the list, or the watch finds the death already recorded.

Non-actor code (the CLI's main thread, tests) waits with :func:`wait_ready` and :func:`wait_exit`.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

from pykka import ActorDeadError, ActorRef

from hive_actors.messages import Down, ExitReason, NoProc, Ready

__all__ = [
    "Life",
    "demonitor",
    "exit_reason",
    "is_ready",
    "monitor",
    "notify_ready",
    "wait_exit",
    "wait_ready",
]

# Ends are remembered for a while so a late watcher still learns the real reason.
_RECENT_EXITS = 4096
_lock = threading.Lock()
_alive: dict[str, Life] = {}
_recent: OrderedDict[str, Life] = OrderedDict()
_monitor_ids = itertools.count(1)


class Life:
    """The lifecycle record of one actor."""

    def __init__(self, urn: str, name: str) -> None:
        self.urn = urn
        self.name = name
        self.ref: ActorRef[Any] | None = None
        self.ready = False
        self.exit: ExitReason | None = None
        self._cond = threading.Condition()
        self._monitors: dict[int, tuple[ActorRef[Any], Any]] = {}
        self._ready_watchers: list[tuple[ActorRef[Any], Any]] = []
        with _lock:
            _alive[urn] = self

    def set_ready(self) -> bool:
        """Record readiness and tell the watchers; False if already ready or dead."""
        with self._cond:
            if self.ready or self.exit is not None:
                return False
            self.ready = True
            watchers, self._ready_watchers = self._ready_watchers, []
            self._cond.notify_all()
        assert self.ref is not None
        for watcher, tag in watchers:
            _tell(watcher, Ready(self.ref, self.name, tag))
        return True

    def set_exit(self, reason: ExitReason) -> None:
        """Record the end and tell every monitor, once."""
        with self._cond:
            if self.exit is not None:
                return
            self.exit = reason
            monitors, self._monitors = list(self._monitors.values()), {}
            self._ready_watchers = []
            self._cond.notify_all()
        with _lock:
            _alive.pop(self.urn, None)
            _recent[self.urn] = self
            while len(_recent) > _RECENT_EXITS:
                _recent.popitem(last=False)
        assert self.ref is not None
        for watcher, tag in monitors:
            _tell(watcher, Down(self.ref, self.name, reason, tag))

    def add_monitor(self, watcher: ActorRef[Any], tag: Any) -> int:
        mref = next(_monitor_ids)
        with self._cond:
            if self.exit is None:
                self._monitors[mref] = (watcher, tag)
                return mref
            reason = self.exit
        assert self.ref is not None
        _tell(watcher, Down(self.ref, self.name, reason, tag))
        return mref

    def remove_monitor(self, mref: int) -> None:
        with self._cond:
            self._monitors.pop(mref, None)

    def add_ready_watcher(self, watcher: ActorRef[Any], tag: Any) -> None:
        with self._cond:
            if not self.ready:
                if self.exit is None:
                    self._ready_watchers.append((watcher, tag))
                # A dead, never-ready actor sends no Ready: its monitors get Down instead.
                return
        assert self.ref is not None
        _tell(watcher, Ready(self.ref, self.name, tag))

    def wait(self, predicate: str, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: getattr(self, predicate) or self.exit is not None, timeout
            )


def _tell(watcher: ActorRef[Any], message: Any) -> None:
    """Notify a watcher; one that died meanwhile needs no notice."""
    try:
        watcher.tell(message)
    except ActorDeadError:
        pass


def _find(ref: ActorRef[Any]) -> Life | None:
    with _lock:
        return _alive.get(ref.actor_urn) or _recent.get(ref.actor_urn)


def monitor(target: ActorRef[Any], watcher: ActorRef[Any], tag: Any = None) -> int:
    """Tell ``watcher`` a :class:`Down` when ``target`` ends (at once if it already has)."""
    life = _find(target)
    if life is None:
        _tell(watcher, Down(target, "?", NoProc(), tag))
        return next(_monitor_ids)
    return life.add_monitor(watcher, tag)


def demonitor(target: ActorRef[Any], mref: int) -> None:
    """Stop watching; a Down already sent is not taken back."""
    life = _find(target)
    if life is not None:
        life.remove_monitor(mref)


def notify_ready(target: ActorRef[Any], watcher: ActorRef[Any], tag: Any = None) -> None:
    """Tell ``watcher`` a :class:`Ready` once ``target`` is ready (at once if it is)."""
    life = _find(target)
    if life is not None:
        life.add_ready_watcher(watcher, tag)


def is_ready(ref: ActorRef[Any]) -> bool:
    life = _find(ref)
    return life is not None and life.ready and life.exit is None


def exit_reason(ref: ActorRef[Any]) -> ExitReason | None:
    """Why ``ref`` ended, None while it lives; NoProc when unknown."""
    life = _find(ref)
    if life is None:
        return NoProc()
    return life.exit


def wait_ready(ref: ActorRef[Any], timeout: float | None) -> bool:
    """Block until ``ref`` is ready (True) or dead or out of time (False)."""
    life = _find(ref)
    if life is None:
        return False
    life.wait("ready", timeout)
    return life.ready and life.exit is None


def wait_exit(ref: ActorRef[Any], timeout: float | None) -> ExitReason | None:
    """Block until ``ref`` ends; its reason, or None if it still lives after ``timeout``."""
    life = _find(ref)
    if life is None:
        return NoProc()
    life.wait("exit", timeout)
    return life.exit
