"""Crashes become messages: a whole hive (process containers, real CLI, loopback model) whose
CrashWatcherActor watches the stand-in systemd on a real private dbus-daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hive_actors.config import HiveConfig, WatcherConfig
from hive_actors.hive import Hive
from hive_actors.store import AgentState, EventKind, Role
from hive_actors.supervisors.messages import CountChildren
from hive_actors.testing.dbus_daemon import DbusDaemon
from hive_actors.testing.systemd_standin import StandinSystemd
from hive_actors.watcher import Crash, Stopped, SystemdWatch, UnitReport, Unreadable
from hive_actors.watcher.actor import CrashWatcherActor
from hive_actors.watcher.messages import ContainerCrash, WatchReports, agent_service, announce_up
from hive_actors.watcher.props import SERVICE_INTERFACE, UNIT_INTERFACE
from tests.support.crash import (
    Follower,
    crash_hive,
    notice,
    run_of,
    system_messages_to,
    unit,
    verdict,
)
from tests.support.probe import ProbeHandle
from tests.support.timeout import TIMEOUT

ALICE = unit("alice")


class _LogWaiter(logging.Handler):
    """Sets :attr:`seen` once a record whose message starts with ``prefix`` is emitted."""

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.WARNING)
        self.prefix = prefix
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.seen.set()


@pytest.fixture(scope="module")
def bus() -> Iterator[DbusDaemon]:
    with DbusDaemon() as daemon:
        yield daemon


def test_a_unit_crash_restarts_the_agent_and_the_manager_is_told(
    tmp_path: Path, bus: DbusDaemon
) -> None:
    with crash_hive(tmp_path, bus.address, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        assert hive.epoch("alice") == 1
        first_run = hive.fake.unit(ALICE).invocation_id.hex()
        hive.fake.crash(ALICE, exit_code=3)
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice")
        assert {k: crashed.payload[k] for k in
                ("source", "result", "exit_status", "signal", "epoch", "invocation_id")} == {
            "source": "systemd", "result": "exit-code", "exit_status": 3, "signal": None,
            "epoch": 1, "invocation_id": first_run,
        }
        assert "ignored" not in crashed.payload
        restarting = hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id)
        notice = "alice crashed: exit-code 3; restart 1 of 5 in 60 s; next try in 0.05 s"
        assert restarting.payload["reason"] == "exit-code 3"
        assert (restarting.payload["notice"], restarting.payload["told"]) == (notice, "boss")
        assert system_messages_to(hive, "boss", 1) == [notice]
        # alice comes back as epoch 2, in a new run of its unit tied to that epoch.
        assert hive.follower is not None
        bound = hive.follower.wait_for(run_of("alice", 2), "alice's new run")
        assert bound.invocation_id == hive.fake.unit(ALICE).invocation_id.hex() != first_run
        hive.after(EventKind.AGENT_STATE, "alice", after=restarting.id,
                   where=lambda e: e.payload["to"] == "idle")
        assert hive.epoch("alice") == 2


def test_the_agents_supervisor_decides_a_unit_crash_in_its_own_thread(
    tmp_path: Path, bus: DbusDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    """One route: the watcher tells alice's AgentActor, alice dies of the crash, and the
    agents' supervisor decides on the Down in its own thread, never in the watcher's."""
    with crash_hive(tmp_path, bus.address, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        supervisor = hive.daemon.hive.directory.wait("agents", TIMEOUT)
        supervisor.ask(CountChildren(), timeout=TIMEOUT)  # idle: what came before is handled
        caplog.set_level(logging.WARNING)
        logged = _LogWaiter("[agents] restarting")
        logging.getLogger().addHandler(logged)
        try:
            hive.fake.crash(ALICE, exit_code=4)
            restarting = hive.after(EventKind.AGENT_RESTARTING, "alice")
            # The decision's log line follows its event, in the supervisor's thread.
            assert logged.seen.wait(TIMEOUT), "the supervisor's decision was never logged"
        finally:
            logging.getLogger().removeHandler(logged)
        decided = [r for r in caplog.records if r.getMessage().startswith("[agents] restarting")]
        assert len(decided) == 1 and decided[0].threadName != "systemd-watch"
        told = [r for r in caplog.records if "told its AgentActor" in r.getMessage()]
        assert len(told) == 1 and told[0].threadName not in ("systemd-watch",
                                                             decided[0].threadName)
        assert restarting.payload["notice"].startswith("alice crashed: exit-code 4; restart 1")
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice")
        assert crashed.payload["exit_status"] == 4 and "ignored" not in crashed.payload
        assert system_messages_to(hive, "boss", 1) == [restarting.payload["notice"]]
        hive.after(EventKind.AGENT_STATE, "alice", after=restarting.id,
                   where=lambda e: e.payload["to"] == "idle")


def test_when_the_manager_crashes_the_operator_is_told(tmp_path: Path, bus: DbusDaemon) -> None:
    with crash_hive(tmp_path, bus.address, {"boss": Role.MANAGER}) as hive:
        hive.fake.crash(unit("boss"), signal="SIGSEGV", core_dump=True)
        crashed = hive.after(EventKind.AGENT_CRASHED, "boss")
        assert crashed.payload["reason"] == "core-dump SIGSEGV (11)"
        restarting = hive.after(EventKind.AGENT_RESTARTING, "boss", after=crashed.id)
        # Nobody to message: the notice stays in the event log, for the operator's dashboard.
        assert restarting.payload["told"] == "operator"
        assert restarting.payload["notice"] == (
            "boss crashed: core-dump SIGSEGV (11); restart 1 of 5 in 60 s; next try in 0.05 s")
        hive.after(EventKind.AGENT_STATE, "boss", after=restarting.id,
                   where=lambda e: e.payload["to"] == "idle")
        sent = [e for e in hive.kinds("boss", EventKind.MESSAGE_SENT)
                if e.payload["from"] == "hive"]
        assert sent == []


def test_stops_by_an_operator_or_by_the_hive_are_not_crashes(
    tmp_path: Path, bus: DbusDaemon
) -> None:
    from hive_actors.agent.supervisor import StopAgent

    with crash_hive(tmp_path, bus.address, {"alice": Role.AGENT, "bob": Role.AGENT}) as hive:
        follower = hive.follower
        assert follower is not None
        hive.fake.operator_stop(ALICE)
        stopped = follower.wait_for(verdict("alice", Stopped), "alice's stop")
        assert stopped.verdict.by == "operator-or-guest"
        # The hive stops bob itself: announced to the watcher before the unit stops.
        hive.daemon.hive.directory.get("agents").ask(StopAgent("bob"), timeout=TIMEOUT * 3)
        bob = follower.wait_for(verdict("bob", Stopped), "bob's stop")
        assert bob.verdict.by == "hive"
        seen = follower.barrier(hive.fake)
        assert [i for i in follower.seen if verdict("alice", Crash)(i) or verdict("bob", Crash)(i)
                ] == []
        assert seen[-1].kind == "rescanned"
        assert hive.kinds("alice", EventKind.AGENT_CRASHED, EventKind.AGENT_RESTARTING) == []
        assert hive.kinds("bob", EventKind.AGENT_CRASHED, EventKind.AGENT_RESTARTING) == []
        assert hive.epoch("alice") == 1
        with hive.daemon.hive.open_store() as store:
            assert store.registry.get("bob").state is AgentState.STOPPED
            assert store.registry.get("alice").state is AgentState.IDLE


def test_a_crash_loop_backs_off_longer_each_time_then_gives_up(
    tmp_path: Path, bus: DbusDaemon
) -> None:
    with crash_hive(tmp_path, bus.address, {"boss": Role.MANAGER, "alice": Role.AGENT},
                    agent_restarts=2, backoff_min=0.05, backoff_factor=2.0) as hive:
        follower = hive.follower
        assert follower is not None
        delays = []
        last = 0
        for epoch in (1, 2, 3):
            if epoch > 1:
                follower.wait_for(run_of("alice", epoch), f"epoch {epoch}'s run")
            hive.fake.crash(ALICE, exit_code=epoch)
            crashed = hive.after(EventKind.AGENT_CRASHED, "alice", after=last)
            assert (crashed.payload["epoch"], crashed.payload["exit_status"]) == (
                epoch, epoch)
            if epoch < 3:
                restarting = hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id)
                assert restarting.payload["restart"] == epoch
                delays.append(restarting.payload["delay"])
                last = restarting.id
        assert delays == [0.05, 0.1]  # jitter 0: exactly the exponential steps
        given_up = hive.after(EventKind.AGENT_GIVEN_UP, "alice", after=last)
        notice = ("alice given up after 3 crashes in 60 s; last: exit-code 3; it stays down "
                  "until the operator revives it")
        assert (given_up.payload["notice"], given_up.payload["told"]) == (notice, "boss")
        assert system_messages_to(hive, "boss", 3) == [
            "alice crashed: exit-code 1; restart 1 of 2 in 60 s; next try in 0.05 s",
            "alice crashed: exit-code 2; restart 2 of 2 in 60 s; next try in 0.1 s",
            notice,
        ]
        with hive.daemon.hive.open_store() as store:
            assert store.registry.get("alice").state is AgentState.GIVEN_UP
        assert hive.daemon.hive.directory.find(agent_service("alice")) is None


def test_units_that_are_not_agents_are_ignored(tmp_path: Path, bus: DbusDaemon) -> None:
    with crash_hive(tmp_path, bus.address, {"alice": Role.AGENT}) as hive:
        follower = hive.follower
        assert follower is not None
        for name in ("container@stranger.service", "sshd.service", "container@odd name.service"):
            hive.fake.add_unit(name)
            hive.fake.start_unit(name)
            hive.fake.crash(name, exit_code=1)
        follower.barrier(hive.fake)
        assert [i for i in follower.seen if isinstance(i, UnitReport)] == []
        with hive.daemon.hive.open_store() as store:
            crashed = [e for e in store.events.events_since(0, 100_000)
                       if e.kind == EventKind.AGENT_CRASHED]
        assert crashed == []
        assert hive.epoch("alice") == 1


def test_the_watcher_reconnects_after_the_bus_restarts_and_catches_what_it_missed(
    tmp_path: Path,
) -> None:
    with DbusDaemon() as own, crash_hive(tmp_path, own.address, {"alice": Role.AGENT}) as hive:
        follower = hive.follower
        assert follower is not None
        own.kill()
        follower.wait_for(lambda i: getattr(i, "kind", "") == "disconnected", "the lost bus")
        hive.fake.stop()
        hive.fake.crash(ALICE, signal="SIGKILL")  # while the bus and everyone on it are down
        own.start()
        hive.fake.start()
        crash = follower.wait_for(verdict("alice", Crash), "the crash seen after the reconnect")
        assert crash.verdict.signal == 9
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice")
        assert (crashed.payload["epoch"], crashed.payload["signal"]) == (1, 9)
        restarting = hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id)
        assert restarting.payload["reason"] == "signal SIGKILL (9)"
        follower.wait_for(run_of("alice", 2), "epoch 2's run on the new bus")


def test_a_crash_of_an_older_epoch_is_ignored(tmp_path: Path, bus: DbusDaemon) -> None:
    with crash_hive(tmp_path, bus.address, {"alice": Role.AGENT}) as hive:
        follower = hive.follower
        assert follower is not None
        follower.barrier(hive.fake)  # epoch 1's run is tied to it by now
        old_run = hive.fake.unit(ALICE).invocation_id
        with hive.fake.unseen():
            # alice restarts for another reason (its keeper is killed): epoch 2 runs in a
            # new run of the unit, and the watcher sees none of it happen.
            keeper = hive.backend.inner.status("alice").pid
            assert keeper is not None
            os.kill(keeper, signal.SIGKILL)
            restarting = hive.after(EventKind.AGENT_RESTARTING, "alice")
            assert restarting.payload["reason"] == "signal SIGKILL (9)"
            hive.after(EventKind.AGENT_STATE, "alice", after=restarting.id,
                       where=lambda e: e.payload["to"] == "idle")
        assert hive.epoch("alice") == 2
        # Now a late report of the old run's crash arrives (a hand-made signal, as systemd
        # would have sent it when that run failed).
        hive.fake.emit_properties(ALICE, SERVICE_INTERFACE, {
            "Result": ("s", "exit-code"), "ExecMainCode": ("i", 1), "ExecMainStatus": ("i", 7),
            "NRestarts": ("u", 0), "MainPID": ("u", 0),
        })
        hive.fake.emit_properties(ALICE, UNIT_INTERFACE, {
            "ActiveState": ("s", "failed"), "SubState": ("s", "failed"), "Job": ("(uo)", (0, "/")),
            "InvocationID": ("ay", old_run),
        })
        stale = follower.wait_for(verdict("alice", Crash), "the old run's crash")
        assert stale.verdict.invocation_id == old_run.hex()
        ignored = hive.after(EventKind.AGENT_CRASHED, "alice", after=restarting.id,
                             where=lambda e: e.payload["source"] == "systemd")
        assert ignored.payload["epoch"] == 1 and ignored.payload["exit_status"] == 7
        assert ignored.payload["ignored"] == "it is about epoch 1; epoch 2 runs now"
        # A FIFO barrier on alice's actor: it handled the report and is still epoch 2.
        alice = hive.daemon.hive.directory.get(agent_service("alice"))
        assert alice.proxy().epoch.get(timeout=TIMEOUT) == 2
        assert hive.kinds("alice", EventKind.AGENT_RESTARTING, after=ignored.id) == []
        # The rescan finds the run epoch 2 lives in; its crash is acted on.
        follower.barrier(hive.fake)
        hive.fake.crash(ALICE, exit_code=8)
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice", after=ignored.id)
        assert (crashed.payload["epoch"], "ignored" in crashed.payload) == (2, False)
        hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id)


def test_unreadable_properties_are_logged_with_the_unit_and_restart_nothing(
    tmp_path: Path, bus: DbusDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hive_actors.watcher.actor")
    with crash_hive(tmp_path, bus.address, {"alice": Role.AGENT}) as hive:
        follower = hive.follower
        assert follower is not None
        hive.fake.emit_properties(ALICE, SERVICE_INTERFACE, {"Result": ("s", "exit-code"),
                                                             "NRestarts": ("s", "many")})
        hive.fake.emit_properties(ALICE, UNIT_INTERFACE, {
            "ActiveState": ("u", 3), "SubState": ("s", "failed"), "Job": ("(uo)", (0, "/")),
            "InvocationID": ("ay", bytes(16)),
        })
        unreadable = follower.wait_for(verdict("alice", Unreadable), "the unreadable signal")
        assert any("NRestarts" in p or "ActiveState" in p for p in unreadable.verdict.problems)
        follower.barrier(hive.fake)
        assert [i for i in follower.seen if verdict("alice", Crash)(i)] == []
        assert hive.kinds("alice", EventKind.AGENT_CRASHED, EventKind.AGENT_RESTARTING) == []
        assert f"{ALICE}: could not understand" in caplog.text
        assert hive.epoch("alice") == 1
        # It goes on: a real crash afterwards is acted on.
        hive.fake.crash(ALICE, exit_code=5)
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice")
        assert crashed.payload["exit_status"] == 5
        hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id)


class DyingWatch(SystemdWatch):
    """The real watcher, whose event loop can be made to fail on demand (an injected fault)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fault_loop: asyncio.AbstractEventLoop | None = None
        self._fault: asyncio.Event | None = None

    def die(self) -> None:
        """Make :meth:`run` fail with a RuntimeError (from any thread)."""
        assert self._fault_loop is not None and self._fault is not None
        self._fault_loop.call_soon_threadsafe(self._fault.set)

    async def run(self) -> None:
        self._fault_loop = asyncio.get_running_loop()
        self._fault = asyncio.Event()
        watching = asyncio.ensure_future(super().run())
        dying = asyncio.ensure_future(self._fault.wait())
        done, _ = await asyncio.wait({watching, dying}, return_when=asyncio.FIRST_COMPLETED)
        if watching in done:
            dying.cancel()
            watching.result()
            return
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        raise RuntimeError("injected fault: the watcher's event loop failed")


def test_the_watcher_thread_dying_crashes_the_actor_and_it_is_restarted(
    tmp_path: Path, bus: DbusDaemon
) -> None:
    made: list[DyingWatch] = []

    def factory(*args: Any, **kwargs: Any) -> SystemdWatch:
        made.append(DyingWatch(*args, **kwargs))
        return made[-1]

    with crash_hive(tmp_path, bus.address, {"alice": Role.AGENT}, watch_factory=factory) as hive:
        directory = hive.daemon.hive.directory
        old = directory.get("watcher")
        assert len(made) == 1
        made[0].die()
        new = directory.wait("watcher", TIMEOUT * 3, other_than=old)
        assert not old.is_alive() and new.is_alive() and len(made) == 2
        follower = hive.follow()
        # The new watcher acts on crashes: alice's unit crashes and alice restarts.
        hive.fake.crash(ALICE, exit_code=4)
        follower.wait_for(verdict("alice", Crash), "the crash, seen by the new watcher")
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice")
        assert (crashed.payload["exit_status"], crashed.payload["epoch"]) == (4, 1)
        hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id)


# -- the watcher actor's mailbox orders announcements and signals --------------------------------


@dataclass(frozen=True)
class _Hold:
    release: threading.Event


class HeldWatcher(CrashWatcherActor):
    """A CrashWatcherActor whose mailbox the test can hold (an injected fault: a busy actor)."""

    def receive(self, message: Any) -> Any:
        if isinstance(message, _Hold):
            message.release.wait(TIMEOUT * 3)
            return None
        return super().receive(message)


def test_an_epoch_told_before_its_start_owns_the_run_even_when_the_watcher_is_busy(
    tmp_path: Path, bus: DbusDaemon, probe: ProbeHandle
) -> None:
    """The run book is the watcher actor's own: an AgentUp told before the container starts is
    in its mailbox ahead of every signal of the run that start causes, so a busy watcher still
    ties the new run to the new epoch once it gets to it. The crash goes to the agent's actor
    (the probe stands in for it); with no AgentActor registered it is only recorded."""
    hive = Hive(HiveConfig(state_dir=str(tmp_path / "state"),
                           watcher=WatcherConfig(bus_address=bus.address)))
    with hive.open_store() as store:
        store.registry.register("alice", role=Role.AGENT)
        epoch = store.registry.spawn("alice").epoch
    fake = StandinSystemd(bus.address, timeout=TIMEOUT)
    fake.start()
    release = threading.Event()
    watcher = None
    try:
        fake.add_unit(ALICE)
        watcher = HeldWatcher.start(hive, address=bus.address)
        follower = Follower(ProbeHandle())
        state = watcher.ask(WatchReports(follower.probe.ref), timeout=TIMEOUT)
        if state.scans == 0:
            follower.wait_for(notice("rescanned"), "the first scan")
        hive.directory.register(agent_service("alice"), probe.ref)  # stands in for alice
        watcher.tell(_Hold(release))
        # A new epoch comes up and starts its container while the actor is held.
        announce_up(hive.directory, "alice", epoch + 1)
        fake.start_unit(ALICE)
        run = fake.unit(ALICE).invocation_id.hex()
        fake.crash(ALICE, exit_code=9)
        assert probe.empty() and follower.probe.empty()  # the watcher is held: nothing yet
        release.set()
        crash = probe.get(TIMEOUT)
        assert isinstance(crash, ContainerCrash)
        assert (crash.agent, crash.epoch, crash.exit_status, crash.invocation_id) == (
            "alice", epoch + 1, 9, run)
        handled = follower.wait_for(verdict("alice", Crash), "the crash, once released")
        assert handled.verdict.invocation_id == run
        with hive.open_store() as store:
            # Told to alice's actor, which records it: the watcher does not.
            assert [e for e in store.events.events_since(0, 1000)
                    if e.kind == EventKind.AGENT_CRASHED] == []
        # No AgentActor of alice now: the next crash is recorded by the watcher, nothing more.
        hive.directory.withdraw(agent_service("alice"), probe.ref)
        fake.start_unit(ALICE)
        fake.crash(ALICE, exit_code=5)
        follower.wait_for(lambda i: verdict("alice", Crash)(i) and i.verdict.exit_code == 5,
                          "the crash with no AgentActor")
        with hive.open_store() as store:
            recorded = [e for e in store.events.events_since(0, 1000)
                        if e.kind == EventKind.AGENT_CRASHED]
        assert [(e.payload["epoch"], e.payload["exit_status"], e.payload["ignored"])
                for e in recorded] == [(epoch + 1, 5, "no AgentActor of alice is running")]
        assert probe.empty()
    finally:
        release.set()
        if watcher is not None:
            watcher.stop()
        fake.stop()
