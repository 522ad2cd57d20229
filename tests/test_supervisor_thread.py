"""The agents' supervisor runs only in its own actor thread, whoever saw the crash.

A whole hive (process containers, the real claude CLI, the loopback model) whose
``AgentsSupervisor`` has its message handling, its decision and its notices wrapped to record
the thread each runs in. A process-backend crash (``kill -9`` of the keeper), a stall (a turn
past its deadline) and a crash of the agent's unit seen by the D-Bus crash watcher (the
stand-in systemd on a real private dbus-daemon) all take the one route: the AgentActor dies
of the crash (``AgentCrashed``), and the supervisor decides on its ``Down``, in its own thread.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hive_actors.agent.supervisor import AgentsSupervisor
from hive_actors.messages import Crashed, Down
from hive_actors.store import Event, EventKind, Role
from hive_actors.testing.dbus_daemon import DbusDaemon
from hive_actors.watcher.messages import AgentCrashed
from tests.support.crash import crash_hive, unit
from tests.support.hive import EventWatch, running_hive, send

_WRAPPED = ("receive", "on_child_event", "_decide", "_record", "_on_down")
"""What the supervisor does on a crash: take the Down, decide, tell and record."""


@dataclass
class Threads:
    """Which thread ran what, per AgentsSupervisor instance."""

    owners: dict[int, int] = field(default_factory=dict)
    """id of the supervisor → the ident of its actor thread (where its ``on_start`` ran)."""
    calls: list[tuple[int, str, int, str]] = field(default_factory=list)
    """(id of the supervisor, the method, the ident and name of the thread it ran in), in
    order."""
    downs: list[Down] = field(default_factory=list)
    """Every Down the supervisor received, in order."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def strangers(self) -> list[tuple[str, str]]:
        """The calls that ran outside their supervisor's own thread: (method, thread name)."""
        with self.lock:
            return [(what, name) for sup, what, ident, name in self.calls
                    if self.owners.get(sup) != ident]

    def crashes_decided(self, agent: str) -> list[str]:
        """The sources of the crashes ``agent``'s AgentActor died of, as the Downs said."""
        with self.lock:
            downs = list(self.downs)
        return [d.reason.exception.crash.source for d in downs
                if isinstance(d.tag, tuple) and d.tag[0] == agent
                and isinstance(d.reason, Crashed)
                and isinstance(d.reason.exception, AgentCrashed)]


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> Threads:
    """Record, for every AgentsSupervisor of the test, its own thread and where each of its
    handlers ran."""
    seen = Threads()
    original_start = AgentsSupervisor.on_start

    def on_start(self: AgentsSupervisor) -> None:
        with seen.lock:
            seen.owners[id(self)] = threading.get_ident()
        original_start(self)

    monkeypatch.setattr(AgentsSupervisor, "on_start", on_start)

    def wrap(name: str) -> Callable[..., Any]:
        original = getattr(AgentsSupervisor, name)

        def recorded(self: AgentsSupervisor, *args: Any, **kwargs: Any) -> Any:
            with seen.lock:
                thread = threading.current_thread()
                seen.calls.append((id(self), name, thread.ident or 0, thread.name))
                if name == "receive" and isinstance(args[0], Down):
                    seen.downs.append(args[0])
            return original(self, *args, **kwargs)

        return recorded

    for name in _WRAPPED:
        monkeypatch.setattr(AgentsSupervisor, name, wrap(name))
    return seen


def _restarting(events: EventWatch, agent: str, after: int = 0) -> Event:
    return events.wait_for(lambda e: e.kind == EventKind.AGENT_RESTARTING and e.agent == agent,
                           after=after)


def _idle(events: EventWatch, agent: str, after: int = 0) -> Event:
    return events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == agent
                           and e.payload["to"] == "idle", after=after)


def test_backend_crashes_and_stalls_are_decided_in_the_supervisors_own_thread(
    tmp_path: Path, threads: Threads
) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}, turn_deadline=3.0,
                      backoff_min=0.05, backoff_jitter=0.0) as (daemon, _root, _model, events):
        up = _idle(events, "alice")
        # A process-backend crash: the keeper killed under the agent.
        pid = daemon.backend.status("alice").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        first = _restarting(events, "alice", after=up.id)
        assert first.payload["reason"] == "signal SIGKILL (9)"
        again = _idle(events, "alice", after=first.id)
        # A stall: a turn past its deadline.
        send(daemon, "alice", "@sleep 30\nthink for a long time")
        second = _restarting(events, "alice", after=again.id)
        assert second.payload["reason"].startswith("stalled (turn alice-2-")
        _idle(events, "alice", after=second.id)
    # Both reached the supervisor as the AgentActor's exit, and each decision was made there.
    assert threads.crashes_decided("alice") == ["backend", "stall"]
    assert len(threads.owners) == 1
    assert {what for _, what, _, _ in threads.calls} >= set(_WRAPPED)
    assert threads.strangers() == []


@pytest.fixture(scope="module")
def bus() -> Iterator[DbusDaemon]:
    with DbusDaemon() as daemon:
        yield daemon


def test_a_dbus_crash_is_decided_in_the_supervisors_own_thread(
    tmp_path: Path, bus: DbusDaemon, threads: Threads
) -> None:
    with crash_hive(tmp_path, bus.address, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        hive.fake.crash(unit("alice"), exit_code=4)
        restarting = hive.after(EventKind.AGENT_RESTARTING, "alice")
        assert restarting.payload["reason"] == "exit-code 4"
        assert restarting.payload["notice"].startswith("alice crashed: exit-code 4; restart 1")
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice")
        assert crashed.id < restarting.id and crashed.payload["source"] == "systemd"
        hive.after(EventKind.AGENT_STATE, "alice", after=restarting.id,
                   where=lambda e: e.payload["to"] == "idle")
    assert threads.crashes_decided("alice") == ["systemd"]
    assert len(threads.owners) == 1
    assert threads.strangers() == []

