"""Listening sockets that survive restarts: SO_REUSEADDR, bounded retries, a clear error.

Two different things keep a port busy after the hive (or one agent page) stops:

* TIME_WAIT leftovers of connections the server closed first. SO_REUSEADDR, set before
  ``bind``, lets a new listener bind over them at once — hyperhive's operator hit 12 failed
  retries on the manager's :8000 before it was set.
* a live process still listening (the old hive not yet exited, or a stranger). REUSEADDR does
  not help there, by design; we retry a bounded number of times with backoff (the overlap of a
  restart is short), then fail with a :class:`HiveError` that names host:port and the fix.

The backoff schedule is pure (:func:`backoff_delays`); ``sleep`` is injected so tests decide
what happens between attempts without waiting.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable

from hive_actors.errors import ConfigError, HiveError

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_FIRST_DELAY",
    "DEFAULT_MAX_DELAY",
    "backoff_delays",
    "bind_listener",
]

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 6
"""Bind attempts before giving up on a port held by a live process."""

DEFAULT_FIRST_DELAY = 0.05
"""Seconds before the second attempt; each later delay doubles, up to the cap."""

DEFAULT_MAX_DELAY = 1.0
"""Cap of one delay: the whole default schedule waits at most 0.05+0.1+0.2+0.4+0.8 = 1.55 s."""


def backoff_delays(attempts: int, first: float, max_delay: float) -> list[float]:
    """The waits between ``attempts`` bind attempts: doubling from ``first``, capped."""
    if attempts < 1:
        raise ConfigError(f"web: bind attempts must be >= 1, got {attempts}")
    return [min(max_delay, first * 2**i) for i in range(attempts - 1)]


def bind_listener(
    host: str,
    port: int,
    *,
    fix: str = "set [web] port",
    attempts: int = DEFAULT_ATTEMPTS,
    first_delay: float = DEFAULT_FIRST_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    sleep: Callable[[float], None] = time.sleep,
    backlog: int = 128,
) -> socket.socket:
    """Bind and listen on ``host:port`` (0 picks a free port) and return the socket.

    SO_REUSEADDR is set before every bind. EADDRINUSE is retried per :func:`backoff_delays`,
    calling ``sleep`` between attempts; the final failure is a :class:`HiveError` whose message
    ends with ``fix`` (the config key or port file the operator can change). Other errors
    (address not on this host, permission) fail at once: retrying cannot help them.
    """
    family, address = _resolve(host, port)
    delays = backoff_delays(attempts, first_delay, max_delay)
    for attempt in range(attempts):
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when
        # the listener's proto says TCP; with proto 0, every small response waits ~40 ms on
        # Nagle + delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            # Before bind: the option is checked at bind time (TIME_WAIT leftovers).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # "::" means IPv6 only here; a dual-stack bind would surprise the loopback rule.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = _where(host, port)
            if exc.errno != errno.EADDRINUSE:
                raise HiveError(_other_error(where, exc, fix)) from exc
            if attempt == attempts - 1:
                total = sum(delays)
                raise HiveError(
                    f"web: cannot listen on {where}: port {port} is held by another live "
                    f"process ({attempts} attempts over {total:.2f}s); stop it (`ss -ltnp "
                    f"'sport = :{port}'` shows which), or {fix}"
                ) from exc
            delay = delays[attempt]
            log.warning(
                "web: %s is in use (attempt %d of %d); retrying in %.2fs",
                where,
                attempt + 1,
                attempts,
                delay,
            )
            sleep(delay)
        else:
            bound = sock.getsockname()[1]
            log.debug("web: listening on %s", _where(host, bound))
            return sock
    raise AssertionError("unreachable: the last attempt returns or raises")


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """One numeric address for ``host`` (the first getaddrinfo answer)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"web: port {port} for {host} is out of 0-65535; set a valid port")
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            f"web: cannot resolve listen address {host!r}: {exc.strerror}; use an IP address "
            "such as 127.0.0.1 or a name in /etc/hosts"
        ) from exc
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _other_error(where: str, exc: OSError, fix: str) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        why = "the address is not one of this host's; use 127.0.0.1 or an address it has"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges); pick a port >= 1024"
    else:
        why = exc.strerror or str(exc)
    return f"web: cannot listen on {where}: {why}; to listen elsewhere, {fix}"
