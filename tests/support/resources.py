"""Drive ordinary turns through a running hive and watch the process's resources.

Shared by ``tests/test_resources.py`` (100 turns, levels asserted) and ``benchmarks/soak.py``
(thousands of turns, figures printed). The hive runs in this process (:func:`tests.support.hive.running_hive`), so
``/proc/self`` is the daemon's: its descriptors (all, and those on the hive's sqlite file and
its WAL), its threads and its RSS. The driver itself keeps only counters, one store connection
and one HTTP client, so what grows is the daemon's.

A round sends every agent one operator message through the dashboard's API (``POST
/api/message``; every other round the message makes the agent call ``mcp__hive__send`` to the
next agent, which then has a turn of its own), reads ``/api/state`` and ``/api/events`` like a
dashboard would, and waits — on the hive's bell, with a deadline — until the hive is quiet:
every inbox empty, every turn ended, every turn's threads gone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

from hive_actors.daemon import Daemon
from hive_actors.store import Role, Store
from tests.support.web import bearer

__all__ = ["AGENTS", "Sample", "TurnDriver", "sample"]

AGENTS: dict[str, Role] = {
    "boss": Role.MANAGER, "ann": Role.AGENT, "ben": Role.AGENT, "cat": Role.AGENT,
    "dan": Role.AGENT,
}
"""A manager and four agents, as in the report of the leak."""

_TURN_THREADS = ("turn:", "claude-")
"""Threads that live for one turn (the worker, the CLI's pipe readers and waiter)."""


@dataclass(frozen=True)
class Sample:
    """The process's resources at one moment."""

    turns: int
    fds: int
    db_fds: int
    """Descriptors on the hive's sqlite file and its WAL (two per open connection)."""
    threads: int
    rss_kb: int
    db_bytes: int
    """The sqlite file and its WAL, on disk."""


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sample(db_path: Path, turns: int) -> Sample:
    """Count this process's descriptors, threads and RSS now."""
    db = str(db_path)
    fds = on_db = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # the descriptor listdir itself used, closed since
        fds += 1
        if target in (db, db + "-wal"):
            on_db += 1
    size = sum(p.stat().st_size for p in (db_path, Path(db + "-wal")) if p.exists())
    return Sample(
        turns=turns, fds=fds, db_fds=on_db, threads=len(os.listdir("/proc/self/task")),
        rss_kb=_rss_kb(), db_bytes=size,
    )


def _tool(name: str, **args: Any) -> str:
    return f"@tool {name} {json.dumps(args)}"


class TurnDriver:
    """Rounds of operator messages to ``agents`` of a running hive, each waited to the end."""

    def __init__(self, daemon: Daemon, agents: Sequence[str], *, timeout: float = 120.0) -> None:
        self.daemon = daemon
        self.agents = list(agents)
        self.timeout = timeout
        self.turns = 0
        """Turns ended so far (``turn.ended`` events seen)."""
        self.outcomes: dict[str, int] = {}
        self._store: Store = daemon.hive.open_store()
        self._cursor = self._store.events.last_event_id()
        self._api = httpx.Client(
            base_url=daemon.endpoints.base_url(timeout=timeout), trust_env=False, timeout=timeout,
            headers=bearer(daemon.token.value),
        )
        self._round = 0

    def close(self) -> None:
        self._api.close()
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def round(self) -> int:
        """One round; returns the turns it took (one per agent, twice that on a tool round)."""
        self._round += 1
        tools = self._round % 2 == 0
        before = self.turns
        for i, agent in enumerate(self.agents):
            peer = self.agents[(i + 1) % len(self.agents)]
            text = (_tool("mcp__hive__send", to=peer, body=f"round {self._round}: noted")
                    if tools else f"round {self._round}: carry on")
            sent = self._api.post("/api/message", data={"agent": agent, "text": text})
            if sent.status_code != 200:
                raise AssertionError(f"POST /api/message to {agent}: {sent.status_code} {sent.text}")
        self._api.get("/api/state").raise_for_status()
        self._api.get("/api/events", params={"since": self._cursor}).raise_for_status()
        self._quiet(before + len(self.agents) * (2 if tools else 1))
        return self.turns - before

    def _quiet(self, turns: int) -> None:
        """Wait until ``turns`` turns ended, no mail is waiting and the turns' threads ended."""
        bell = self.daemon.hive.bell
        deadline = time.monotonic() + self.timeout
        rings = bell.rings
        while True:
            self._read_events()
            if self.turns >= turns and self._idle():
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"the hive did not go quiet within {self.timeout} s: {self.turns} of "
                    f"{turns} turns ended; outcomes {self.outcomes}"
                )
            rings = bell.wait(rings, min(left, 0.5))
        for thread in threading.enumerate():
            if thread.name.startswith(_TURN_THREADS):
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    raise AssertionError(f"thread {thread.name} outlived its turn")

    def _read_events(self) -> None:
        rows = self._store.db.rows(
            "SELECT id, kind, payload FROM events WHERE id > ? ORDER BY id", (self._cursor,)
        )
        for event_id, kind, payload in rows:
            self._cursor = event_id
            if kind == "turn.ended":
                self.turns += 1
                outcome = str(json.loads(payload).get("outcome"))
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _idle(self) -> bool:
        open_mail = self._store.db.value(
            "SELECT count(*) FROM messages WHERE status IN ('queued', 'in_flight')"
        )
        busy = any(self.daemon.turns.current(agent) is not None for agent in self.agents)
        return not open_mail and not busy
