"""One route for a crash: the process backend's reaper feeds the CrashWatcherActor, which
decides (its run book, the hive's stop intents) and tells the agent's AgentActor, as it does
for a unit systemd reports on D-Bus. Real process containers, the real claude CLI, the loopback
model, the real tree and sqlite; every wait is on an event or a message, with a timeout."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pykka
import pytest

from hive_actors.agent.supervisor import SpawnAgent, StopAgent
from hive_actors.containers.base import ContainerBackend, ContainerExit
from hive_actors.daemon import Daemon
from hive_actors.store import Event, EventKind, Role
from hive_actors.supervisors.messages import RestartChild, TerminateChild
from hive_actors.watcher import StopExpected
from hive_actors.watcher.messages import ExitHandled, WatchReports, agent_service
from tests.support.hive import EventWatch, hive_on, running_hive
from tests.support.probe import ProbeHandle
from tests.support.timeout import TIMEOUT

Hive = tuple[Daemon, EventWatch]


def backend_of(daemon: Daemon) -> ContainerBackend:
    assert daemon.backend is not None
    return daemon.backend


def follow_watcher(daemon: Daemon) -> ProbeHandle:
    """A probe told everything the crash watcher handles from now on."""
    probe = ProbeHandle()
    daemon.hive.directory.get("watcher").ask(WatchReports(probe.ref), timeout=TIMEOUT)
    return probe


def exit_handled(probe: ProbeHandle, agent: str, run_id: str) -> ExitHandled:
    """The watcher's judgement of the exit of ``agent``'s run ``run_id`` (other items skipped)."""
    deadline = threading.Event()
    timer = threading.Timer(TIMEOUT * 3, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            item = probe.get(timeout=TIMEOUT * 3)
            if (isinstance(item, ExitHandled) and item.exit.name == agent
                    and item.exit.run_id == run_id):
                return item
        raise AssertionError(f"the watcher handled no exit of {agent}'s run {run_id}")
    finally:
        timer.cancel()


def up(events: EventWatch, agent: str, after: int = 0) -> Event:
    return events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == agent
                           and e.payload["to"] == "idle", after=after)


def agent_actor(daemon: Daemon, agent: str) -> pykka.ActorRef[Any]:
    return daemon.hive.directory.get(agent_service(agent))


def recorded(daemon: Daemon, kind: EventKind, agent: str, after: int = 0) -> list[Event]:
    """Every ``kind`` event about ``agent`` committed so far (read from the events table)."""
    with daemon.hive.open_store() as store:
        return [e for e in store.events.events_since(after, 100_000)
                if e.kind == kind and e.agent == agent]


def last_event(daemon: Daemon) -> int:
    with daemon.hive.open_store() as store:
        return max((e.id for e in store.events.events_since(0, 100_000)), default=0)


def test_a_killed_container_is_a_crash_the_watcher_tells_and_the_supervisor_decides(
    tmp_path: Path,
) -> None:
    with hive_on(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as (daemon, events):
        up(events, "alice")
        probe = follow_watcher(daemon)
        first = backend_of(daemon).status("alice")
        assert first.pid is not None and first.run_id
        os.kill(first.pid, signal.SIGKILL)
        # The watcher judged the reaper's exit a crash of epoch 1 …
        handled = exit_handled(probe, "alice", first.run_id)
        assert (handled.outcome, handled.epoch) == ("crash", 1)
        assert (handled.exit.result, handled.exit.signal, handled.exit.expected) == (
            "signal", 9, False)
        # … told it to alice's AgentActor, which died of it; the supervisor decided as for
        # every crash: recorded, restarted with backoff, the manager told.
        crash = events.wait_for(lambda e: e.kind == EventKind.AGENT_CRASHED
                                and e.agent == "alice")
        assert "ignored" not in crash.payload
        assert {k: crash.payload[k] for k in ("source", "result", "signal", "epoch")} == {
            "source": "backend", "result": "signal", "signal": 9, "epoch": 1}
        # The watcher's words (the run it tied to the epoch), not an AgentActor's own.
        assert crash.payload["detail"] == (
            f"the container's main process ended (run {first.run_id})")
        restart = events.wait_for(lambda e: e.kind == EventKind.AGENT_RESTARTING
                                  and e.agent == "alice", after=crash.id)
        assert restart.payload["notice"] == (
            "alice crashed: signal SIGKILL (9); restart 1 of 5 in 60 s; next try in 0.05 s")
        up(events, "alice", after=restart.id)
        again = backend_of(daemon).status("alice")
        assert again.state == "running" and again.run_id not in ("", first.run_id)
        assert agent_actor(daemon, "alice").proxy().epoch.get(timeout=TIMEOUT) == 2


@pytest.mark.parametrize("fresh_watcher", [False, True])
def test_a_late_exit_of_an_older_run_never_crashes_the_newer_epoch(
    tmp_path: Path, fresh_watcher: bool
) -> None:
    """``fresh_watcher``: the watcher is restarted while the old run lives (it never heard of
    that run's start, and reads it from the backend)."""
    held = threading.Event()
    release = threading.Event()

    def hold(exit: ContainerExit) -> None:
        """Subscribed before the watcher: a slow subscriber (an injected fault) keeps the
        reaper from handing alice's first exit on until the test lets it go."""
        if exit.name == "alice" and not held.is_set():
            held.set()
            release.wait(TIMEOUT * 3)

    def subscribe_first(daemon: Daemon) -> None:
        backend_of(daemon).subscribe(hold)

    with hive_on(tmp_path, {"alice": Role.AGENT}, before=subscribe_first) as (
        daemon, events,
    ):
        try:
            up(events, "alice")
            if fresh_watcher:
                gone = daemon.hive.directory.get("watcher")
                gone.stop(block=True, timeout=TIMEOUT)
                daemon.hive.directory.wait("watcher", TIMEOUT * 3, other_than=gone)
            probe = follow_watcher(daemon)
            old = backend_of(daemon).status("alice")
            assert old.pid is not None and old.run_id
            os.kill(old.pid, signal.SIGKILL)
            assert held.wait(TIMEOUT), "the reaper never reported the killed container"
            # Meanwhile the hive stops alice and starts her again: epoch 2, a new run.
            agents = daemon.hive.directory.get("agents")
            agents.ask(StopAgent("alice"), timeout=TIMEOUT * 3)
            agents.ask(SpawnAgent("alice"), timeout=TIMEOUT * 6)
            new = backend_of(daemon).status("alice")
            assert new.state == "running" and new.run_id not in ("", old.run_id)
            actor = agent_actor(daemon, "alice")
            assert actor.proxy().epoch.get(timeout=TIMEOUT) == 2
            before = last_event(daemon)
        finally:
            release.set()
        # The old run's exit arrives now, after epoch 2's AgentUp: it is epoch 1's crash.
        handled = exit_handled(probe, "alice", old.run_id)
        assert (handled.outcome, handled.epoch) == ("crash", 1)
        ignored = events.wait_for(lambda e: e.kind == EventKind.AGENT_CRASHED
                                  and e.agent == "alice", after=before)
        assert ignored.payload["epoch"] == 1 and ignored.payload["source"] == "backend"
        assert ignored.payload["ignored"] == "it is about epoch 1; epoch 2 runs now"
        # Epoch 2 lives on in its container (the ask queues behind the crash report).
        assert actor.proxy().epoch.get(timeout=TIMEOUT) == 2
        assert agent_actor(daemon, "alice") == actor
        assert backend_of(daemon).status("alice").run_id == new.run_id
        assert not recorded(daemon, EventKind.AGENT_RESTARTING, "alice", after=before)


def test_a_stop_the_hive_asked_for_is_not_a_crash(tmp_path: Path) -> None:
    with hive_on(tmp_path, {"alice": Role.AGENT, "bob": Role.AGENT}) as (daemon, events):
        up(events, "alice")
        up(events, "bob")
        probe = follow_watcher(daemon)
        # The operator's stop: the backend itself knows it asked.
        alice = backend_of(daemon).status("alice")
        daemon.hive.directory.get("agents").ask(StopAgent("alice"), timeout=TIMEOUT * 3)
        handled = exit_handled(probe, "alice", alice.run_id)
        assert (handled.outcome, handled.exit.expected, handled.epoch) == ("expected", True, None)
        # A stop the hive announced (as the agents' backend does before each stop) whose end
        # the backend could not tell from a crash: the intent decides, not a guess.
        bob = backend_of(daemon).status("bob")
        assert bob.pid is not None
        bob_actor = agent_actor(daemon, "bob")
        daemon.hive.directory.get("watcher").tell(StopExpected("bob"))
        os.kill(bob.pid, signal.SIGKILL)
        handled = exit_handled(probe, "bob", bob.run_id)
        assert (handled.outcome, handled.exit.expected) == ("hive-stop", False)
        # Judged: a crash would have been told (or recorded) before the watcher said so.
        assert bob_actor.proxy().epoch.get(timeout=TIMEOUT) == 1
        assert not recorded(daemon, EventKind.AGENT_CRASHED, "alice")
        assert not recorded(daemon, EventKind.AGENT_CRASHED, "bob")
        assert not recorded(daemon, EventKind.AGENT_RESTARTING, "bob")


def test_a_container_that_dies_while_no_watcher_listens_is_judged_by_the_next_one(
    tmp_path: Path,
) -> None:
    """The watcher is down (terminated by its supervisor) when alice's container is killed:
    the reaper's report reaches no one. The next watcher reads the backend's last word on
    alice and judges that exit then: alice crashes and is restarted, once."""
    ended = threading.Event()

    def on_exit(exit: ContainerExit) -> None:
        if exit.name == "alice" and not exit.expected:
            ended.set()

    with running_hive(tmp_path, {"alice": Role.AGENT}, backoff_min=0.05,
                      backoff_jitter=0.0) as (daemon, root, _model, events):
        up(events, "alice")
        backend_of(daemon).subscribe(on_exit)
        root.ask(TerminateChild("watcher"), timeout=TIMEOUT * 3)
        assert daemon.hive.directory.find("watcher") is None
        killed = backend_of(daemon).status("alice")
        assert killed.pid is not None and killed.run_id
        os.kill(killed.pid, signal.SIGKILL)
        assert ended.wait(TIMEOUT), "the reaper never reported the killed container"
        # Nobody heard it: alice's actor still takes herself for up in epoch 1.
        assert agent_actor(daemon, "alice").proxy().epoch.get(timeout=TIMEOUT) == 1
        assert not recorded(daemon, EventKind.AGENT_CRASHED, "alice")
        before = last_event(daemon)
        root.ask(RestartChild("watcher"), timeout=TIMEOUT * 3)
        crash = events.wait_for(lambda e: e.kind == EventKind.AGENT_CRASHED
                                and e.agent == "alice", after=before)
        assert "ignored" not in crash.payload
        assert {k: crash.payload[k] for k in ("source", "result", "signal", "epoch")} == {
            "source": "backend", "result": "signal", "signal": 9, "epoch": 1}
        restart = events.wait_for(lambda e: e.kind == EventKind.AGENT_RESTARTING
                                  and e.agent == "alice", after=crash.id)
        up(events, "alice", after=restart.id)
        assert agent_actor(daemon, "alice").proxy().epoch.get(timeout=TIMEOUT) == 2
        assert backend_of(daemon).status("alice").state == "running"
        # Judged once: one crash, one restart.
        assert len(recorded(daemon, EventKind.AGENT_CRASHED, "alice", after=before)) == 1
        assert len(recorded(daemon, EventKind.AGENT_RESTARTING, "alice", after=before)) == 1
