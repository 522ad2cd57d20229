"""What ``hive demo`` and ``hive serve`` need, checked before anything is written.

Each check raises :class:`PreflightError` with one line: what is missing or wrong and what to
install or change, naming the flag (``--state-dir``, ``--port``) or the configuration key
(``[hive] state_dir``, ``[web] port``) of the command the user ran (:class:`Knobs`). The checks
read only: a temporary probe file (removed at once) tells a read-only or full disk, the lock is
tried and let go at once, the schema is read from the file's header.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hive_actors.config import HiveConfig
from hive_actors.errors import ConfigError, HiveError

__all__ = [
    "MIN_FREE_BYTES",
    "Knobs",
    "PreflightError",
    "check_credentials",
    "demo_knobs",
    "preflight",
    "serve_knobs",
]

MIN_FREE_BYTES = 16 * 1024 * 1024
"""Free space the state dir's file system needs at least (the db, the agents' files)."""


class PreflightError(HiveError):
    """Something the hive needs is missing or in the way (one line naming the fix)."""


@dataclass(frozen=True)
class Knobs:
    """How the user sets each thing, for the command they ran."""

    command: str
    state_dir: str
    port: str
    claude: str
    """How to get the claude CLI the hive needs."""


def demo_knobs() -> Knobs:
    return Knobs(
        command="hive demo",
        state_dir="pass another --state-dir",
        port="pass another --port (0 picks a free one)",
        claude="reinstall hive_actors with its pinned claude-agent-sdk (pip install -e .)",
    )


def serve_knobs(source: str) -> Knobs:
    where = f" in {source}" if source and not source.startswith("<") else ""
    return Knobs(
        command="hive serve",
        state_dir=f"set [hive] state_dir{where}",
        port=f"set [web] port{where}",
        claude=f"set [model] claude_path{where}",
    )


def preflight(config: HiveConfig, knobs: Knobs, *,
              claude: Callable[[], object] | None = None) -> None:
    """Check, in order, git, the state dir, its store, the ports and the claude CLI
    (``claude``: the finder to run; None: :func:`hive_actors.harness.claude.find_claude`)."""
    check_git()
    state_dir = Path(config.state_dir)
    check_state_dir(state_dir, knobs)
    check_store(config.db_path, knobs)
    check_port(config.web.host, config.web.port, knobs.port)
    if config.web.metrics_port:
        check_port(config.web.host, config.web.metrics_port,
                   knobs.port.replace("[web] port", "[web] metrics_port"))
    check_claude(config, knobs, claude)


def check_credentials(config: HiveConfig) -> None:
    """The credentials ``hive serve`` hands the agents' CLI are there and not empty (one line
    naming the kind and the file or variable, never the value; :mod:`hive_actors.credentials`).
    Not for the demo, whose loopback model takes its own key."""
    from hive_actors.credentials import load_credentials

    try:
        load_credentials(config)
    except ConfigError as exc:
        raise PreflightError(str(exc)) from None


def check_git() -> None:
    if shutil.which("git") is None:
        raise PreflightError(
            "git is not installed (not on PATH): each agent keeps its configuration in a git "
            "repository; install git (apt install git, dnf install git, brew install git)"
        )


def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    return probe


def check_state_dir(state_dir: Path, knobs: Knobs) -> None:
    """The state dir is a directory (or can be made one) on a writable file system with room;
    nothing is left behind."""
    state_dir = Path(os.path.abspath(state_dir))
    base = _existing_ancestor(state_dir)
    if not base.is_dir():
        raise PreflightError(
            f"state dir '{state_dir}': '{base}' is not a directory; {knobs.state_dir}"
        )
    what = "state dir" if base == state_dir else f"state dir '{state_dir}' cannot be made:"
    try:
        fd, probe = tempfile.mkstemp(prefix=".hive-preflight-", dir=base)
    except OSError as exc:
        raise PreflightError(_disk_error(what, base, exc, knobs)) from None
    try:
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        except OSError as exc:
            raise PreflightError(_disk_error(what, base, exc, knobs)) from None
    finally:
        os.close(fd)
        os.unlink(probe)
    try:
        vfs = os.statvfs(base)
    except OSError:
        return
    free = vfs.f_bavail * vfs.f_frsize
    if free < MIN_FREE_BYTES:
        raise PreflightError(
            f"{what} '{base}': its disk is (nearly) full ({free // 1024} KiB free, the hive "
            f"needs {MIN_FREE_BYTES // 2**20} MiB): free space, or {knobs.state_dir}"
        )


def _disk_error(what: str, base: Path, exc: OSError, knobs: Knobs) -> str:
    if exc.errno == errno.EROFS:
        why = "is on a read-only file system"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "is on a full disk (no space left)"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "is not writable by this user"
    else:
        why = f"cannot be written ({exc.strerror})"
    return f"{what} '{base}' {why}: {knobs.state_dir}"


_SQLITE_MAGIC = b"SQLite format 3\0"


def check_store(db_path: Path, knobs: Knobs) -> None:
    """No other hive holds the store's lock, and its schema is not newer than this version's
    (read from the file's header: nothing is opened for writing, nothing created)."""
    from hive_actors.store.lock import lock_path_for
    from hive_actors.store.schema import SCHEMA_VERSION

    db_path = Path(os.path.abspath(db_path))
    lock_path = lock_path_for(db_path)
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1  # no lock file yet (or unreadable: the store says so when it opens)
    if fd >= 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise PreflightError(
                    f"another hive{pid} is running on the state dir '{db_path.parent}': stop "
                    f"it, or {knobs.state_dir}"
                ) from None
        finally:
            os.close(fd)  # lets go of the shared lock at once
    try:
        with open(db_path, "rb") as f:
            header = f.read(100)
    except OSError:
        return
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return  # empty or not a database: the store's own error says what to do
    version = int.from_bytes(header[60:64], "big")
    if version > SCHEMA_VERSION:
        raise PreflightError(
            f"the state dir '{db_path.parent}' was written by a newer hive_actors (schema "
            f"{version}, this one knows {SCHEMA_VERSION}): upgrade hive_actors, or "
            f"{knobs.state_dir}"
        )


def check_port(host: str, port: int, fix: str) -> None:
    """``host:port`` can be listened on now (0: any free port, not checked)."""
    if port == 0:
        return
    if port < 1024 and os.geteuid() != 0 and port < _unprivileged_start():
        raise PreflightError(
            f"port {port} is privileged (below 1024) and this user is not root: pick a port "
            f">= 1024: {fix}"
        )
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # the web server's own error names the bad address
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PreflightError(
                f"port {port} on {host} is in use by another process (`ss -ltnp 'sport = "
                f":{port}'` shows which): stop it, or {fix}"
            ) from None
        if exc.errno == errno.EACCES:
            raise PreflightError(
                f"port {port} on {host}: permission denied (ports below 1024 need root): "
                f"{fix}"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            return  # the web server's own error names the address
        raise PreflightError(f"port {port} on {host}: {exc.strerror}: {fix}") from None
    finally:
        sock.close()


def _unprivileged_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def check_claude(config: HiveConfig, knobs: Knobs,
                 finder: Callable[[], object] | None = None) -> None:
    """The claude CLI is there and is the version this hive_actors speaks."""
    if finder is None:
        from hive_actors.harness.claude import find_claude

        def finder() -> object:
            return find_claude(config.model.claude_path or None)

    try:
        finder()
    except ConfigError as exc:
        text = str(exc)
        if knobs.command == "hive demo":
            cut = text.rfind(" or set [model] claude_path")
            if cut > 0:
                text = text[:cut] + f", or {knobs.claude}"
        raise PreflightError(text) from None
