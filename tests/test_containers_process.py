"""The process backend on real processes: keeper, exec into its group, stop escalation, crash
reports from the reaper, destroy, the PTY shell, and the keeper's own behaviour."""

from __future__ import annotations

import os
import queue
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.containers import (
    ContainerBackend,
    ContainerExit,
    ContainerSpec,
    ProcessBackend,
    StopGrace,
)
from hive_actors.containers.procgroup import (
    decode_exit,
    ignored_signals,
    live_members,
    stop_signals_ignored,
)
from hive_actors.containers.terminal import keeper_argv, keeper_env
from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound
from hive_actors.paths import AgentPaths

TIMEOUT = float(os.environ.get("HIVE_TEST_TIMEOUT", "10"))

# Prints the signals it gets and never exits on SIGINT or SIGTERM; "ready" once its handlers
# are in place (so the test never signals it before that).
STUBBORN = (
    "import os, signal\n"
    "def note(sig, frame):\n"
    # os.write, not print: a signal may land while print('ready') is still in the buffer.
    "    os.write(1, signal.Signals(sig).name.encode() + b'\\n')\n"
    "signal.signal(signal.SIGINT, note)\n"
    "signal.signal(signal.SIGTERM, note)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    signal.pause()\n"
)
# A workload that blocks until a signal ends it (it is what the stop tests stop).
SLEEPER = "import signal; print('ready', flush=True); signal.pause()"
DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)"
# A workload that ignores SIGINT by itself (as a background job of a script does).
DEAF = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "print('ready', flush=True); signal.pause()"
)


def read_line(stream: object, timeout: float = TIMEOUT) -> bytes:
    """One line from a pipe, with a deadline."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(0.0, remaining))
        if not readable:
            raise AssertionError(f"no line within {timeout}s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


def finish(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Collect a child's output and reap it (bounded)."""
    out, err = proc.communicate(timeout=TIMEOUT)
    return out, err


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ProcessBackend]:
    b = ProcessBackend(tmp_path / "hive", grace=StopGrace(sigint=2.0, sigterm=2.0, sigkill=3.0))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def exits(backend: ProcessBackend) -> Iterator[queue.Queue[ContainerExit]]:
    q: queue.Queue[ContainerExit] = queue.Queue()
    unsubscribe = backend.subscribe(q.put)
    yield q
    unsubscribe()


def started(backend: ProcessBackend, name: str = "alice", **env: str) -> AgentPaths:
    backend.create(name, ContainerSpec(env=env))
    backend.start(name)
    return AgentPaths.of(backend._state_dir, name)


def test_it_is_a_container_backend(backend: ProcessBackend) -> None:
    assert isinstance(backend, ContainerBackend)


def test_create_start_status(backend: ProcessBackend) -> None:
    assert backend.status("alice").state == "absent"
    backend.create("alice", ContainerSpec())
    stopped = backend.status("alice")
    assert stopped.state == "stopped" and stopped.pid is None
    with pytest.raises(Conflict, match="already exists"):
        backend.create("alice", ContainerSpec())
    backend.start("alice")
    status = backend.status("alice")
    assert status.state == "running"
    assert status.pid is not None and status.since is not None
    # The keeper leads its own process group, in the agent's directory.
    assert os.getpgid(status.pid) == status.pid
    assert os.readlink(f"/proc/{status.pid}/cwd") == str(backend._paths("alice").root)
    backend.start("alice")  # a no-op while it runs
    assert backend.status("alice").pid == status.pid


def test_start_and_names_refused(backend: ProcessBackend) -> None:
    with pytest.raises(NotFound, match="create it first"):
        backend.start("bob")
    with pytest.raises(ConfigError, match="agent name 'Bad_Name' is invalid"):
        backend.create("Bad_Name", ContainerSpec())


def test_exec_sees_the_agent_environment_in_the_keeper_group(backend: ProcessBackend) -> None:
    paths = started(backend, SPEC_VAR="from-spec")
    keeper = backend.status("alice").pid
    script = (
        "import os\n"
        "for k in ('HOME', 'TMPDIR', 'XDG_RUNTIME_DIR', 'CLAUDE_CONFIG_DIR', 'SPEC_VAR', "
        "'CALL_VAR', 'HOST_SECRET'):\n"
        "    print(k, os.environ.get(k))\n"
        "print('PGID', os.getpgid(0))\n"
        "print('CWD', os.getcwd())\n"
    )
    os.environ["HOST_SECRET"] = "must-not-leak"
    try:
        proc = backend.exec("alice", [sys.executable, "-c", script], {"CALL_VAR": "x"})
    finally:
        del os.environ["HOST_SECRET"]
    out, err = finish(proc)
    assert proc.returncode == 0, err
    seen = dict(line.split(" ", 1) for line in out.decode().splitlines())
    assert seen["HOME"] == str(paths.home)
    assert seen["TMPDIR"] == seen["XDG_RUNTIME_DIR"] == str(paths.tmp)
    assert seen["CLAUDE_CONFIG_DIR"] == str(paths.claude)
    assert seen["SPEC_VAR"] == "from-spec" and seen["CALL_VAR"] == "x"
    assert seen["HOST_SECRET"] == "None"
    assert int(seen["PGID"]) == keeper
    assert seen["CWD"] == str(paths.state)
    assert backend.environment("alice")["HOME"] == str(paths.home)


def test_exec_refusals(backend: ProcessBackend, tmp_path: Path) -> None:
    backend.create("alice", ContainerSpec())
    with pytest.raises(Conflict, match="not running: start it first"):
        backend.exec("alice", ["true"])
    backend.start("alice")
    with pytest.raises(ConfigError, match="empty argv"):
        backend.exec("alice", [])
    with pytest.raises(ConfigError, match="variable name 'A=B' is invalid"):
        backend.exec("alice", ["true"], {"A=B": "1"})
    with pytest.raises(Exception, match="cannot start 'no-such-program-xyz'"):
        backend.exec("alice", ["no-such-program-xyz"])


def test_stop_escalates_sigint_sigterm_sigkill(
    backend: ProcessBackend, exits: queue.Queue[ContainerExit]
) -> None:
    started(backend)
    keeper = backend.status("alice").pid
    assert keeper is not None
    stubborn = backend.exec("alice", [sys.executable, "-c", STUBBORN])
    assert read_line(stubborn.stdout) == b"ready\n"
    grace = StopGrace(sigint=0.4, sigterm=0.4, sigkill=3.0)
    t0 = time.monotonic()
    result = backend.stop("alice", grace=grace)
    elapsed = time.monotonic() - t0
    out, _ = finish(stubborn)
    # It saw SIGINT, then SIGTERM, then died of SIGKILL, after both grace periods (bounded).
    assert out.decode().split() == ["SIGINT", "SIGTERM"]
    assert stubborn.returncode == -signal.SIGKILL
    assert grace.sigint + grace.sigterm <= elapsed < grace.sigint + grace.sigterm + 2.0
    assert live_members([keeper]) == set()
    assert result is not None and result.expected
    assert result == exits.get(timeout=TIMEOUT)
    assert backend.status("alice").state == "stopped"


def test_orderly_stop_is_quick_and_expected(
    backend: ProcessBackend, exits: queue.Queue[ContainerExit]
) -> None:
    started(backend)
    keeper = backend.status("alice").pid
    assert keeper is not None
    sleeper = backend.exec("alice", [sys.executable, "-c", SLEEPER])
    assert read_line(sleeper.stdout) == b"ready\n"
    t0 = time.monotonic()
    result = backend.stop("alice")
    assert time.monotonic() - t0 < 2.0  # SIGINT was enough: no grace period ran out
    finish(sleeper)
    assert sleeper.returncode == -signal.SIGINT
    event = exits.get(timeout=TIMEOUT)
    assert event == result
    assert (event.name, event.result, event.exit_status, event.signal, event.expected) == (
        "alice",
        "success",
        0,
        None,
        True,
    )
    assert live_members([keeper]) == set()
    assert backend.stop("alice") is None  # not running: nothing to do


def test_orderly_stop_works_when_the_hive_ignores_sigint(
    backend: ProcessBackend, sigint_ignored: None
) -> None:
    """An ignored SIGINT is inherited across exec: the backend starts programs with SIGINT at
    its default, so the stop's SIGINT still ends them, at once."""
    assert stop_signals_ignored() == (signal.SIGINT,)
    started(backend)
    sleeper = backend.exec("alice", [sys.executable, "-c", SLEEPER])
    assert read_line(sleeper.stdout) == b"ready\n"
    assert signal.SIGINT not in (ignored_signals(sleeper.pid) or {signal.SIGINT})
    t0 = time.monotonic()
    backend.stop("alice")
    assert time.monotonic() - t0 < 2.0  # within the SIGINT grace: SIGINT was enough
    finish(sleeper)
    assert sleeper.returncode == -signal.SIGINT


def test_exec_of_a_missing_program_is_refused_when_the_hive_ignores_sigint(
    backend: ProcessBackend, sigint_ignored: None
) -> None:
    started(backend)
    with pytest.raises(HiveError, match="cannot start 'no-such-program-here'"):
        backend.exec("alice", ["no-such-program-here"])


def test_stop_moves_to_sigterm_at_once_when_only_sigint_deaf_processes_are_left(
    backend: ProcessBackend,
) -> None:
    started(backend)
    deaf = backend.exec("alice", [sys.executable, "-c", DEAF])
    assert read_line(deaf.stdout) == b"ready\n"
    t0 = time.monotonic()
    backend.stop("alice")
    elapsed = time.monotonic() - t0
    finish(deaf)
    assert deaf.returncode == -signal.SIGTERM
    assert elapsed < 1.5  # the SIGINT grace (2 s) was not waited out


def test_ignored_signals_reads_the_mask() -> None:
    before = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        mine = ignored_signals()
        assert mine is not None and int(signal.SIGUSR1) in mine
    finally:
        signal.signal(signal.SIGUSR1, before)
    mine = ignored_signals()
    assert mine is not None and int(signal.SIGUSR1) not in mine
    assert ignored_signals(2**22 + 12345) is None  # no such process


def test_kill_9_of_the_keeper_is_a_crash(
    backend: ProcessBackend, exits: queue.Queue[ContainerExit]
) -> None:
    started(backend)
    keeper = backend.status("alice").pid
    assert keeper is not None
    sleeper = backend.exec("alice", [sys.executable, "-c", SLEEPER])
    assert read_line(sleeper.stdout) == b"ready\n"
    before = time.time()
    os.kill(keeper, signal.SIGKILL)
    event = exits.get(timeout=TIMEOUT)
    assert (event.name, event.result, event.signal, event.exit_status, event.expected) == (
        "alice",
        "signal",
        signal.SIGKILL,
        None,
        False,
    )
    assert event.when >= before
    # The rest of the container went with it.
    finish(sleeper)
    assert sleeper.returncode == -signal.SIGKILL
    assert live_members([keeper]) == set()
    status = backend.status("alice")
    assert status.state == "stopped" and status.since == event.when
    # And it starts again.
    backend.start("alice")
    assert backend.status("alice").state == "running"


def test_destroy_with_and_without_state(backend: ProcessBackend) -> None:
    paths = started(backend)
    (paths.state / "notes.md").write_text("remember")
    (paths.home / "x").write_text("y")
    with pytest.raises(Conflict, match="stop it before destroying"):
        backend.destroy("alice", keep_state=True)
    backend.stop("alice")
    backend.destroy("alice", keep_state=True)
    assert backend.status("alice").state == "absent"
    assert sorted(p.name for p in paths.root.iterdir()) == ["state"]
    assert (paths.state / "notes.md").read_text() == "remember"
    # A kept state is picked up by the next container of that name.
    started(backend)
    assert (paths.state / "notes.md").read_text() == "remember"
    backend.stop("alice")
    backend.destroy("alice", keep_state=False)
    assert not paths.root.exists()
    assert backend.status("alice").state == "absent"
    backend.destroy("alice", keep_state=False)  # idempotent


def test_pty_shell_echo(backend: ProcessBackend) -> None:
    paths = started(backend)
    pid, master = backend.pty_shell("alice")
    try:
        os.write(master, b"echo hi; echo $HOME\n")
        buf = b""
        deadline = time.monotonic() + TIMEOUT
        pattern = re.compile(rb"[\r\n]hi\r\n" + re.escape(str(paths.home).encode()) + rb"\r\n")
        while not pattern.search(buf):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no echo within {TIMEOUT}s: {buf!r}"
            readable, _, _ = select.select([master], [], [], remaining)
            if readable:
                buf += os.read(master, 4096)
        # The shell leads its own session (it owns the terminal) and is part of the container:
        # stopping the container ends it.
        assert os.getsid(pid) == pid
        backend.stop("alice")
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) or os.WIFEXITED(status)
        assert live_members([pid]) == set()
    finally:
        os.close(master)


def test_close_stops_everything(tmp_path: Path) -> None:
    backend = ProcessBackend(tmp_path)
    started(backend, "alice")
    started(backend, "bob")
    keepers = [backend.status(n).pid for n in ("alice", "bob")]
    backend.close()
    assert [backend.status(n).state for n in ("alice", "bob")] == ["stopped", "stopped"]
    assert live_members([k for k in keepers if k is not None]) == set()


def test_keeper_takes_its_group_down_when_the_hive_goes(tmp_path: Path) -> None:
    """EOF on the control pipe (the hive died or closed it): the keeper sends SIGTERM to its
    group and exits 0, while a SIGINT to the group does not end it."""
    env, _ = keeper_env({"PATH": os.environ["PATH"]})
    keeper = subprocess.Popen(
        keeper_argv(sys.executable, "keep", "--name", "alice"),
        env=env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        process_group=0,
    )
    assert keeper.stdin is not None and keeper.stdout is not None
    children: list[subprocess.Popen[bytes]] = []

    def child_in_group() -> subprocess.Popen[bytes]:
        # Started here, not through the backend: SIGINT's default is set by hand (this test
        # run may ignore SIGINT, and the child would inherit that).
        child = subprocess.Popen(
            [sys.executable, "-c", f"{DEFAULT_SIGINT}; {SLEEPER}"],
            stdout=subprocess.PIPE,
            process_group=keeper.pid,
        )
        children.append(child)
        assert read_line(child.stdout) == b"ready\n"
        return child

    try:
        assert read_line(keeper.stdout).startswith(b"ready")
        child = child_in_group()
        os.killpg(keeper.pid, signal.SIGINT)
        finish(child)
        assert child.returncode == -signal.SIGINT
        assert keeper.poll() is None  # the keeper ignores SIGINT
        child = child_in_group()
        keeper.stdin.close()
        assert keeper.wait(timeout=TIMEOUT) == 0
        finish(child)
        assert child.returncode == -signal.SIGTERM
    finally:
        for proc in (*children, keeper):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=TIMEOUT)
            if proc.stdout is not None:
                proc.stdout.close()
        keeper.stdin.close()


def test_decode_exit() -> None:
    assert decode_exit(os.CLD_EXITED, 0) == ("success", 0, None)
    assert decode_exit(os.CLD_EXITED, 3) == ("exit-code", 3, None)
    assert decode_exit(os.CLD_KILLED, 9) == ("signal", None, 9)
    assert decode_exit(os.CLD_DUMPED, 11) == ("core-dump", None, 11)
    with pytest.raises(ValueError):
        decode_exit(os.CLD_STOPPED, 19)


def test_stop_grace_is_bounded() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        StopGrace(sigint=-1)
    with pytest.raises(ConfigError, match="out of range"):
        StopGrace(sigkill=10_000)
