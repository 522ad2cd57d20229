"""The nspawn backend's unit mode: each agent's container a transient ``hive-agent@<name>.service``.

The rules (mode, the registry's one unit rule, the watcher's feeds) are checked pure. The real
part runs against a real systemd 252 booted in a throwaway nspawn container
(:mod:`tests.support.booted`, here on the host's network, the hive's state dir and Python bound
in): the hive on the host asks that systemd over its bus to run each agent's real unprivileged
``systemd-nspawn`` container as a transient unit *inside* the booted container (nested), and its
crash watcher reads ``hive-agent@*.service`` there. Real units, real ``kill -9``, real stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hive_actors.agent.supervisor import StopAgent
from hive_actors.config import HiveConfig, NspawnConfig, WatcherConfig, load_config
from hive_actors.containers.base import ContainerSpec
from hive_actors.containers.nspawn import _ETC, NspawnBackend, nspawn_backend
from hive_actors.containers.nspawnconf import resolve_mode
from hive_actors.containers.registry import BACKENDS
from hive_actors.daemon import Daemon
from hive_actors.errors import ConfigError
from hive_actors.modelserver import ModelServer
from hive_actors.store import AgentState, EventKind, Role
from hive_actors.tree import reads_dbus, watched_units, watcher_address, watcher_feeds
from hive_actors.watcher import Crash, Stopped, SystemdWatch
from tests.support.booted import BootedSystemd, boot_unavailable, booted_systemd, python_dirs
from tests.support.crash import CrashHive, run_of, system_messages_to, verdict
from tests.support.daemon import wait_until
from tests.support.dbus import Judged, Reports, notice
from tests.support.dbus import verdict as reported
from tests.support.hive import EventWatch, hive_config, start_tree
from tests.support.real_hive import Reloader
from tests.support.timeout import TIMEOUT

ALICE = "hive-agent@alice.service"


# -- the rules, pure -----------------------------------------------------------------------------


def test_mode_is_validated_and_auto_asks_whether_systemd_is_pid_1(tmp_path: Path) -> None:
    assert resolve_mode("auto", run_dir=str(tmp_path / "absent")) == "child"
    (tmp_path / "system").mkdir()
    assert resolve_mode("auto", run_dir=str(tmp_path / "system")) == "unit"
    assert resolve_mode("child", run_dir=str(tmp_path / "system")) == "child"
    assert resolve_mode("unit", run_dir=str(tmp_path / "absent")) == "unit"
    config = tmp_path / "hive.toml"
    config.write_text('[hive]\nbackend = "nspawn"\n[nspawn]\nmode = "systemd"\n')
    with pytest.raises(ConfigError, match=r'\[nspawn\] mode = .systemd. is not a mode.*"unit"'):
        load_config(config)
    config.write_text('[nspawn]\nmode = "unit"\nbus_address = "unix:path=/x"\n')
    loaded = load_config(config)
    assert (loaded.nspawn.mode, loaded.nspawn.bus_address) == ("unit", "unix:path=/x")


def test_one_rule_says_which_units_the_watcher_reads() -> None:
    nspawn, nixos, process = BACKENDS["nspawn"], BACKENDS["nixos"], BACKENDS["process"]
    assert nspawn.unit_prefix({"mode": "unit"}) == "hive-agent"
    assert nspawn.unit_prefix({"mode": "child"}) is None
    assert nixos.unit_prefix() == "container" and process.unit_prefix() is None
    unit = HiveConfig(backend="nspawn", nspawn=NspawnConfig(mode="unit",
                                                            bus_address="unix:path=/b"))
    child = HiveConfig(backend="nspawn", nspawn=NspawnConfig(mode="child"))
    assert reads_dbus(unit) and not reads_dbus(child)
    assert (watched_units(unit), watcher_address(unit)) == ("hive-agent", "unix:path=/b")
    assert watcher_feeds(unit).endswith("hive-agent@*.service units on D-Bus (unix:path=/b)")
    assert watched_units(HiveConfig(backend="nixos")) == "container"
    assert watcher_address(replace(unit, watcher=WatcherConfig(bus_address="unix:path=/w"))) \
        == "unix:path=/w"


def test_unit_mode_is_refused_where_no_systemd_answers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unit mode needs systemd on unix:path=/nonexistent/"
                       r"bus .*none answers there.*mode = \"child\""):
        nspawn_backend(tmp_path / "hive", mode="unit", bus_address="unix:path=/nonexistent/bus")
    assert type(nspawn_backend(tmp_path / "hive", mode="child")) is NspawnBackend


# -- real: units in a booted systemd --------------------------------------------------------------


@pytest.fixture
def nested(tmp_path: Path) -> Iterator[BootedSystemd]:
    """A booted systemd 252 that can run the hive's containers: ``tmp_path`` (the state dir)
    bound read-write, the hive's Python and the ``/etc`` files a container binds read-only,
    the host's network (the containers reach the loopback model and the hive's MCP
    endpoint)."""
    reason = boot_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with booted_systemd(binds=[str(tmp_path)], binds_ro=[*python_dirs(), *_ETC],
                        private_network=False) as systemd:
        yield systemd


def _unit(booted: BootedSystemd, *props: str) -> dict[str, str]:
    return booted.show(ALICE, *props)


def test_a_container_is_a_transient_unit_started_entered_stopped_and_crashed(
    tmp_path: Path, nested: BootedSystemd
) -> None:
    backend = nspawn_backend(tmp_path / "hive", mode="unit", bus_address=nested.address,
                             start_timeout=TIMEOUT)
    reports = Reports()
    watch = SystemdWatch(nested.address, lambda name: True, Judged(reports), now=time.time,
                         call_timeout=TIMEOUT, unit_prefix="hive-agent")
    handle = watch.start_in_thread(timeout=TIMEOUT)
    try:
        reports.wait_for(notice("rescanned", "connected"), "the first scan")
        backend.create("alice", ContainerSpec(env={"ROLE": "tester"}))
        started = time.monotonic()
        backend.start("alice")
        print(f"\nunit mode: start {1000 * (time.monotonic() - started):.0f} ms (nested)")
        shown = _unit(nested, "ActiveState", "Type", "Restart", "KillMode", "InvocationID",
                      "MainPID")
        assert {k: shown[k] for k in ("ActiveState", "Type", "Restart", "KillMode")} == {
            "ActiveState": "active", "Type": "notify", "Restart": "no", "KillMode": "mixed"}
        status = backend.status("alice")
        assert (status.state, status.run_id) == ("running", shown["InvocationID"])
        # The leader is the keeper, PID 1 of an unprivileged container nested in the booted one.
        assert status.pid is not None
        nspid = next(ln for ln in Path(f"/proc/{status.pid}/status").read_text().splitlines()
                     if ln.startswith("NSpid:")).split()
        assert nspid[-1] == "1" and nspid[-2] != "1" and len(nspid) == 4
        assert nested.host_pid(int(shown["MainPID"])) == int(
            Path(f"/proc/{status.pid}/stat").read_text().split()[3])  # nspawn is its parent
        script = "id -u; cat /proc/self/uid_map; pwd; echo $ROLE; echo hi > /state/probe"
        proc = backend.exec("alice", ["sh", "-c", script])
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        lines = out.decode().split("\n")
        assert lines[0] == "0" and lines[1].split()[0] == "0" and lines[1].split()[1] != "0"
        assert lines[2:4] == ["/state", "tester"]
        assert (tmp_path / "hive/agents/alice/state/probe").read_text() == "hi\n"
        # The hive's stop: no crash, the unit gone (inactive, collected).
        exit = backend.stop("alice")
        assert exit is not None and exit.expected and exit.run_id == shown["InvocationID"]
        assert backend.status("alice").state == "stopped"
        assert _unit(nested, "LoadState", "ActiveState")["ActiveState"] == "inactive"
        # kill -9 of the container's PID 1: the unit fails, the watcher reads the crash.
        backend.start("alice")
        first = backend.status("alice")
        assert first.run_id and first.run_id != shown["InvocationID"]
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        crash = reports.wait_for(reported("alice", Crash), "the crash on hive-agent@alice")
        assert crash.unit == ALICE and crash.verdict.invocation_id == first.run_id  # type: ignore[union-attr]
        assert _unit(nested, "ActiveState")["ActiveState"] == "failed"
        assert backend.status("alice").state == "stopped"
        # The next start resets the failed unit and runs anew.
        backend.start("alice")
        again = backend.status("alice")
        assert again.state == "running" and again.run_id not in ("", first.run_id)
    finally:
        backend.close()
        handle.stop(TIMEOUT)
    assert _unit(nested, "ActiveState")["ActiveState"] == "inactive"
    assert [r for r in reports.seen if reported("alice", Stopped)(r)] != []


@contextlib.contextmanager
def unit_hive(tmp_path: Path, systemd: BootedSystemd, agents: dict[str, Role],
              **supervision: Any) -> Iterator[CrashHive]:
    """A whole hive, configured as a production one would be but for the bus: ``[hive] backend
    = "nspawn"``, ``[nspawn] mode = "unit"`` with ``bus_address`` the booted systemd's; its
    watcher reads ``hive-agent@*.service`` there (from the configuration alone)."""
    supervision = {"backoff_min": 0.05, "backoff_max": 1.0, "backoff_jitter": 0.0,
                   **supervision}
    model = ModelServer()
    model.start()
    with contextlib.ExitStack() as stack:
        stack.callback(model.stop)
        config = replace(hive_config(tmp_path, model.url, **supervision), backend="nspawn",
                         nspawn=NspawnConfig(mode="unit", bus_address=systemd.address,
                                             start_timeout=TIMEOUT))
        daemon = Daemon(config, api_key="loopback-test-key")
        stack.callback(daemon.close)
        root = start_tree(daemon, agents)
        stack.callback(root.stop, block=True, timeout=TIMEOUT * 6)
        hive = CrashHive(daemon, root, model, EventWatch(daemon.hive.open_store, daemon.hive.bell),
                         Reloader(systemd), daemon.backend)  # type: ignore[arg-type]
        for name in agents:
            hive.after(EventKind.AGENT_STATE, name, where=lambda e: e.payload.get("to") == "idle")
        hive.follow()
        yield hive


def test_a_hive_in_unit_mode_kill9_crash_restart_manager_told_and_stops_are_no_crashes(
    tmp_path: Path, nested: BootedSystemd
) -> None:
    with unit_hive(tmp_path, nested, {"boss": Role.MANAGER, "alice": Role.AGENT,
                                      "bob": Role.AGENT}) as hive:
        follower = hive.follower
        assert follower is not None and hive.daemon.reads_dbus
        backend = hive.daemon.backend
        assert type(backend).__name__ == "NspawnUnitBackend"
        first = backend.status("alice")
        assert first.run_id == _unit(nested, "InvocationID")["InvocationID"]
        assert first.pid is not None
        killed_at = time.time()
        os.kill(first.pid, signal.SIGKILL)  # the container's PID 1
        crash = follower.wait_for(verdict("alice", Crash), "the crash")
        assert crash.unit == ALICE and crash.verdict.invocation_id == first.run_id
        assert crash.verdict.will_restart is False
        print(f"\nunit mode: kill -9 -> watcher report {1000 * (crash.when - killed_at):.1f} ms")
        crashed = hive.after(EventKind.AGENT_CRASHED, "alice")
        assert (crashed.payload["source"], crashed.payload["epoch"],
                crashed.payload["invocation_id"]) == ("systemd", 1, first.run_id)
        restarting = hive.after(EventKind.AGENT_RESTARTING, "alice", after=crashed.id)
        assert restarting.payload["told"] == "boss"
        assert restarting.payload["notice"].startswith("alice crashed: ")
        assert system_messages_to(hive, "boss", 1) == [restarting.payload["notice"]]
        bound = follower.wait_for(run_of("alice", 2), "alice's new run")
        hive.after(EventKind.AGENT_STATE, "alice", after=restarting.id,
                   where=lambda e: e.payload["to"] == "idle")
        now = _unit(nested, "InvocationID", "ActiveState")
        assert bound.invocation_id == now["InvocationID"] != first.run_id
        assert now["ActiveState"] == "active" and hive.epoch("alice") == 2
        # The manager's turn, woken by the notice, ran claude in its own nested container.
        # (a message is delivered only when a turn that took it ended well).
        ended = hive.after(EventKind.TURN_ENDED, "boss")
        delivered = hive.after(EventKind.MESSAGE_DELIVERED, "boss")
        assert (ended.payload["outcome"], ended.payload["error"]) == ("ok", None)
        assert delivered.payload["turn_id"] == ended.payload["turn_id"]
        # An operator's stop of bob's unit and the hive's stop of alice: neither is a crash.
        nested.systemctl("stop", "hive-agent@bob.service")
        stopped = follower.wait_for(verdict("bob", Stopped), "bob's stop")
        assert stopped.verdict.by == "operator-or-guest"
        hive.daemon.hive.directory.get("agents").ask(StopAgent("alice"), timeout=TIMEOUT * 3)
        by_hive = follower.wait_for(verdict("alice", Stopped), "alice's stop")
        assert by_hive.verdict.by == "hive"
        follower.barrier(hive.fake)
        assert len([i for i in follower.seen if verdict("alice", Crash)(i)]) == 1
        assert [i for i in follower.seen if verdict("bob", Crash)(i)] == []
        assert hive.kinds("bob", EventKind.AGENT_CRASHED, EventKind.AGENT_RESTARTING) == []
        with hive.daemon.hive.open_store() as store:
            assert store.registry.get("alice").state is AgentState.STOPPED
        wait_until(lambda: _unit(nested, "ActiveState")["ActiveState"] == "inactive",
                   TIMEOUT, "alice's unit gone")
