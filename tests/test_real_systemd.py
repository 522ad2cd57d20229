"""The crash watcher against a real systemd: systemd 252 booted in a throwaway nspawn container
(``booted``, see :mod:`tests.support.booted`), its system bus read from the host.

The agents' "containers" are units of the template ``container@.service`` in that systemd
(``Type=notify``: a main process that says ``READY=1`` and sleeps; ``Restart=no``), started and
stopped with ``systemctl`` as ``nixos-container`` does, next to each agent's process container
(:mod:`tests.support.real_hive`). Real signals: ``kill -9`` from the host of the unit's main process, ``systemctl
stop`` by an operator, systemd's own restarts and start limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.agent.supervisor import StopAgent
from hive_actors.store import AgentState, EventKind, Role
from hive_actors.testing.dbus_daemon import DbusDaemon
from hive_actors.testing.systemd_standin import StandinSystemd
from hive_actors.watcher import Crash, GaveUp, Stopped, SystemdWatch
from hive_actors.watcher.messages import agent_service
from tests.support.booted import BootedSystemd
from tests.support.crash import run_of, system_messages_to, unit, verdict
from tests.support.daemon import wait_until
from tests.support.dbus import Judged, Reports, notice, of
from tests.support.dbus import verdict as reported
from tests.support.real_hive import real_hive
from tests.support.signals import Recorder, Step
from tests.support.timeout import TIMEOUT

ALICE = unit("alice")
LOOPER = unit("looper")


def test_the_booted_systemd_is_252_and_reachable_from_the_host(booted: BootedSystemd) -> None:
    assert booted.boot_seconds < 30
    assert booted.systemctl("--version").startswith("systemd 252")
    assert booted.run("systemctl", "is-system-running", check=False).strip() in (
        "running", "degraded")
    booted.systemctl("start", ALICE)
    assert booted.show(ALICE, "ActiveState", "Restart") == {
        "ActiveState": "active", "Restart": "no"}


def test_kill9_of_an_agents_unit_is_reported_restarted_and_told_to_the_manager(
    tmp_path: Path, booted: BootedSystemd
) -> None:
    with real_hive(tmp_path, booted, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        follower = hive.follower
        assert follower is not None
        first_run = booted.show(ALICE, "InvocationID")["InvocationID"]
        killed_at = time.time()
        booted.kill9(ALICE)
        # The watcher's report: a Crash verdict from systemd 252's own signals.
        crash = follower.wait_for(verdict("alice", Crash), "the crash")
        assert (crash.verdict.result, crash.verdict.exec_main_code, crash.verdict.signal,
                crash.verdict.exit_code, crash.verdict.will_restart) == (
            "signal", 2, 9, None, False)
        assert crash.verdict.invocation_id == first_run
        print(f"\nreal systemd: kill -9 -> watcher report {1000 * (crash.when - killed_at):.1f} ms")
        # The supervisor's restart, and the manager told.
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice")
        assert {k: crashed.payload[k] for k in
                ("source", "result", "exit_status", "signal", "epoch", "invocation_id")} == {
            "source": "systemd", "result": "signal", "exit_status": None, "signal": 9,
            "epoch": 1, "invocation_id": first_run,
        }
        restarting = hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id)
        told = "alice crashed: signal SIGKILL (9); restart 1 of 5 in 60 s; next try in 0.05 s"
        assert (restarting.payload["notice"], restarting.payload["told"]) == (told, "boss")
        assert system_messages_to(hive, "boss", 1) == [told]
        # alice is back as epoch 2, in a new run of its unit that the watcher tied to it.
        bound = follower.wait_for(run_of("alice", 2), "alice's new run")
        hive.after(EventKind.AGENT_STATE, "alice", after=restarting.id,
                   where=lambda e: e.payload["to"] == "idle")
        now = booted.show(ALICE, "InvocationID", "ActiveState")
        assert bound.invocation_id == now["InvocationID"] != first_run
        assert now["ActiveState"] == "active" and hive.epoch("alice") == 2
        follower.barrier(hive.fake)
        assert len([i for i in follower.seen if verdict("alice", Crash)(i)]) == 1


def test_stops_by_an_operator_or_by_the_hive_are_not_crashes(
    tmp_path: Path, booted: BootedSystemd
) -> None:
    with real_hive(tmp_path, booted, {"alice": Role.AGENT, "bob": Role.AGENT}) as hive:
        follower = hive.follower
        assert follower is not None
        booted.systemctl("stop", ALICE)  # the operator, on the host running the containers
        stopped = follower.wait_for(verdict("alice", Stopped), "alice's stop")
        assert stopped.verdict.by == "operator-or-guest"
        hive.daemon.hive.directory.get("agents").ask(StopAgent("bob"), timeout=TIMEOUT * 3)
        bob = follower.wait_for(verdict("bob", Stopped), "bob's stop")
        assert bob.verdict.by == "hive"
        follower.barrier(hive.fake)
        assert [i for i in follower.seen
                if verdict("alice", Crash)(i) or verdict("bob", Crash)(i)] == []
        for name in ("alice", "bob"):
            assert hive.kinds(name, EventKind.AGENT_CRASHED, EventKind.AGENT_RESTARTING) == []
        assert booted.show(unit("bob"), "ActiveState")["ActiveState"] == "inactive"
        with hive.daemon.hive.open_store() as store:
            assert store.registry.get("bob").state is AgentState.STOPPED
            assert store.registry.get("alice").state is AgentState.IDLE
        assert hive.epoch("alice") == 1


def test_a_crash_loop_of_kill9s_ends_given_up(tmp_path: Path, booted: BootedSystemd) -> None:
    with real_hive(tmp_path, booted, {"boss": Role.MANAGER, "alice": Role.AGENT},
                   agent_restarts=2, backoff_min=0.05, backoff_factor=2.0) as hive:
        follower = hive.follower
        assert follower is not None
        last = 0
        runs = []
        for epoch in (1, 2, 3):
            if epoch > 1:
                follower.wait_for(run_of("alice", epoch), f"epoch {epoch}'s run")
            # Up, not only started: a kill while the unit is still activating (before its
            # READY=1) fails the start job, which is a failed start, not this test's crash.
            hive.after(EventKind.AGENT_STATE, "alice", after=last,
                       where=lambda e: e.payload.get("to") == "idle")
            runs.append(booted.show(ALICE, "InvocationID")["InvocationID"])
            booted.kill9(ALICE)
            crashed = hive.after(EventKind.AGENT_CRASHED, "alice", after=last)
            assert (crashed.payload["epoch"], crashed.payload["signal"],
                    crashed.payload["invocation_id"]) == (epoch, 9, runs[-1])
            if epoch < 3:
                last = hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id).id
        given_up = hive.after(EventKind.AGENT_GIVEN_UP, "alice", after=last)
        told = ("alice given up after 3 crashes in 60 s; last: signal SIGKILL (9); it stays "
                "down until the operator revives it")
        assert (given_up.payload["notice"], given_up.payload["told"]) == (told, "boss")
        assert system_messages_to(hive, "boss", 3) == [
            "alice crashed: signal SIGKILL (9); restart 1 of 2 in 60 s; next try in 0.05 s",
            "alice crashed: signal SIGKILL (9); restart 2 of 2 in 60 s; next try in 0.1 s",
            told,
        ]
        assert len(set(runs)) == 3
        with hive.daemon.hive.open_store() as store:
            assert store.registry.get("alice").state is AgentState.GIVEN_UP
        assert hive.daemon.hive.directory.find(agent_service("alice")) is None
        assert booted.show(ALICE, "ActiveState")["ActiveState"] == "failed"


@pytest.fixture
def watched(booted: BootedSystemd) -> Iterator[Reports]:
    """The D-Bus reader alone on the booted systemd, its observations judged in order."""
    reports = Reports()
    watch = SystemdWatch(booted.address, lambda name: True, Judged(reports), now=time.time,
                         call_timeout=TIMEOUT)
    handle = watch.start_in_thread(timeout=TIMEOUT)
    try:
        reports.wait_for(notice("rescanned", "connected"), "the first scan")
        yield reports
    finally:
        handle.stop(TIMEOUT)


def test_systemds_own_restarts_are_crashes_and_its_start_limit_is_gave_up(
    booted: BootedSystemd, watched: Reports
) -> None:
    """``Restart=on-failure`` with a start limit: systemd 252 restarts through
    ``auto-restart`` and an ``inactive/dead`` restart job, then gives up; each run's crash is
    reported once, no restart is taken for a stop, and the end is GaveUp."""
    booted.systemctl("start", LOOPER)
    latencies = []
    for n in range(3):
        killed_at = time.time()
        booted.kill9(LOOPER)
        crash = watched.wait_for(
            lambda r, n=n: (reported("looper", Crash)(r)  # type: ignore[misc]
                            and r.verdict.n_restarts == n),
            f"crash {n}")
        latencies.append(1000 * (crash.when - killed_at))
        assert crash.verdict.will_restart and crash.verdict.signal == 9  # type: ignore[union-attr]
        if n < 2:
            _poll_active(booted, LOOPER)
    gave_up = watched.wait_for(reported("looper", GaveUp), "systemd giving up")
    assert gave_up.verdict.result == "signal"  # type: ignore[union-attr]
    booted.systemctl("daemon-reload")
    seen = watched.until(notice("rescanned", "daemon-reload"), "the rescan after the reload")
    assert of(watched.seen, "looper", Stopped) == []
    assert len(of(watched.seen, "looper", Crash)) == 3 and of(seen, "looper", GaveUp) == []
    assert booted.show(LOOPER, "ActiveState", "NRestarts") == {
        "ActiveState": "failed", "NRestarts": "3"}
    print(f"\nreal systemd: kill -9 -> report, ms: {', '.join(f'{x:.1f}' for x in latencies)}")


def _poll_active(booted: BootedSystemd, name: str) -> None:
    wait_until(lambda: booted.show(name, "ActiveState")["ActiveState"] == "active", TIMEOUT,
               f"{name} restarted by systemd", interval=0.02)


# -- the stand-in beside the real thing ----------------------------------------------------------

def _real_sequences(booted: BootedSystemd) -> dict[str, list[Step]]:
    sequences: dict[str, list[Step]] = {}
    with Recorder(booted.address, ALICE) as alice:
        booted.systemctl("start", ALICE)
        sequences["start"] = alice.wait_for(_job_done, "the start")
        alice.take()
        booted.kill9(ALICE)
        sequences["crash"] = alice.wait_for(_ends_failed, "the crash")
        alice.take()
        booted.systemctl("start", ALICE)
        alice.wait_for(_job_done, "the start")
        alice.take()
        booted.systemctl("stop", ALICE)
        sequences["stop"] = alice.wait_for(_job_done, "the stop")
    with Recorder(booted.address, LOOPER) as looper:
        booted.systemctl("start", LOOPER)
        looper.wait_for(_job_done, "the start")
        looper.take()
        booted.kill9(LOOPER)
        sequences["crash-restart"] = looper.wait_for(_job_done, "the restart")
        looper.take()
        for _ in range(2):
            _poll_active(booted, LOOPER)
            booted.kill9(LOOPER)
            steps = looper.wait_for(_job_ended, "the restart or the give-up")
            looper.take()
        sequences["give-up"] = steps
    return sequences


def _standin_sequences(address: str) -> dict[str, list[Step]]:
    sequences: dict[str, list[Step]] = {}
    fake = StandinSystemd(address, version=252, timeout=TIMEOUT)
    fake.add_unit(ALICE)
    fake.add_unit(LOOPER, restart="on-failure")
    fake.start()
    try:
        with Recorder(address, ALICE) as alice:
            fake.start_unit(ALICE)
            sequences["start"] = alice.wait_for(_job_done, "the start")
            alice.take()
            fake.crash(ALICE, signal="SIGKILL")
            sequences["crash"] = alice.wait_for(_ends_failed, "the crash")
            alice.take()
            fake.start_unit(ALICE)
            alice.wait_for(_job_done, "the start")
            alice.take()
            fake.operator_stop(ALICE)
            sequences["stop"] = alice.wait_for(_job_done, "the stop")
        with Recorder(address, LOOPER) as looper:
            fake.start_unit(LOOPER)
            looper.wait_for(_job_done, "the start")
            looper.take()
            fake.crash(LOOPER, signal="SIGKILL")
            sequences["crash-restart"] = looper.wait_for(_job_done, "the restart")
            looper.take()
            fake.crash_loop(LOOPER, 1, exit_code=1, give_up=True)
            sequences["give-up"] = looper.wait_for(_job_ended, "the give-up")
    finally:
        fake.stop()
    return sequences


def _job_done(steps: list[Step]) -> bool:
    return ("JobRemoved", "done") in steps and steps[-1][0] == "Unit" and not steps[-1][3]


def _job_ended(steps: list[Step]) -> bool:
    return any(s[0] == "JobRemoved" for s in steps) and steps[-1][0] == "Unit" and not steps[-1][3]


def _ends_failed(steps: list[Step]) -> bool:
    return bool(steps) and steps[-1][:3] == ("Unit", "failed", "failed")


def _states(steps: list[Step]) -> list[Step]:
    """The Unit steps (ActiveState, SubState, a job pending) and how jobs end: what the
    watcher's verdicts are made of, without the Service half each Unit step comes after.
    Not compared, as real systemd varies them from one job to the next: where ``JobNew``
    falls among the Unit signals, and a Unit signal repeated with nothing changed."""
    kept: list[Step] = []
    for step in steps:
        if step[0] not in ("Service", "JobNew") and (not kept or kept[-1] != step):
            kept.append(step)
    return kept


def test_the_stand_in_emits_what_real_systemd_252_emits(booted: BootedSystemd) -> None:
    real = _real_sequences(booted)
    with DbusDaemon() as daemon:
        standin = _standin_sequences(daemon.address)
    for name in real:
        # Each Unit step comes right after its Service step, in both.
        for steps in (real[name], standin[name]):
            units = [i for i, s in enumerate(steps) if s[0] == "Unit"]
            assert all(i > 0 and steps[i - 1][0] == "Service" for i in units), (name, steps)
    differences = {name: (_states(real[name]), _states(standin[name]))
                   for name in real if _states(real[name]) != _states(standin[name])}
    assert differences == {}, "\n".join(
        f"{name}:\n  real     {r}\n  stand-in {s}" for name, (r, s) in differences.items())
    # The Service halves the verdicts read: how each run ended.
    assert real["crash"][-2][1:4] == standin["crash"][-2][1:4] == ("signal", 2, 9)
