"""Helpers shared by the store tests: a settable clock, a file snapshot, the check that a refusal
changes nothing (their fixtures, ``clock``, ``db_path``, ``state_root`` and ``state_store``, are
in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from hive_actors.errors import HiveError
from hive_actors.store import Store

T0 = 1_750_000_000.0
"""2025-06-15 15:06:40Z: the fake clock's start."""

TABLES = ("agents", "messages", "approvals", "questions", "events", "stats")


class WallClock:
    """A settable wall clock for the store's ``now``."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def open_store(path: Path, clock: WallClock, **kwargs: Any) -> Store:
    """Open a store with a short busy timeout, so a locked file fails a test fast."""
    kwargs.setdefault("busy_timeout_ms", 2000)
    return Store.open(path, now=clock, **kwargs)


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (and the AUTOINCREMENT counters), read on a separate connection."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(2000)
        state = {t: list(conn.execute(f"SELECT * FROM {t} ORDER BY rowid")) for t in TABLES}
        state["sqlite_sequence"] = list(conn.execute("SELECT * FROM sqlite_sequence ORDER BY name"))
        return state
    finally:
        conn.close()


def counts(path: Path) -> dict[str, int]:
    """Row count of every table, read on a separate connection."""
    return {table: len(rows) for table, rows in snapshot(path).items()}


def refused(store: Store, call: Callable[[], Any], error: type[HiveError], match: str) -> None:
    """``call`` raises ``error`` and leaves every row and counter as it was."""
    before = snapshot(store.path)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(store.path) == before
