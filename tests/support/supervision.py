"""Supervision test parts: children that crash, quit or become ready on command, a journal
of what they did, and a tree of them in virtual time."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import pykka

from hive_actors import lifecycle
from hive_actors.actor import HiveActor
from hive_actors.clock import FakeClock
from hive_actors.messages import Crashed
from hive_actors.supervisors import (
    Backoff,
    ChildEvent,
    ChildSpec,
    Supervisor,
    SupervisorClient,
    SupervisorFlags,
)
from tests.support.timeout import TIMEOUT


@dataclass(frozen=True)
class Crash:
    pass


@dataclass(frozen=True)
class Quit:
    """Stop normally, from inside."""


@dataclass(frozen=True)
class BecomeReady:
    pass


class Journal:
    """Lifecycle lines from every child, in the order they happened, across threads."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def add(self, line: str) -> None:
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def wait_for(self, line: str, count: int = 1) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.lines.count(line) >= count, TIMEOUT), (
                f"never saw {line!r} x{count}: {self.lines}")

    def take(self) -> list[str]:
        with self._cond:
            lines, self.lines = self.lines, []
            return lines


class Child(HiveActor):
    def __init__(self, cid: str, journal: Journal, *, ready: bool = True,
                 stop_gate: threading.Event | None = None) -> None:
        super().__init__(name=cid)
        self.cid = cid
        self.journal = journal
        self.auto_ready = ready
        self.stop_gate = stop_gate

    def on_start(self) -> None:
        self.journal.add(f"start {self.cid}")
        if self.auto_ready:
            self.signal_ready()

    def on_stop(self) -> None:
        if self.stop_gate is not None:
            self.stop_gate.wait(TIMEOUT)
        self.journal.add(f"stop {self.cid}")

    def receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError(f"{self.cid} crashed")
            case Quit():
                self.stop()
            case BecomeReady():
                self.signal_ready()
            case _:
                return super().receive(message)
        return None


Child.ready_on_start = False  # readiness is signalled in on_start, or later on request


def child(cid: str, journal: Journal, **kwargs: Any) -> ChildSpec:
    opts = {k: kwargs.pop(k) for k in ("ready", "stop_gate") if k in kwargs}
    return ChildSpec(cid, lambda: Child.start(cid, journal, **opts), **kwargs)


class Tree:
    """A supervisor under test, its client, its clock and its event stream."""

    def __init__(self, specs: list[ChildSpec], flags: SupervisorFlags, *,
                 wait: bool = True, name: str = "sup",
                 kind: type[Supervisor] = Supervisor) -> None:
        self.clock = FakeClock()
        self.events: queue.Queue[ChildEvent] = queue.Queue()
        self.ref = kind.start(specs, flags, name=name, clock=self.clock,
                              rng=lambda: 0.5, on_child_event=self.events.put)
        self.client = SupervisorClient(self.ref, TIMEOUT)
        if wait:
            assert lifecycle.wait_ready(self.ref, TIMEOUT)
            # The boot's own "started" events are told before the supervisor is ready.
            for _ in specs:
                assert self.event("started").kind == "started"

    def ref_of(self, cid: str) -> pykka.ActorRef[Any]:
        ref = {c.id: c.ref for c in self.client.which_children()}[cid]
        assert ref is not None, f"{cid} is down"
        return ref

    def event(self, kind: str, cid: str | None = None) -> ChildEvent:
        """The next event of that kind (for that child), skipping others."""
        while True:
            ev = self.events.get(timeout=TIMEOUT)
            if ev.kind == kind and (cid is None or ev.child == cid):
                return ev

    def crash(self, cid: str) -> None:
        ref = self.ref_of(cid)
        ref.tell(Crash())
        assert isinstance(lifecycle.wait_exit(ref, TIMEOUT), Crashed)

    def stats(self, cid: str) -> Any:
        return {s.id: s for s in self.client.statistics()}[cid]


def no_backoff(strategy: str, intensity: int = 10, period: float = 60) -> SupervisorFlags:
    return SupervisorFlags(strategy, intensity, period, Backoff(min=0))
