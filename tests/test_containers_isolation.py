"""Agents isolated from each other and from the hive (issue 17): the hive's files private
(state dir 0700, db and operator token 0600, tightened on an existing hive), and on the process
backend run as root each agent under its own uid, out of reach of the others and the hive's
files (real processes; the uid tests skip without root)."""

from __future__ import annotations

import logging
import os
import select
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.config import HiveConfig
from hive_actors.containers import ContainerSpec, ProcessBackend
from hive_actors.containers import process as process_mod
from hive_actors.containers.files import read_marker
from hive_actors.errors import ConfigError, HiveError
from hive_actors.hive import Hive
from hive_actors.paths import AgentPaths, secure_hive_files

TIMEOUT = float(os.environ.get("HIVE_TEST_TIMEOUT", "10"))
UID_BASE = 231000

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="gives agents uids: needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the hive's files --------------------------------------------------------------------------


def test_fresh_hive_state_dir_db_and_token_are_private(tmp_path: Path) -> None:
    from hive_actors.httpd.security import load_or_create_token

    state = tmp_path / "hive"
    hive = Hive(HiveConfig(state_dir=str(state)))
    store = hive.open_store()
    try:
        load_or_create_token(state / "operator-token")
        AgentPaths.of(state, "alice").create()
        assert mode(state) == 0o700
        for name in ("hive.db", "hive.db.lock", "operator-token"):
            assert mode(state / name) == 0o600, name
        for journal in ("hive.db-wal", "hive.db-shm"):
            if (state / journal).exists():
                assert mode(state / journal) == 0o600, journal
        assert mode(state / "agents") & 0o077 & ~0o010 == 0
        assert mode(state / "agents" / "alice") & 0o007 == 0
        for sub in ("state", "config", "claude", "home", "tmp"):
            assert mode(state / "agents" / "alice" / sub) == 0o700
    finally:
        store.close()


def test_existing_loose_state_dir_is_tightened_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "hive"
    hive = Hive(HiveConfig(state_dir=str(state)))
    hive.open_store().close()
    (state / "operator-token").write_text("secret\n")
    alice = AgentPaths.of(state, "alice").create()
    os.chmod(state, 0o755)
    os.chmod(state / "hive.db", 0o644)
    os.chmod(state / "operator-token", 0o644)
    os.chmod(state / "agents", 0o755)
    os.chmod(alice.root, 0o755)
    os.chmod(alice.state, 0o755)
    with caplog.at_level(logging.WARNING):
        store = hive.open_store()
    store.close()
    assert mode(state) == 0o710 & 0o755  # the group's search bit is all that may be left
    assert mode(state / "hive.db") == 0o600
    assert mode(state / "operator-token") == 0o600
    assert mode(state / "agents") == 0o710
    assert mode(alice.root) == 0o710
    assert "tightened" in caplog.text and "hive.db" in caplog.text
    alice.create()
    assert mode(alice.state) == 0o700


def test_secure_hive_files_leaves_tight_modes_and_symlinks(tmp_path: Path) -> None:
    state = tmp_path / "hive"
    secure_hive_files(state)
    target = tmp_path / "elsewhere"
    target.write_text("x")
    os.chmod(target, 0o644)
    (state / "operator-token").symlink_to(target)
    secure_hive_files(state)
    assert mode(state) == 0o700
    assert mode(target) == 0o644  # a symlink is not followed


# -- when agents cannot be isolated ----------------------------------------------------------


def test_not_root_warns_once_that_agents_are_not_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(process_mod, "_warned", False)
    with caplog.at_level(logging.WARNING):
        backend = ProcessBackend(tmp_path)
        ProcessBackend(tmp_path)
    assert not backend.isolated
    assert caplog.text.count("agents are not isolated from each other") == 1
    assert "run as root or use the nspawn backend" in caplog.text
    with pytest.raises(ConfigError, match="needs the hive to run as root"):
        ProcessBackend(tmp_path, isolate="on")


def test_bad_isolate_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="isolate"):
        ProcessBackend(tmp_path, isolate="maybe")
    with pytest.raises(ConfigError, match="uid_base"):
        ProcessBackend(tmp_path, isolate="off", uid_base=0)


@root_only
def test_auto_isolates_only_when_the_python_prefix_is_reachable(tmp_path: Path) -> None:
    backend = ProcessBackend(tmp_path, uid_base=UID_BASE)
    # The interpreter and both prefixes: in a venv, sys.prefix may be reachable while the
    # interpreter it links to is not.
    paths = process_mod.interpreter_paths(sys.executable)
    assert sys.prefix in paths and sys.base_prefix in paths and sys.executable in paths
    blockers = [process_mod.blocked_for(p, UID_BASE + 1, [UID_BASE + 1, UID_BASE]) for p in paths]
    blocked = next((b for b in blockers if b is not None), None)
    assert backend.isolated == (blocked is None)
    if blocked is not None:
        assert blocked in backend.isolation and "not isolated" in backend.isolation


# -- isolated agents (root) ----------------------------------------------------------------------


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state dir under a directory every user may search (pytest's tmp_path is under a
    0700 directory an agent's uid cannot cross)."""
    base = Path(tempfile.mkdtemp(prefix="hive-iso-", dir="/tmp"))
    os.chmod(base, 0o711)
    try:
        yield base / "hive"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def iso(state_dir: Path) -> Iterator[ProcessBackend]:
    hive = Hive(HiveConfig(state_dir=str(state_dir)))
    hive.open_store().close()
    from hive_actors.httpd.security import load_or_create_token

    load_or_create_token(state_dir / "operator-token")
    backend = ProcessBackend(state_dir, isolate="on", uid_base=UID_BASE)
    try:
        yield backend
    finally:
        backend.close()


def run(backend: ProcessBackend, name: str, script: str) -> tuple[int, str, str]:
    proc = backend.exec(name, ["/bin/sh", "-c", script])
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out.decode(), err.decode()


def up(backend: ProcessBackend, *names: str) -> None:
    for name in names:
        backend.create(name, ContainerSpec())
        backend.start(name)


@root_only
def test_each_agent_runs_under_its_own_recorded_uid(iso: ProcessBackend, state_dir: Path) -> None:
    up(iso, "alice", "bob")
    uids = {}
    for name in ("alice", "bob"):
        code, out, err = run(iso, name, "id -u; id -g; id -G")
        assert code == 0, err
        uid, gid, groups = out.split("\n")[:3]
        record = read_marker(AgentPaths.of(state_dir, name))
        assert record is not None and int(uid) == record["uid"] == int(gid)
        assert sorted(map(int, groups.split())) == sorted({int(gid), UID_BASE})
        uids[name] = int(uid)
    assert 0 not in uids.values() and uids["alice"] != uids["bob"]
    assert all(u > UID_BASE for u in uids.values())
    assert os.stat(AgentPaths.of(state_dir, "alice").state).st_uid == uids["alice"]
    assert os.stat(AgentPaths.of(state_dir, "alice").root).st_uid == 0  # the record is the hive's


@root_only
def test_an_agent_cannot_read_another_agents_state_the_db_or_the_token(
    iso: ProcessBackend, state_dir: Path
) -> None:
    up(iso, "alice", "bob")
    bob = AgentPaths.of(state_dir, "bob")
    code, _, err = run(iso, "bob", "echo bob-secret > /dev/null; echo s > \"$PWD/secret\"")
    assert code == 0, err
    run_dir = bob.state / ".hive-run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    (run_dir / "mcp-x.json").write_text("{\"token\": \"bob's\"}")
    targets = [
        bob.state / "secret",
        run_dir / "mcp-x.json",
        bob.claude,
        bob.root / "container.json",
        state_dir / "hive.db",
        state_dir / "operator-token",
        AgentPaths.of(state_dir, "alice").config,
    ]
    for target in targets:
        cmd = f"ls '{target}'" if target.is_dir() else f"cat '{target}'"
        code, out, err = run(iso, "alice", cmd)
        assert code != 0 and "Permission denied" in err, (target, out, err)
    code, out, err = run(iso, "alice", f"ls '{state_dir}'")
    assert code != 0 and "Permission denied" in err  # searchable, never listable


@root_only
def test_an_agent_owns_its_state_across_a_restart(iso: ProcessBackend, state_dir: Path) -> None:
    up(iso, "alice")
    alice = AgentPaths.of(state_dir, "alice")
    code, _, err = run(iso, "alice", "echo hello > notes.md && mkdir -p sub && echo x > sub/y"
                       " && cat notes.md && touch $HOME/h $TMPDIR/t $CLAUDE_CONFIG_DIR/c")
    assert code == 0, err
    uid = os.stat(alice.state / "notes.md").st_uid
    iso.stop("alice")
    iso.start("alice")
    assert read_marker(alice)["uid"] == uid  # type: ignore[index]
    code, out, err = run(iso, "alice", "id -u; cat notes.md; echo more >> sub/y; cat sub/y")
    assert code == 0, err
    assert out.split("\n")[:4] == [str(uid), "hello", "x", "more"]
    assert os.stat(alice.state / "sub" / "y").st_uid == uid


@root_only
def test_a_file_the_hive_hands_over_on_the_command_line_becomes_the_agents(
    iso: ProcessBackend, state_dir: Path
) -> None:
    up(iso, "alice")
    alice = AgentPaths.of(state_dir, "alice")
    run_dir = alice.state / ".hive-run"
    run_dir.mkdir(mode=0o700)
    fd, path = tempfile.mkstemp(prefix="mcp-", suffix=".json", dir=run_dir)
    os.write(fd, b"{}")
    os.close(fd)
    (alice.claude / "settings.json").write_text("{}")
    proc = iso.exec("alice", ["/bin/cat", path, str(alice.claude / "settings.json")])
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out == b"{}{}"


@root_only
def test_a_program_the_agent_cannot_reach_is_a_clear_error(
    iso: ProcessBackend, state_dir: Path
) -> None:
    up(iso, "alice")
    hidden = state_dir.parent / "hidden"
    hidden.mkdir(mode=0o700)
    shutil.copy("/bin/true", hidden / "tool")
    with pytest.raises(HiveError, match="cannot be run by the agent's own uid"):
        iso.exec("alice", [str(hidden / "tool")])


@root_only
def test_an_isolated_agents_pty_shell_runs_as_its_uid(iso: ProcessBackend, state_dir: Path) -> None:
    up(iso, "alice")
    uid = read_marker(AgentPaths.of(state_dir, "alice"))["uid"]  # type: ignore[index]
    pid, master = iso.pty_shell("alice")
    try:
        os.write(master, b"echo UID=$(id -u)=\n")
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while f"UID={uid}=".encode() not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert f"UID={uid}=".encode() in seen, seen
    finally:
        iso.stop("alice")
        os.close(master)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


@root_only
def test_a_state_dir_the_agents_cannot_reach_is_a_clear_start_failure(tmp_path: Path) -> None:
    from hive_actors.errors import StartFailure

    os.chmod(tmp_path, 0o700)
    backend = ProcessBackend(tmp_path / "hive", isolate="on", uid_base=UID_BASE)
    backend.create("alice", ContainerSpec())
    with pytest.raises(StartFailure, match="cannot reach its state dir"):
        backend.start("alice")


@root_only
def test_a_whole_hive_turn_runs_with_isolated_agents(state_dir: Path) -> None:
    """The real CLI (copied where every user may run it: the bundled one may sit under a 0700
    /root) in isolated process containers: alice messages bob over MCP, both turns end ok, and
    what the CLI wrote in each agent's directories is that agent's."""
    import dataclasses
    import json

    from hive_actors.config import ProcessConfig
    from hive_actors.daemon import Daemon
    from hive_actors.harness.claude import bundled_claude_path
    from hive_actors.store import EventKind, Role
    from tests.support.hive import EventWatch, hive_config, send, start_tree

    bundled = bundled_claude_path()
    if not bundled.is_file():
        pytest.skip("no bundled claude CLI")
    bin_dir = state_dir.parent / "bin"
    bin_dir.mkdir(mode=0o755)
    claude = bin_dir / "claude"
    shutil.copy(bundled, claude)
    os.chmod(claude, 0o755)
    from hive_actors.modelserver import ModelServer

    model = ModelServer()
    model.start()
    try:
        cfg = hive_config(state_dir.parent, model.url)
        cfg = dataclasses.replace(
            cfg,
            process=ProcessConfig(isolate="on", uid_base=UID_BASE),
            model=dataclasses.replace(cfg.model, claude_path=str(claude)),
        )
        daemon = Daemon(cfg, api_key="loopback-test-key")
        assert daemon.backend is not None and daemon.backend.isolated  # type: ignore[attr-defined]
        root = start_tree(daemon, {"alice": Role.AGENT, "bob": Role.AGENT})
        try:
            events = EventWatch(daemon.hive.open_store, daemon.hive.bell)
            body = "@tool mcp__hive__send " + json.dumps({"to": "bob", "body": "hi bob"})
            send(daemon, "alice", body)
            ended = events.wait_for(
                lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice"
            )
            assert ended.payload["outcome"] == "ok", ended.payload
            assert ended.payload["tool_calls"] == {"mcp__hive__send": 1}
            bob_ended = events.wait_for(
                lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "bob"
            )
            assert bob_ended.payload["outcome"] == "ok", bob_ended.payload
            for name in ("alice", "bob"):
                paths = daemon.hive.agent_paths(name)
                uid = read_marker(paths)["uid"]  # type: ignore[index]
                owners = {os.lstat(p).st_uid for p in paths.claude.rglob("*")}
                assert owners == {uid}, (name, owners)
            assert mode(Path(cfg.state_dir) / "hive.db") == 0o600
        finally:
            root.stop(block=True, timeout=TIMEOUT * 6)
            daemon.close()
    finally:
        model.stop()
