"""The crash watcher's D-Bus reader against a real dbus-daemon and the stand-in systemd speaking
systemd's interface, its observations classified in order by a :class:`UnitJudge` (as the
CrashWatcherActor does in its thread): crashes, stops, reboots, restarts of the bus and of
systemd, and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hive_actors.errors import NotFound
from hive_actors.testing.dbus_daemon import DbusDaemon
from hive_actors.testing.systemd_objects import CONTROL_PATH, ControlInterface, unit_path
from hive_actors.testing.systemd_standin import StandinSystemd
from hive_actors.watcher import (
    Crash,
    FailedStop,
    GaveUp,
    Rebooted,
    Stopped,
    SystemdWatch,
    UnitReport,
    Unreadable,
)
from hive_actors.watcher.connection import open_bus
from hive_actors.watcher.props import SERVICE_INTERFACE, UNIT_INTERFACE
from hive_actors.watcher.systemd_iface import MANAGER_PATH, SYSTEMD_BUS_NAME
from tests.support.dbus import Judged, Reports, notice, of, verdict
from tests.support.timeout import TIMEOUT

AGENTS = {"alice", "bob", "carol"}
ALICE = "container@alice.service"
BOB = "container@bob.service"

MakeFake = Callable[..., StandinSystemd]
MakeWatch = Callable[..., tuple[SystemdWatch, Reports]]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DbusDaemon]:
    with DbusDaemon() as bus_daemon:
        yield bus_daemon


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as exit_stack:
        yield exit_stack
    left = [t.name for t in threading.enumerate() if t.name in ("systemd-watch", "fake-systemd")]
    assert left == [], f"threads left running after the test: {left}"


@pytest.fixture
def make_fake(daemon: DbusDaemon, stack: contextlib.ExitStack) -> MakeFake:
    def make(*units: str, version: int = 254, restart: str = "no", started: bool = True,
             address: str | None = None) -> StandinSystemd:
        fake = StandinSystemd(address or daemon.address, version=version, timeout=TIMEOUT)
        for name in units:
            fake.add_unit(name, restart=restart)
        fake.start()
        stack.callback(fake.stop)
        if started:
            for name in units:
                fake.start_unit(name)
        return fake

    return make


@pytest.fixture
def make_watch(daemon: DbusDaemon, stack: contextlib.ExitStack) -> MakeWatch:
    def make(address: str | None = None, *, wait_scan: bool = True,
             **options: float) -> tuple[SystemdWatch, Reports]:
        reports = Reports()
        watch = SystemdWatch(address or daemon.address, AGENTS.__contains__, Judged(reports),
                             call_timeout=TIMEOUT, **options)  # type: ignore[arg-type]
        handle = watch.start_in_thread(timeout=TIMEOUT)
        stack.callback(handle.stop, TIMEOUT)
        if wait_scan:
            reports.wait_for(notice("rescanned", "connected"), "the first scan")
        return watch, reports

    return make


def test_crash_is_reported_once_with_result_and_exit_status(
    make_fake: MakeFake, make_watch: MakeWatch
) -> None:
    fake = make_fake(ALICE, BOB)
    _, reports = make_watch()
    emitted = fake.crash(ALICE, exit_code=3)
    fake.crash(BOB, signal="SIGKILL")
    crash = reports.wait_for(verdict("alice", Crash), "alice's crash")
    assert isinstance(crash, UnitReport) and isinstance(crash.verdict, Crash)
    assert crash.unit == ALICE and crash.when >= emitted
    assert (crash.verdict.result, crash.verdict.exit_code, crash.verdict.signal) == (
        "exit-code", 3, None)
    assert crash.verdict.invocation_id == fake.unit(ALICE).invocation_id.hex()
    assert not crash.verdict.will_restart
    later = reports.barrier(fake)
    bob = of(reports.seen, "bob", Crash)
    assert len(bob) == 1 and isinstance(bob[0], Crash)
    assert (bob[0].result, bob[0].signal, bob[0].exit_code) == ("signal", 9, None)
    assert of(later, "alice", Crash) == []


def test_252_failed_then_auto_restart_is_one_report(
    make_fake: MakeFake, make_watch: MakeWatch
) -> None:
    fake = make_fake(ALICE, version=252, restart="on-failure")
    _, reports = make_watch()
    fake.crash(ALICE, exit_code=1)
    seen = reports.barrier(fake)
    crashes = of(seen, "alice", Crash)
    assert len(crashes) == 1 and isinstance(crashes[0], Crash)
    # Restart= was read at the first scan: "failed" can already say systemd restarts it.
    assert crashes[0].will_restart and crashes[0].n_restarts == 0
    assert fake.unit(ALICE).active_state == "active"  # systemd did restart it


def test_254_crash_loop_is_one_report_per_restart_then_gave_up(
    make_fake: MakeFake, make_watch: MakeWatch
) -> None:
    fake = make_fake(ALICE, version=254, restart="on-failure")
    _, reports = make_watch()
    fake.crash_loop(ALICE, 3, exit_code=5, give_up=True)
    reports.wait_for(verdict("alice", GaveUp), "systemd giving up")
    seen = reports.barrier(fake)
    crashes = [c for c in of(reports.seen, "alice", Crash) if isinstance(c, Crash)]
    assert [c.n_restarts for c in crashes] == [0, 1, 2]
    assert len({c.invocation_id for c in crashes}) == 3
    assert all(c.will_restart and c.exit_code == 5 for c in crashes)
    assert of(seen, "alice", Crash) == []
    assert fake.unit(ALICE).active_state == "failed"


def test_operator_stop_is_not_a_crash(make_fake: MakeFake, make_watch: MakeWatch) -> None:
    fake = make_fake(ALICE)
    _, reports = make_watch()
    fake.operator_stop(ALICE)
    stopped = reports.wait_for(verdict("alice", Stopped), "the stop")
    assert isinstance(stopped, UnitReport) and stopped.verdict == Stopped(
        by="operator-or-guest", invocation_id=fake.unit(ALICE).invocation_id.hex())
    assert of(reports.barrier(fake), "alice", Crash) == []


def test_operator_stop_that_fails_is_a_failed_stop(
    make_fake: MakeFake, make_watch: MakeWatch
) -> None:
    fake = make_fake(ALICE)
    _, reports = make_watch()
    fake.set_stop_fails(ALICE)
    fake.operator_stop(ALICE)
    seen = reports.barrier(fake)
    assert of(seen, "alice", FailedStop) == [FailedStop(
        by="operator-or-guest", result="timeout",
        invocation_id=fake.unit(ALICE).invocation_id.hex())]
    assert of(seen, "alice", Crash) == []


def test_hive_stop_that_fails_is_a_failed_stop(make_fake: MakeFake, make_watch: MakeWatch) -> None:
    fake = make_fake(ALICE, BOB)
    watch, reports = make_watch()
    fake.set_stop_fails(ALICE)
    # A stop that times out still ends its job with "done"; the report tells it failed.
    assert watch.stop_unit("alice").result(TIMEOUT) == "done"
    failed = reports.wait_for(verdict("alice", FailedStop), "the failed stop")
    assert isinstance(failed, UnitReport) and failed.verdict == FailedStop(
        by="hive", result="timeout", invocation_id=fake.unit(ALICE).invocation_id.hex())
    assert watch.stop_unit("bob").result(TIMEOUT) == "done"
    stopped = reports.wait_for(verdict("bob", Stopped), "bob's stop")
    assert isinstance(stopped, UnitReport) and stopped.verdict.by == "hive"  # type: ignore[union-attr]
    assert of(reports.barrier(fake), "alice", Crash) == []
    # The intent ended with the stop: after the hive starts it again, a crash is a crash.
    assert watch.start_unit("bob").result(TIMEOUT) == "done"
    fake.crash(BOB, exit_code=2)
    reports.wait_for(verdict("bob", Crash), "bob's crash after the restart")


def test_job_for_an_unknown_unit_fails_with_not_found(
    make_fake: MakeFake, make_watch: MakeWatch
) -> None:
    make_fake(ALICE)
    watch, _ = make_watch()
    error = watch.start_unit("ghost").exception(TIMEOUT)
    assert isinstance(error, NotFound) and "container@ghost.service" in str(error)


@pytest.mark.parametrize("version", [252, 254])
def test_poweroff_and_reboot_inside_are_not_crashes(
    make_fake: MakeFake, make_watch: MakeWatch, version: int
) -> None:
    fake = make_fake(ALICE, BOB, version=version)
    _, reports = make_watch()
    fake.poweroff(ALICE)
    fake.reboot(BOB)
    seen = reports.barrier(fake)
    assert of(seen, "alice", Stopped) == [
        Stopped(by="operator-or-guest", invocation_id=fake.unit(ALICE).invocation_id.hex())]
    rebooted = of(seen, "bob", Rebooted)
    assert len(rebooted) == 1 and isinstance(rebooted[0], Rebooted)
    assert rebooted[0].exit_status == 133
    assert of(seen, "alice", Crash) == of(seen, "bob", Crash) == []
    assert fake.unit(BOB).active_state == "active"


def test_units_of_non_agents_are_ignored(make_fake: MakeFake, make_watch: MakeWatch) -> None:
    odd = "container@odd name.service"
    fake = make_fake(ALICE, "container@stranger.service", "sshd.service", odd)
    _, reports = make_watch()
    fake.crash("container@stranger.service", exit_code=1)
    fake.crash("sshd.service", exit_code=1)
    fake.crash(odd, exit_code=1)
    fake.operator_stop(ALICE)
    seen = reports.barrier(fake)
    units = {r.unit for r in reports.seen if isinstance(r, UnitReport)}
    assert units == {ALICE}
    assert "1 agent unit(s)" in str(seen[-1])
    odd_notices = [r for r in reports.seen if notice("unreadable", repr(odd))(r)]
    assert len(odd_notices) == 1  # said once, though the scans and its crash repeat it


def test_unit_failed_before_the_watcher_started_is_reported_by_the_first_scan(
    make_fake: MakeFake, make_watch: MakeWatch
) -> None:
    fake = make_fake(ALICE, BOB)
    fake.crash(ALICE, exit_code=4)
    _, reports = make_watch(wait_scan=False)
    first = reports.until(notice("rescanned", "connected"), "the first scan")
    crashes = of(first, "alice", Crash)
    assert len(crashes) == 1 and crashes[0].exit_code == 4  # type: ignore[union-attr]
    assert of(first, "bob", Crash) == []
    assert of(reports.barrier(fake), "alice", Crash) == []


def test_bus_daemon_killed_and_restarted(
    stack: contextlib.ExitStack, make_fake: MakeFake, make_watch: MakeWatch
) -> None:
    own = stack.enter_context(DbusDaemon())
    fake = make_fake(ALICE, BOB, address=own.address)
    watch, reports = make_watch(own.address)
    own.kill()
    reports.wait_for(notice("disconnected"), "the lost bus")
    fake.stop()
    fake.crash(BOB, exit_code=42)  # while the bus and everyone on it are down
    own.start()
    fake.start()
    crash = reports.wait_for(verdict("bob", Crash), "bob's crash after the reconnect")
    assert crash.verdict.exit_code == 42  # type: ignore[union-attr]
    # Reconnected for real: new signals arrive, and the old crash is not reported again.
    fake.crash(ALICE, exit_code=6)
    reports.wait_for(verdict("alice", Crash), "alice's crash on the new bus")
    reports.barrier(fake)
    assert len(of(reports.seen, "bob", Crash)) == 1
    assert watch.start_unit("bob").result(TIMEOUT) == "done"


def test_systemd_owner_change_rescans(make_fake: MakeFake, make_watch: MakeWatch) -> None:
    fake = make_fake(ALICE, BOB)
    _, reports = make_watch()
    fake.stop()
    reports.wait_for(notice("systemd-gone"), "systemd leaving")
    fake.crash(BOB, exit_code=9)
    fake.start()
    seen = reports.until(notice("rescanned", "new owner"), "the rescan for the new owner")
    assert len(of(seen, "bob", Crash)) == 1
    # Subscribed again: the new instance's signals arrive.
    fake.crash(ALICE, exit_code=1)
    reports.wait_for(verdict("alice", Crash), "alice's crash")


def test_reloading_false_rescans(make_fake: MakeFake, make_watch: MakeWatch) -> None:
    fake = make_fake(ALICE)
    _, reports = make_watch()
    with fake.unseen():
        fake.crash(ALICE, exit_code=8)
    seen = reports.barrier(fake)  # Reloading(true), Reloading(false)
    crashes = of(seen, "alice", Crash)
    assert len(crashes) == 1 and crashes[0].exit_code == 8  # type: ignore[union-attr]


def test_periodic_rescan_finds_what_no_signal_said(
    make_fake: MakeFake, make_watch: MakeWatch
) -> None:
    fake = make_fake(ALICE)
    _, reports = make_watch(rescan_interval=0.3)
    with fake.unseen():
        fake.crash(ALICE, exit_code=8)
    crash = reports.wait_for(verdict("alice", Crash), "the crash found by the periodic rescan")
    assert crash.verdict.exit_code == 8  # type: ignore[union-attr]


def test_malformed_input_is_logged_not_reported_as_a_crash(
    make_fake: MakeFake, make_watch: MakeWatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hive_actors.watcher")
    fake = make_fake(ALICE)
    _, reports = make_watch()
    fake.emit_properties(ALICE, SERVICE_INTERFACE,
                         {"Result": ("s", "exit-code"), "NRestarts": ("s", "many")})
    fake.emit_properties(ALICE, UNIT_INTERFACE, {
        "ActiveState": ("u", 3), "SubState": ("s", "failed"), "Job": ("(uo)", (0, "/")),
        "InvocationID": ("ay", bytes(16)),
    })
    fake.emit_signal(unit_path(ALICE), "org.freedesktop.DBus.Properties", "PropertiesChanged",
                     "s", "garbage")
    fake.emit_signal(MANAGER_PATH, "org.freedesktop.systemd1.Manager", "JobRemoved", "s", "x")
    # A signal about an agent unit systemd does not serve: reading it answers an error.
    fake.emit_signal(unit_path("container@carol.service"), "org.freedesktop.DBus.Properties",
                     "PropertiesChanged", "sa{sv}as", UNIT_INTERFACE,
                     {"ActiveState": ("s", "failed")}, [])
    seen = reports.barrier(fake)
    unreadable = [v for v in of(seen, "alice", Unreadable) if isinstance(v, Unreadable)]
    problems = " | ".join(p for v in unreadable for p in v.problems)
    assert "NRestarts: signature 's'" in problems
    assert "ActiveState: signature 'u'" in problems
    assert "garbage" in problems
    assert any(n.kind == "unreadable" and "JobRemoved" in n.detail  # type: ignore[union-attr]
               for n in seen if notice("unreadable")(n))
    assert of(seen, "alice", Crash) == [] and of(seen, "carol", Crash) == []
    assert f"{ALICE}: could not understand" in caplog.text
    # It keeps going: a real crash afterwards is reported.
    fake.crash(ALICE, exit_code=3)
    reports.wait_for(verdict("alice", Crash), "the real crash")


def test_latency_from_emit_to_report(
    make_fake: MakeFake, make_watch: MakeWatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = make_fake(ALICE, started=False)
    _, reports = make_watch()
    latencies = []
    for _ in range(300):
        fake.start_unit(ALICE)
        emitted = fake.crash(ALICE, exit_code=1)
        report = reports.wait_for(verdict("alice", Crash), "the crash")
        latencies.append((report.when - emitted) * 1000)
    latencies.sort()
    assert all(latency >= 0 for latency in latencies)
    with capsys.disabled():
        print(
            f"\nstand-in emit -> watcher report, {len(latencies)} crashes: "
            f"p50 {statistics.median(latencies):.3f} ms, "
            f"p90 {latencies[int(len(latencies) * 0.9)]:.3f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99)]:.3f} ms, max {latencies[-1]:.3f} ms"
        )


def _read_line(stream: object, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no line within {timeout:g} s; got {data!r}")
            chunk = os.read(stream.fileno(), 1024)  # type: ignore[attr-defined]
            if not chunk:
                raise AssertionError(f"the stream ended; got {data!r}")
            data += chunk
    return data.decode().strip()


async def _crash_through_control(address: str) -> float:
    bus = open_bus(address)
    try:
        control = ControlInterface.new_proxy(SYSTEMD_BUS_NAME, CONTROL_PATH, bus)
        return float(await asyncio.wait_for(control.crash(ALICE, "exit-code", 1, 7), TIMEOUT))
    finally:
        bus.close()


def test_stand_in_runs_as_a_separate_process(daemon: DbusDaemon, make_watch: MakeWatch) -> None:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))
    process = subprocess.Popen(
        [sys.executable, "-m", "hive_actors.testing.systemd_standin", "--address", daemon.address,
         "--unit", ALICE, "--started"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=root, env=env,
    )
    assert process.stdout is not None
    try:
        assert _read_line(process.stdout, TIMEOUT) == "ready"
        _, reports = make_watch()
        emitted = asyncio.run(_crash_through_control(daemon.address))
        crash = reports.wait_for(verdict("alice", Crash), "the crash in the other process")
        assert crash.verdict.exit_code == 7  # type: ignore[union-attr]
        assert crash.when >= emitted  # time.monotonic() is one clock across processes
    finally:
        process.terminate()
        code = process.wait(TIMEOUT)
        process.stdout.close()
    assert code == 0
