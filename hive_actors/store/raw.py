"""The benchmark ceiling: raw message inserts with the store's pragmas and nothing else.

``benchmarks/bus_raw.py`` compares the bus (actor round trip, validation, events, group
commit) with this: plain ``INSERT``s into the same table on the same durable settings (WAL,
``synchronous=FULL``), one transaction per batch. It lives next to the schema so a schema
change updates it too. It skips the hive lock, validation and events on purpose, and must never
be used on a live hive's file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import apsw

from .db import DEFAULT_BUSY_TIMEOUT_MS

__all__ = ["RawResult", "raw_insert_messages"]


@dataclass(frozen=True, slots=True)
class RawResult:
    """What a raw run did."""

    messages: int
    commits: int
    seconds: float
    """Wall time of the inserts and commits (perf_counter)."""

    @property
    def per_second(self) -> float:
        """Messages committed per second."""
        return self.messages / self.seconds if self.seconds > 0 else float("inf")


def raw_insert_messages(
    path: str | Path,
    sender: str,
    recipient: str,
    bodies: Sequence[str],
    *,
    batch: int = 1,
    generation: int = 1,
    created: float = 0.0,
) -> RawResult:
    """Insert ``bodies`` as queued messages, ``batch`` per transaction; time it.

    ``path`` must be a store file already migrated (open a :class:`Store` once, register the
    recipient, close it). ``batch=1`` is the fsync-per-message ceiling; larger batches show
    what group commit can reach.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        conn.set_busy_timeout(DEFAULT_BUSY_TIMEOUT_MS)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        sql = (
            "INSERT INTO messages (sender, recipient, kind, body, generation, created) "
            "VALUES (?, ?, 'peer', ?, ?, ?)"
        )
        commits = 0
        start = time.perf_counter()
        for first in range(0, len(bodies), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                sql,
                [
                    (sender, recipient, b, generation, created)
                    for b in bodies[first : first + batch]
                ],
            )
            conn.execute("COMMIT")
            commits += 1
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    return RawResult(messages=len(bodies), commits=commits, seconds=seconds)
