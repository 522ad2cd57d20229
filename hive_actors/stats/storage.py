"""The stats actor's reads and writes on its own store connection.

Every function takes the :class:`~hive_actors.store.Database` (or :class:`Store`) of the calling
thread and raises :class:`~hive_actors.errors.StoreError` (apsw errors translated) on failure.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import apsw

from hive_actors.store import AgentState, Database, Store
from hive_actors.store.db import store_error

from .retention import RetentionPlan, StoredRow
from .series import AgentSample, HiveSample, Row, SentMessage, TurnSpan, recipient_kind
from .telemetry import COUNTER_KEYS_SQL, crash_label

__all__ = [
    "LIFECYCLE_KINDS",
    "apply_retention",
    "load_lifecycle",
    "load_totals",
    "messages_sent",
    "read_samples",
    "scan_for_retention",
    "tail_lifecycle",
    "write_rows",
]

LIFECYCLE_KINDS = ("agent.restarting", "agent.given_up", "agent.crashed")
_KINDS_SQL = ", ".join(f"'{kind}'" for kind in LIFECYCLE_KINDS)
# Clock slack when looking for the first message of a turn: a message's ``created`` comes from
# the bus's clock, the turn's span from the agent's; both are wall clocks of one host.
_SLACK = 2.0
# Deletes per transaction when retention merges: bounds how long the write lock is held.
_CHUNK = 2000


def _fail(db: Database, exc: apsw.Error, action: str) -> Exception:
    return store_error(exc, db.path, action, db.busy_timeout_ms)


def write_rows(db: Database, rows: Sequence[Row]) -> None:
    """Insert ``rows`` in ONE transaction (one fsync for a whole batch or tick)."""
    if not rows:
        return
    with db.transaction():
        try:
            db.connection.executemany(
                "INSERT INTO stats (agent, ts, key, value) VALUES (?, ?, ?, ?)", rows
            )
        except apsw.Error as exc:
            raise _fail(db, exc, "write stats to") from exc


def load_totals(db: Database) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """The sums of every counter series and each agent's newest turn, from the stats rows.

    One full pass over the table, once per actor start.
    """
    sums: dict[tuple[str, str], float] = {}
    last: dict[str, float] = {}
    for agent, key, total, newest in db.rows(
        f"SELECT agent, key, sum(value), max(ts) FROM stats WHERE {COUNTER_KEYS_SQL} "
        "GROUP BY agent, key"
    ):
        sums[(str(agent), str(key))] = float(total)
        if key == "turns":
            last[str(agent)] = float(newest)
    return sums, last


def load_lifecycle(db: Database) -> tuple[Counter[tuple[str, str]], int]:
    """Count every lifecycle event so far; return the counts and the event id read up to."""
    top = _last_event_id(db)
    return _lifecycle_between(db, 0, top), top


def tail_lifecycle(db: Database, after: int) -> tuple[Counter[tuple[str, str]], int]:
    """Count the lifecycle events with an id above ``after``; return them and the new cursor.

    The cursor moves to the newest event id even when none of the new events counts, so the
    next tail reads only newer ids (a primary-key range, however long the log).
    """
    top = _last_event_id(db)
    if top <= after:
        return Counter(), after
    return _lifecycle_between(db, after, top), top


def _last_event_id(db: Database) -> int:
    top = db.value("SELECT max(id) FROM events")
    return int(top or 0)


def _lifecycle_between(db: Database, after: int, upto: int) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for kind, agent, payload in db.rows(
        f"SELECT kind, agent, payload FROM events WHERE id > ? AND id <= ? AND kind IN "
        f"({_KINDS_SQL}) ORDER BY id",
        (after, upto),
    ):
        try:
            data = json.loads(payload) if payload else {}
        except ValueError:
            data = {}
        label = crash_label(str(kind), data if isinstance(data, dict) else {})
        if label is not None and agent:
            counts[(str(agent), label)] += 1
    return counts


def _first_message_at(db: Database, ts: float) -> int | None:
    """The smallest message id committed at or after ``ts``, by binary search on the id.

    The messages table has no index on ``created``; ids are allocated in commit order and
    ``created`` is stamped under the write lock, so ``created`` grows with the id and a search
    over the primary key finds the start of a time range in ~log2(n) point reads.
    """
    bounds = db.row("SELECT min(id), max(id) FROM messages")
    if bounds is None or bounds[0] is None:
        return None
    lo, hi = int(bounds[0]), int(bounds[1])

    def created_from(at: int) -> float:
        row = db.row("SELECT created FROM messages WHERE id >= ? ORDER BY id LIMIT 1", (at,))
        assert row is not None  # ``hi`` exists, and at <= hi
        return float(row[0])

    if created_from(hi) < ts:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if created_from(mid) >= ts:
            hi = mid
        else:
            lo = mid + 1
    return lo


def messages_sent(db: Database, spans: Sequence[TurnSpan]) -> list[SentMessage]:
    """What the spans' agents sent between the earliest start and the latest end, each
    classified by its **recipient** (:func:`~.series.recipient_kind`): the messages they
    committed (joined with the recipient's role) and the questions they asked the operator."""
    if not spans:
        return []
    start = min(s.started for s in spans)
    end = max(s.ended for s in spans)
    agents = sorted({s.agent for s in spans})
    marks = ", ".join("?" for _ in agents)
    sent: list[SentMessage] = []
    first = _first_message_at(db, start - _SLACK)
    if first is not None:
        rows = db.rows(
            "SELECT m.sender, m.kind, m.recipient, a.role, m.created FROM messages AS m "
            "LEFT JOIN agents AS a ON a.name = m.recipient "
            f"WHERE m.id >= ? AND m.sender IN ({marks}) AND m.created >= ? AND m.created <= ?",
            (first, *agents, start, end),
        )
        sent.extend(
            SentMessage(str(s), recipient_kind(str(kind), str(to), role), float(c))
            for s, kind, to, role, c in rows
        )
    asked = db.rows(
        f"SELECT agent, asked FROM questions WHERE agent IN ({marks}) AND asked >= ? "
        "AND asked <= ?",
        (*agents, start, end),
    )
    sent.extend(SentMessage(str(a), "operator", float(at)) for a, at in asked)
    return sent


def read_samples(
    store: Store,
    now: float,
    last_turn: Callable[[str], float | None],
    notes_path: Callable[[str], Path],
) -> tuple[list[AgentSample], HiveSample]:
    """Read one sampling tick: every non-destroyed agent's inbox and notes, the hive's queues."""
    agents = [a for a in store.registry.agents() if a.state is not AgentState.DESTROYED]
    inbox = store.messages.inbox_stats(now=now)
    samples: list[AgentSample] = []
    for agent in agents:
        stats = inbox.get(agent.name)
        last = last_turn(agent.name)
        # An agent that never finished a turn has been waiting since it was registered.
        since = now - (last if last is not None else agent.created)
        samples.append(
            AgentSample(
                agent=agent.name,
                inbox_depth=stats.depth if stats else 0,
                inbox_oldest_age=stats.oldest_age if stats else 0.0,
                since_last_turn=max(0.0, since),
                notes_bytes=_size(notes_path(agent.name)),
            )
        )
    hive = HiveSample(
        approvals_pending=store.approvals.pending_count(),
        approvals_oldest_age=store.approvals.oldest_pending_age(now=now),
        questions_pending=int(
            store.db.value("SELECT count(*) FROM questions WHERE answered IS NULL")
        ),
    )
    return samples, hive


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def scan_for_retention(db: Database, ranges: Iterable[tuple[float, float]]) -> list[StoredRow]:
    """The rows whose ts falls in any of the ``[lo, hi)`` ranges, with their rowids."""
    clauses: list[str] = []
    params: list[float] = []
    for lo, hi in ranges:
        if hi <= lo:
            continue
        if math.isinf(lo):
            clauses.append("ts < ?")
            params.append(hi)
        else:
            clauses.append("(ts >= ? AND ts < ?)")
            params.extend((lo, hi))
    if not clauses:
        return []
    rows = db.rows(
        f"SELECT rowid, agent, ts, key, value FROM stats WHERE {' OR '.join(clauses)}", params
    )
    return [StoredRow(int(r[0]), str(r[1]), float(r[2]), str(r[3]), float(r[4])) for r in rows]


def apply_retention(db: Database, plan: RetentionPlan) -> None:
    """Carry out a plan: drops, then merges, in transactions of at most ~2000 deletes.

    A merge group's delete and insert always share a transaction, so a crash between two
    transactions loses no sum; a half-done run is finished by the next one.
    """
    conn = db.connection
    drop = plan.drop
    for start in range(0, len(drop), _CHUNK):
        chunk = drop[start : start + _CHUNK]
        with db.transaction():
            try:
                conn.executemany("DELETE FROM stats WHERE rowid = ?", [(r,) for r in chunk])
            except apsw.Error as exc:
                raise _fail(db, exc, "drop old stats from") from exc
    batch: list[tuple[tuple[int, ...], Row]] = []
    size = 0
    for group in plan.merges:
        batch.append((group.delete, group.insert))
        size += len(group.delete)
        if size >= _CHUNK:
            _merge(db, batch)
            batch, size = [], 0
    if batch:
        _merge(db, batch)


def _merge(db: Database, batch: Sequence[tuple[tuple[int, ...], Row]]) -> None:
    conn = db.connection
    with db.transaction():
        try:
            conn.executemany(
                "DELETE FROM stats WHERE rowid = ?", [(r,) for ids, _ in batch for r in ids]
            )
            conn.executemany(
                "INSERT INTO stats (agent, ts, key, value) VALUES (?, ?, ?, ?)",
                [row for _, row in batch],
            )
        except apsw.Error as exc:
            raise _fail(db, exc, "downsample stats in") from exc
