"""The per-agent web port rule (from hyperhive's port regression fix).

Every agent's page is served on its own port, chosen once and then remembered in
``<state_dir>/web-port``::

    port file exists                → use it (validated; a corrupt file is a clear error)
    no port file, applied config    → legacy agent: persist the hashed port WITHOUT probing —
                                      its container is already bound there, and probing forward
                                      would move the dashboard's link off the live container
    no port file, no applied config → fresh spawn: probe forward from the hashed port to a free
                                      one, then persist it

A fresh spawn's probe skips every port the hive has handed out (``reserved``: the other agents'
recorded ports and the dashboard's), bound right now or not. A *draft* (two-step spawn) is a
fresh spawn although its repository is created with an applied commit: the caller passes
``applied_config_exists=False`` for it. And an agent that looks legacy but whose hashed port
another agent holds cannot have been served there: it probes forward too.

The hash is sha256 of the name, not Python's ``hash()`` (salted per process), so the same name
maps to the same port on every start, in every Python version.

The decision (:func:`decide_port`) and the hash are pure; :func:`agent_web_port` does the I/O:
reading and atomically writing the port file and the bind test.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from hive_actors.errors import ConfigError, HiveError

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_SPAN",
    "PORT_FILE",
    "PersistHashed",
    "PortDecision",
    "ProbeForward",
    "UsePortFile",
    "agent_web_port",
    "decide_port",
    "is_port_free",
    "parse_port_file",
    "port_hash",
    "probe_order",
    "write_port_file",
]

log = logging.getLogger(__name__)

PORT_FILE = "web-port"
"""Name of the port file inside an agent's state directory."""

DEFAULT_BASE = 8100
"""First port of the per-agent range (the dashboard sits below it, on 8000)."""

DEFAULT_SPAN = 1000
"""Size of the per-agent range: ports ``[base, base + span)``."""


def port_hash(name: str, base: int = DEFAULT_BASE, span: int = DEFAULT_SPAN) -> int:
    """Map an agent name to a port in ``[base, base + span)``, the same in every process."""
    _check_range(base, span)
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return base + int.from_bytes(digest[:8], "big") % span


def probe_order(start: int, base: int, span: int) -> list[int]:
    """Every port of the range once, from ``start`` forward, wrapping around at the end."""
    _check_range(base, span)
    offset = start - base
    return [base + (offset + i) % span for i in range(span)]


def parse_port_file(text: str, path: Path | str) -> int:
    """Validate a port file's content; a corrupt file raises :class:`ConfigError` naming it."""
    value = text.strip()
    fix = (
        f"delete '{path}' to let the hive choose the agent's port again, or write one port "
        "number (1-65535) into it"
    )
    if not value.isdigit() or not value.isascii():
        raise ConfigError(f"web: agent port file '{path}' holds {value[:40]!r}, not a port; {fix}")
    port = int(value)
    if not 1 <= port <= 65535:
        raise ConfigError(f"web: agent port file '{path}' holds {port}, out of 1-65535; {fix}")
    return port


@dataclass(frozen=True)
class UsePortFile:
    """The port file exists: its port is the agent's port."""

    port: int


@dataclass(frozen=True)
class PersistHashed:
    """A legacy agent (applied config, no port file): persist the hashed port, never probe."""

    port: int


@dataclass(frozen=True)
class ProbeForward:
    """A fresh spawn: try ``candidates`` in order, take the first free one, persist it."""

    candidates: tuple[int, ...]


PortDecision = UsePortFile | PersistHashed | ProbeForward


def decide_port(
    name: str,
    port_file: Path | str,
    port_file_text: str | None,
    applied_config_exists: bool,
    base: int = DEFAULT_BASE,
    span: int = DEFAULT_SPAN,
    reserved: Collection[int] = (),
) -> PortDecision:
    """The port rule, pure: what to do given what is on disk.

    ``port_file_text`` is the port file's content, or None when there is no port file.
    ``reserved`` are ports already assigned to other agents (their port files, the store) and
    the dashboard's: a fresh spawn skips them even when nothing is bound there right now (a
    stopped agent); a legacy agent whose hashed port is among them probes forward as well.
    """
    if port_file_text is not None:
        return UsePortFile(parse_port_file(port_file_text, port_file))
    hashed = port_hash(name, base, span)
    taken = set(reserved)
    if applied_config_exists and hashed not in taken:
        return PersistHashed(hashed)
    return ProbeForward(tuple(p for p in probe_order(hashed, base, span) if p not in taken))


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Bind test: can a listening socket bind ``host:port`` right now?

    SO_REUSEADDR is set as on the real bind, so a port whose only users are TIME_WAIT leftovers
    counts as free (the real bind will succeed there too).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise HiveError(
                f"web: cannot test port {host}:{port}: {exc.strerror or exc}; check that "
                f"{host} is an address of this host"
            ) from exc
        return True


def write_port_file(path: Path, port: int) -> None:
    """Write the port file atomically: a crash leaves the old file or the new one, never half.

    Written to a temporary file in the same directory, fsynced, renamed over the target, and the
    directory fsynced so the rename itself survives a power cut.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{port}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise HiveError(
            f"web: cannot write agent port file '{path}': {exc.strerror or exc}; check that "
            f"'{path.parent}' exists and is writable by the hive"
        ) from exc


def agent_web_port(
    name: str,
    state_dir: Path | str,
    applied_config_exists: bool,
    base: int = DEFAULT_BASE,
    span: int = DEFAULT_SPAN,
    *,
    reserved: Collection[int] = (),
    is_free: Callable[[int], bool] = is_port_free,
) -> int:
    """Return the agent's web port, persisting it in ``<state_dir>/web-port`` when new.

    ``applied_config_exists`` says whether the agent already has an applied flake/config (its
    container may be bound to the hashed port). ``reserved`` are other agents' ports, skipped
    by a fresh spawn's probe. ``is_free`` is the bind test (injectable for fault tests).
    Raises :class:`ConfigError` for a corrupt port file and :class:`HiveError` when no port of
    the range is free or the file cannot be read or written.
    """
    path = Path(state_dir) / PORT_FILE
    try:
        text: str | None = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        text = None
    except OSError as exc:
        raise HiveError(
            f"web: cannot read agent port file '{path}': {exc.strerror or exc}; fix its "
            "permissions or delete it to let the hive choose the port again"
        ) from exc

    decision = decide_port(name, path, text, applied_config_exists, base, span, reserved)
    match decision:
        case UsePortFile(port):
            return port
        case PersistHashed(port):
            log.info("web: legacy agent %s: keeping its hashed port %d (no probe)", name, port)
            write_port_file(path, port)
            return port
        case ProbeForward(candidates):
            for port in candidates:
                if is_free(port):
                    log.info("web: fresh agent %s gets port %d", name, port)
                    write_port_file(path, port)
                    return port
            raise HiveError(
                f"web: no free port for agent {name!r} in {base}-{base + span - 1} "
                f"({len(candidates)} tried); free some ports or widen the range ([web] "
                "agent_port_base / agent_port_span)"
            )


def _check_range(base: int, span: int) -> None:
    if span < 1 or base < 1 or base + span - 1 > 65535:
        raise ConfigError(
            f"web: agent port range base={base} span={span} does not fit in 1-65535; set "
            "[web] agent_port_base / agent_port_span so base+span-1 <= 65535"
        )
