"""The nspawn backend: real unprivileged systemd-nspawn containers (uid 0 inside is a mapped
host range), alone and under a whole hive with the real claude CLI against the loopback model.
Every wait is on an event, a pipe or a bounded poll. Skipped only without root or systemd-nspawn
(CI runs as root, and scripts/test.sh installs systemd-container)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hive_actors.config import load_config
from hive_actors.containers.base import ContainerExit, ContainerSpec, StopGrace
from hive_actors.containers.nspawn import NspawnBackend
from hive_actors.containers.procgroup import wait_until
from hive_actors.errors import ConfigError, StartFailure
from hive_actors.store import EventKind, MessageKind, Role
from tests.support.hive import EventWatch, hive_on, send
from tests.support.timeout import TIMEOUT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("systemd-nspawn") is None,
    reason="the nspawn backend needs root and systemd-nspawn (apt-get install systemd-container)",
)


# -- helpers -----------------------------------------------------------------------------------


def host_uid(pid: int) -> int:
    """The real uid of ``pid`` as the host sees it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def pidns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def in_container(leader: int, comm: str) -> list[int]:
    """Host pids of the processes named ``comm`` in ``leader``'s pid namespace."""
    ns = pidns(leader)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if pidns(int(entry)) == ns and Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                found.append(int(entry))
        except OSError:
            continue
    return found


def read_until(fd: int, marker: bytes, timeout: float = TIMEOUT) -> bytes:
    """Read ``fd`` until ``marker`` shows up (AssertionError with what came otherwise)."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {marker!r} within {timeout} s; got {data!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the PTY's other side is gone
            chunk = b""
        if not chunk:
            raise AssertionError(f"EOF before {marker!r}; got {data!r}")
        data += chunk
    return data


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[NspawnBackend]:
    b = NspawnBackend(tmp_path / "hive", grace=StopGrace(sigint=TIMEOUT, sigterm=2, sigkill=2))
    try:
        yield b
    finally:
        b.close()


def exits(backend: NspawnBackend) -> tuple[list[ContainerExit], threading.Event]:
    seen: list[ContainerExit] = []
    got = threading.Event()

    def on_exit(event: ContainerExit) -> None:
        seen.append(event)
        got.set()

    backend.subscribe(on_exit)
    return seen, got


# -- the backend alone -------------------------------------------------------------------------


def test_an_agent_is_root_inside_an_unprivileged_range_and_state_survives(
    backend: NspawnBackend, tmp_path: Path
) -> None:
    seen, _ = exits(backend)
    backend.create("alice", ContainerSpec(env={"GREETING": "hi"}))
    started = time.monotonic()
    backend.start("alice")
    start_s = time.monotonic() - started
    status = backend.status("alice")
    assert status.state == "running" and status.pid is not None and status.run_id
    # The leader is the container's PID 1, an unprivileged uid on the host.
    leader = status.pid
    assert host_uid(leader) != 0
    base = int(Path(f"/proc/{leader}/uid_map").read_text().split()[1])
    assert base > 0 and host_uid(leader) == base

    proc = backend.exec("alice", ["sh", "-c",
                                  ("id -u; cat /proc/self/uid_map; echo $HOME $TMPDIR $GREETING; "
                                   "pwd; echo written > /state/notes.md; ls -n /state/notes.md")])
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0] == "0"  # root inside …
    assert lines[1].split() == ["0", str(base), "65536"]  # … which is the mapped range outside
    assert lines[2:4] == ["/agent/home /tmp hi", "/state"]
    assert lines[4].split()[2:4] == ["0", "0"]  # owned by root inside
    notes = tmp_path / "hive" / "agents" / "alice" / "state" / "notes.md"
    assert (notes.stat().st_uid, notes.stat().st_gid) == (0, 0)  # and by root on the host (idmap)
    assert notes.read_text() == "written\n"
    assert backend.inside("alice", notes) == "/state/notes.md"
    assert backend.environment("alice")["CLAUDE_CONFIG_DIR"] == "/agent/claude"
    with pytest.raises(ConfigError, match="outside the agent's directories"):
        backend.inside("alice", "/etc/passwd")

    # An exec'd program runs in the container's pid namespace as the mapped uid.
    sleeper = backend.exec("alice", ["sleep", "60"])
    assert wait_until(lambda: bool(in_container(leader, "sleep")), TIMEOUT)
    (pid,) = in_container(leader, "sleep")
    assert host_uid(pid) == base and host_uid(sleeper.pid) == base  # the launcher too

    stopped = time.monotonic()
    ended = backend.stop("alice")
    stop_s = time.monotonic() - stopped
    assert ended is not None and ended.expected and ended.run_id == status.run_id
    sleeper.communicate(timeout=TIMEOUT)
    assert sleeper.returncode != 0  # the stop ended it
    assert seen == [ended] and backend.status("alice").state == "stopped"
    assert not os.path.exists(f"/proc/{leader}")

    # Destroyed with its state kept, created again: the same /state, still root's.
    backend.destroy("alice", keep_state=True)
    assert backend.status("alice").state == "absent" and notes.exists()
    backend.create("alice", ContainerSpec())
    backend.start("alice")
    again = backend.exec("alice", ["sh", "-c", "cat /state/notes.md; ls -n /state/notes.md"])
    out, _ = again.communicate(timeout=TIMEOUT)
    assert out.decode().splitlines()[0] == "written"
    assert out.decode().splitlines()[1].split()[2:4] == ["0", "0"]
    backend.stop("alice")
    backend.destroy("alice", keep_state=False)
    assert not notes.exists()
    print(f"\nnspawn start {start_s * 1000:.0f} ms, stop with a sleeper {stop_s * 1000:.0f} ms")


def test_exec_signals_reach_the_program_and_its_status_comes_back(
    backend: NspawnBackend,
) -> None:
    backend.create("bob", ContainerSpec())
    backend.start("bob")
    leader = backend.status("bob").pid
    assert leader is not None
    proc = backend.exec("bob", ["sh", "-c", ('trap "echo got-int; exit 7" INT; echo ready; '
                                            "while :; do sleep 0.05; done")])
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    # What the harness does at a deadline: signal the Popen's process (group).
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out) == (7, b"got-int\n")

    # A program killed by a signal reads as killed by that signal.
    term = backend.exec("bob", ["sh", "-c", "echo ready; exec sleep 60"])
    assert term.stdout is not None and term.stdout.readline() == b"ready\n"
    os.killpg(term.pid, signal.SIGTERM)
    term.communicate(timeout=TIMEOUT)
    assert term.returncode == -signal.SIGTERM

    # SIGKILL of the launcher (the harness's last resort) takes the program with it.
    hard = backend.exec("bob", ["sleep", "60"])
    assert wait_until(lambda: bool(in_container(leader, "sleep")), TIMEOUT)
    os.killpg(hard.pid, signal.SIGKILL)
    hard.communicate(timeout=TIMEOUT)
    assert hard.returncode == -signal.SIGKILL
    assert wait_until(lambda: not in_container(leader, "sleep"), TIMEOUT)

    missing = backend.exec("bob", ["no-such-program"])
    _, err = missing.communicate(timeout=TIMEOUT)
    assert missing.returncode == 127 and b"no-such-program" in err


def test_kill9_of_the_leader_is_an_unexpected_exit_that_takes_everything(
    backend: NspawnBackend,
) -> None:
    seen, got = exits(backend)
    backend.create("carol", ContainerSpec())
    backend.start("carol")
    status = backend.status("carol")
    leader = status.pid
    assert leader is not None
    sleeper = backend.exec("carol", ["sleep", "60"])
    assert wait_until(lambda: bool(in_container(leader, "sleep")), TIMEOUT)
    os.kill(leader, signal.SIGKILL)
    assert got.wait(TIMEOUT), "no exit reported"
    (event,) = seen
    assert (event.name, event.result, event.signal, event.expected, event.run_id) == (
        "carol", "signal", 9, False, status.run_id)
    sleeper.communicate(timeout=TIMEOUT)
    assert sleeper.returncode != 0  # nothing of it outlives it
    assert backend.status("carol").state == "stopped"
    assert backend.runs() == {"carol": event}
    # It starts again, a new run.
    backend.start("carol")
    assert backend.status("carol").run_id not in ("", status.run_id)


def test_the_terminal_is_a_root_shell_inside_the_container(backend: NspawnBackend) -> None:
    backend.create("dave", ContainerSpec())
    backend.start("dave")
    leader = backend.status("dave").pid
    assert leader is not None
    pid, master = backend.pty_shell("dave")
    try:
        # The markers are computed by the shell: the terminal's echo of the line never matches.
        os.write(master, b"echo ID=$(id -u) NS=$(readlink /proc/self/ns/pid) PWD=$PWD "
                         b"$((40+2))END\n")
        out = read_until(master, b" 42END\r\n").decode()
        line = next(x for x in out.splitlines() if x.startswith("ID="))
        assert line.split() == ["ID=0", f"NS=pid:[{pidns(leader)}]", "PWD=/state", "42END"]
        (shell,) = in_container(leader, "bash")
        assert host_uid(shell) != 0  # the operator's root is the mapped uid on the host
        # Ctrl-C reaches the shell's foreground job; the shell lives on.
        os.write(master, b"sleep 60\n")
        assert wait_until(lambda: bool(in_container(leader, "sleep")), TIMEOUT)
        os.write(master, b"\x03")
        assert wait_until(lambda: not in_container(leader, "sleep"), TIMEOUT)
        os.write(master, b"echo still-$((1+1))\n")
        read_until(master, b"still-2\r\n")
    finally:
        os.close(master)
    # The PTY's hang-up ends the shell and its launcher.
    assert wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, TIMEOUT)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error_naming_the_agent_and_the_fix(tmp_path: Path) -> None:
    missing = NspawnBackend(tmp_path / "h1", command="no-such-nspawn")
    with pytest.raises(ConfigError, match=r"container erin: no-such-nspawn is not on PATH .*"
                                          r"apt-get install systemd-container"):
        missing.create("erin", ContainerSpec())

    fake_proc = tmp_path / "proc"
    (fake_proc / "sys" / "user").mkdir(parents=True)
    (fake_proc / "sys" / "user" / "max_user_namespaces").write_text("0\n")
    no_userns = NspawnBackend(tmp_path / "h2", proc=str(fake_proc))
    with pytest.raises(ConfigError, match=r"container erin: user namespaces are disabled.*"
                                          r"sysctl -w user.max_user_namespaces"):
        no_userns.create("erin", ContainerSpec())

    backend = NspawnBackend(tmp_path / "h3")
    backend.create("erin", ContainerSpec())
    state = tmp_path / "h3" / "agents" / "erin" / "state"
    shutil.rmtree(state)
    state.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"container erin: its state dir .* is not a directory"):
        backend.start("erin")
    assert backend.status("erin").state == "stopped"

    with pytest.raises(ConfigError, match=r"run every agent as the host's root.*"
                                          r"unsafe_agents_run_as_host_root = true"):
        NspawnBackend(tmp_path / "h4", private_users="no")
    NspawnBackend(tmp_path / "h4", private_users="no", unsafe_agents_run_as_host_root=True)
    shared = tmp_path / "shared"
    (shared / "hive").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"state dir .*/shared/hive' is inside .*/shared', "
                                          r"which every agent's container sees read-only"):
        NspawnBackend(shared / "hive", ro_paths=[str(shared)])
    with pytest.raises(ConfigError, match="host's root"):
        NspawnBackend(tmp_path / "h4", private_users="0:65536")

    toml = tmp_path / "hive.toml"
    toml.write_text('[hive]\nbackend = "nspawn"\n[nspawn]\nprivate_users = "identity"\n')
    with pytest.raises(ConfigError, match=r"hive.toml: \[nspawn\] private_users = 'identity'"):
        load_config(toml)
    toml.write_text('[hive]\nbackend = "nspawn"\n[nspawn]\nprivate_users = "identity"\n'
                    "unsafe_agents_run_as_host_root = true\n")
    assert load_config(toml).nspawn.private_users == "identity"


def test_a_container_that_exits_at_once_fails_its_start_with_its_log(tmp_path: Path) -> None:
    seen: list[ContainerExit] = []
    backend = NspawnBackend(tmp_path / "hive", python="/bin/false", start_timeout=TIMEOUT)
    backend.subscribe(seen.append)
    backend.create("frank", ContainerSpec())
    with pytest.raises(StartFailure, match=r"container frank: systemd-nspawn said nothing.*"
                                           r"exited at once.*nspawn.log"):
        backend.start("frank")
    assert backend.status("frank").state == "stopped"  # never shown as running
    assert seen == []


# -- a whole hive on the nspawn backend --------------------------------------------------------


def up(events: EventWatch, agent: str, after: int = 0) -> Any:
    return events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == agent
                           and e.payload["to"] == "idle", after=after)


def test_a_hive_on_nspawn_takes_a_real_turn_and_survives_a_killed_container(
    tmp_path: Path,
) -> None:
    with hive_on(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT},
                 backend="nspawn") as (daemon, events):
        assert daemon.backend is not None
        backend = daemon.backend
        up(events, "alice")
        first = backend.status("alice")
        leader = first.pid
        assert leader is not None and host_uid(leader) != 0

        # A real turn: the real CLI inside the container talks to the loopback model and
        # to the hive's MCP endpoint (it sends the manager a message).
        started = time.monotonic()
        body = json.dumps({"to": "boss", "body": "hello from inside"})
        send(daemon, "alice", f"@sleep 1\n@tool mcp__hive__send {body}")
        assert wait_until(lambda: bool(in_container(leader, "claude")), TIMEOUT * 3)
        clis = in_container(leader, "claude")
        assert clis and all(host_uid(pid) != 0 for pid in clis)
        ended = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice",
                                timeout=TIMEOUT * 6)
        turn_s = time.monotonic() - started
        assert ended.payload["outcome"] == "ok", ended.payload
        assert ended.payload["tool_calls"] == {"mcp__hive__send": 1}
        events.wait_for(lambda e: e.kind == EventKind.MESSAGE_SENT and e.agent == "boss"
                        and e.payload["from"] == "alice")
        # The CLI's session went to CLAUDE_CONFIG_DIR inside: root's on both sides.
        sessions = list((tmp_path / "hive" / "agents" / "alice" / "claude").rglob("*.jsonl"))
        assert sessions and all(s.stat().st_uid == 0 for s in sessions)

        # kill -9 of its container's leader: the crash watcher's report, a restart, the
        # manager told.
        os.kill(leader, signal.SIGKILL)
        crash = events.wait_for(lambda e: e.kind == EventKind.AGENT_CRASHED
                                and e.agent == "alice")
        assert {k: crash.payload[k] for k in ("source", "result", "signal", "epoch")} == {
            "source": "backend", "result": "signal", "signal": 9, "epoch": 1}
        restart = events.wait_for(lambda e: e.kind == EventKind.AGENT_RESTARTING
                                  and e.agent == "alice", after=crash.id)
        notice = restart.payload["notice"]
        assert notice.startswith("alice crashed: signal SIGKILL (9); restart 1 of 5"), notice

        def told(e: Any) -> bool:
            if not (e.kind == EventKind.MESSAGE_SENT and e.agent == "boss"
                    and e.payload.get("from") == "hive"):
                return False
            with daemon.hive.open_store() as store:
                message = store.messages.get(e.payload["id"])
            return message.kind == MessageKind.SYSTEM and "alice crashed" in message.body

        events.wait_for(told, after=crash.id)
        up(events, "alice", after=restart.id)
        again = backend.status("alice")
        assert again.state == "running" and again.run_id not in ("", first.run_id)
        assert again.pid is not None and host_uid(again.pid) != 0
        print(f"\nnspawn hive: a real turn in {turn_s:.1f} s (1 s of it the model's @sleep)")
