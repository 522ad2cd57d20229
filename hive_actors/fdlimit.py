"""The daemon's file-descriptor limit: raised at start-up where the host allows, reported where
it does not.

Every agent costs the daemon a few descriptors (its keeper's control pipe, its page's listening
socket, the sockets and pipes of a running turn), so a soft ``RLIMIT_NOFILE`` of 1024 — the
usual default of a login shell and of a systemd service — ends the hive at a few hundred
agents, long before its memory does. :func:`raise_nofile_limit` lifts the soft limit to the
hard one (any process may), and says in one log line when even the hard limit leaves room for
fewer agents than the host's memory would hold, with what to change (``LimitNOFILE=`` in the
unit, ``ulimit -n`` in a shell).

Nothing in the daemon watches descriptors with ``select`` (it cannot see one above 1023): it
uses ``poll``, ``epoll`` (asyncio, :mod:`selectors`) or blocking reads with timeouts.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BASE_FDS",
    "FDS_PER_AGENT",
    "IDLE_AGENT_BYTES",
    "NofileLimit",
    "agents_for_fds",
    "agents_for_memory",
    "fds_for_agents",
    "mem_available",
    "raise_nofile_limit",
]

log = logging.getLogger(__name__)

BASE_FDS = 512
"""Descriptors the daemon holds whatever its number of agents (the store, the dashboard, the
metrics), with room for a few dozen turns at once (each adds the CLI's three pipes and its
connections to the hive)."""
FDS_PER_AGENT = 5
"""Descriptors per idle agent in the daemon, with a margin: ``benchmarks/scale.py`` measures
4.1–4.3 (the keeper's control pipe, the agent page's listening socket, …)."""
IDLE_AGENT_BYTES = 8 * 1024 * 1024
"""What an idle agent costs the host, about: its keeper (PSS, ``benchmarks/scale.py``) and its
share of the daemon (an actor, a reaper thread, a page)."""
_NR_OPEN_DEFAULT = 1 << 20
"""Linux's default ``fs.nr_open``: the most a soft limit may be when the hard one is
unlimited."""

Limits = tuple[int, int]


@dataclass(frozen=True)
class NofileLimit:
    """What :func:`raise_nofile_limit` found and did."""

    before: int
    """The soft limit the daemon started with."""
    soft: int
    """The soft limit now."""
    hard: int
    agents: int
    """The scale it was checked against (agents)."""
    error: str | None = None
    """Why raising the soft limit failed (None: it did not, or it was not needed)."""

    @property
    def raised(self) -> bool:
        return self.soft > self.before

    @property
    def room(self) -> int:
        """How many agents the soft limit leaves room for."""
        return agents_for_fds(self.soft)

    @property
    def enough(self) -> bool:
        return self.room >= self.agents


def fds_for_agents(agents: int) -> int:
    """The descriptors a daemon with ``agents`` agents needs, about."""
    return BASE_FDS + FDS_PER_AGENT * max(0, agents)


def agents_for_fds(limit: int) -> int:
    """How many agents a descriptor limit leaves room for (unlimited: a very large number)."""
    if limit == resource.RLIM_INFINITY or limit < 0:
        return 1 << 30
    return max(0, (limit - BASE_FDS) // FDS_PER_AGENT)


def mem_available(meminfo: str = "/proc/meminfo") -> int | None:
    """``MemAvailable`` in bytes (None when it cannot be read)."""
    try:
        with open(meminfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def agents_for_memory(available: int | None, per_agent: int = IDLE_AGENT_BYTES) -> int:
    """How many idle agents ``available`` bytes hold (0 when unknown)."""
    if available is None or per_agent <= 0:
        return 0
    return available // per_agent


def _nr_open(path: str = "/proc/sys/fs/nr_open") -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return _NR_OPEN_DEFAULT


def raise_nofile_limit(
    agents: int | None = None,
    *,
    getrlimit: Callable[[int], Limits] = resource.getrlimit,
    setrlimit: Callable[[int, Limits], None] = resource.setrlimit,
    nr_open: Callable[[], int] = _nr_open,
    memory: Callable[[], int | None] = mem_available,
    logger: logging.Logger = log,
) -> NofileLimit:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; report a limit too low.

    ``agents`` is the scale to check against; None: as many idle agents as the host's
    available memory holds (:func:`agents_for_memory`). Logs one line: INFO when the limit was
    raised and is enough, WARNING (with the fix) when it is not. Never raises: a host that
    refuses keeps the limit it had, and the line says so.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    scale = agents if agents is not None else agents_for_memory(memory())
    target = hard
    if hard == resource.RLIM_INFINITY or hard < 0:
        target = nr_open()  # the kernel refuses a soft limit above fs.nr_open
    error: str | None = None
    now = soft
    if soft != resource.RLIM_INFINITY and 0 <= soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            now = getrlimit(resource.RLIMIT_NOFILE)[0]
        except (OSError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
    result = NofileLimit(before=soft, soft=now, hard=hard, agents=scale, error=error)
    if not result.enough:
        need = fds_for_agents(scale)
        why = f" (raising it failed: {error})" if error else ""
        logger.warning(
            "file descriptors: the limit is %d (hard limit %s)%s, room for about %d agents, "
            "fewer than the %d this host's memory holds; raise it to %d or more: "
            "LimitNOFILE=%d in the hive's systemd unit, or 'ulimit -n %d' before 'hive serve'",
            now, _show(hard), why, result.room, scale, need, need, need,
        )
    elif result.raised:
        logger.info(
            "file descriptors: soft limit raised from %d to %d (hard %s), room for about %d "
            "agents", soft, now, _show(hard), result.room,
        )
    return result


def _show(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY or limit < 0 else str(limit)
