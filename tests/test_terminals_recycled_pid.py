"""Issue 17 (item 5): a container's stop signals only the terminals' shells the hive knows are
alive and its own. A closed terminal's shell, once released (forgotten and reaped), is never
signalled again — not even when an unrelated process got its pid since — and a shell still
open at the stop is hung up. On the process backend, and on the nspawn backend where this host
can run it (root and systemd-nspawn): child mode, and unit mode against a booted systemd
(:mod:`tests.support.booted`; the shells' launchers are the hive's children there too)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hive_actors.containers.base import ContainerBackend, ContainerSpec, StopGrace
from hive_actors.containers.process import ProcessBackend
from hive_actors.containers.procgroup import wait_until
from tests.support.timeout import TIMEOUT

_NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")

_nspawn_ok = os.geteuid() == 0 and shutil.which("systemd-nspawn") is not None


@pytest.fixture(params=[
    "process",
    pytest.param("nspawn", marks=pytest.mark.skipif(
        not _nspawn_ok, reason="the nspawn backend needs root and systemd-nspawn")),
    pytest.param("nspawn-unit", marks=pytest.mark.skipif(
        not _nspawn_ok, reason="the nspawn backend needs root and systemd-nspawn")),
])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    grace = StopGrace(sigint=TIMEOUT, sigterm=2.0, sigkill=3.0)
    b: Any
    with contextlib.ExitStack() as stack:
        if request.param == "process":
            b = ProcessBackend(tmp_path / "hive", grace=grace, isolate="off")
        elif request.param == "nspawn":
            from hive_actors.containers.nspawn import NspawnBackend

            b = NspawnBackend(tmp_path / "hive", grace=grace)
        else:
            from hive_actors.containers.nspawn import _ETC, nspawn_backend
            from tests.support.booted import boot_unavailable, booted_systemd, python_dirs

            reason = boot_unavailable()
            if reason is not None:
                pytest.skip(reason)
            systemd = stack.enter_context(booted_systemd(
                binds=[str(tmp_path)], binds_ro=[*python_dirs(), *_ETC], private_network=False))
            b = nspawn_backend(tmp_path / "hive", mode="unit", bus_address=systemd.address,
                               start_timeout=TIMEOUT, grace=grace)
        stack.callback(b.close)
        yield b


def _exited(pid: int) -> os.waitid_result | None:
    """``pid``'s exit if it ended, without reaping it (None while it runs)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)


def _wait_exit(pid: int) -> os.waitid_result:
    """Wait (bounded) for ``pid``'s exit without reaping it, as the terminal does."""
    assert wait_until(lambda: _exited(pid) is not None, TIMEOUT), f"shell {pid} did not exit"
    info = _exited(pid)
    assert info is not None
    return info


def _not_a_child(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _spawn_with_pid(wanted: int, attempts: int = 50) -> subprocess.Popen[bytes] | None:
    """An innocent ``sleep`` in a session of its own (so its pid is also a process group and a
    session) whose pid is exactly ``wanted``: ``ns_last_pid`` set to the number before it, then
    a fork. None when another process of the machine keeps taking the number first."""
    for _ in range(attempts):
        try:
            _NS_LAST_PID.write_text(str(wanted - 1))
        except OSError as exc:
            pytest.skip(f"cannot steer pid allocation ({_NS_LAST_PID}: {exc.strerror})")
        proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
        if proc.pid == wanted:
            return proc
        proc.kill()
        proc.wait()
        if os.path.exists(f"/proc/{wanted}"):
            return None  # someone else holds the number now
    return None


def test_the_protocol_names_release_shell(backend: Any) -> None:
    assert isinstance(backend, ContainerBackend)
    assert callable(backend.release_shell)


def test_a_released_shells_recycled_pid_is_never_signalled(backend: Any) -> None:
    if not os.access(_NS_LAST_PID, os.W_OK):
        pytest.skip(f"{_NS_LAST_PID} is not writable here: pid reuse cannot be forced")
    backend.create("alice", ContainerSpec())
    backend.start("alice")
    run = backend._slot("alice").running
    assert run is not None

    pid, master = backend.pty_shell("alice")
    assert pid in run.shells
    os.close(master)  # the terminal closes: the PTY's hang-up ends the shell
    _wait_exit(pid)
    assert pid in run.shells  # exited, not reaped: still the shell's number
    backend.release_shell("alice", pid)
    assert pid not in run.shells
    assert _not_a_child(pid)  # reaped: the number is free for anyone now

    innocent = _spawn_with_pid(pid)
    if innocent is None:
        pytest.skip(f"pid {pid} was taken by another process of this machine first")
    try:
        assert os.getpgid(innocent.pid) == pid  # what a stale killpg(pid) would hit
        backend.stop("alice")
        assert backend.status("alice").state == "stopped"
        # Signals are sent before stop returns; give a stray one time to land anyway.
        with pytest.raises(subprocess.TimeoutExpired):
            innocent.wait(timeout=1.0)
    finally:
        innocent.kill()
        innocent.wait()
    assert innocent.returncode == -signal.SIGKILL  # ours, not the stop's


def test_a_shell_open_at_the_stop_is_hung_up(backend: Any) -> None:
    backend.create("bob", ContainerSpec())
    backend.start("bob")
    run = backend._slot("bob").running
    assert run is not None
    pid, master = backend.pty_shell("bob")
    try:
        assert _exited(pid) is None
        backend.stop("bob")
        info = _wait_exit(pid)
        # A login shell ignores SIGINT and SIGTERM: it ended on the hang-up.
        assert (info.si_code, info.si_status) == (os.CLD_KILLED, signal.SIGHUP), info
        assert pid in run.shells  # exited but not released: the number is still reserved
        backend.release_shell("bob", pid)
        assert pid not in run.shells and _not_a_child(pid)
    finally:
        os.close(master)


def test_release_shell_of_an_untracked_pid_only_reaps(backend: Any) -> None:
    proc = subprocess.Popen(["true"])
    _wait_exit(proc.pid)
    backend.release_shell("carol", proc.pid)  # no such container: nothing to forget
    assert _not_a_child(proc.pid)
    proc.returncode = 0  # reaped above: Popen must not wait for it
