"""The stats API's query: validate ``agent``/``since``/``until``/``keys``, answer in uPlot's shape.

``GET /api/stats?agent=alice&since=1767225600&keys=turns,turn.duration_s`` answers::

    {"agent": "alice", "since": 1767225600.0, "until": null,
     "keys": ["turns", "turn.duration_s"],
     "data": [[ts, ...], [turns, ...], [turn.duration_s, ...]]}

``data[0]`` holds the distinct timestamps (seconds, ascending); ``data[i]`` the values of
``keys[i-1]`` aligned on them, ``null`` where that series has no point. Rows of one series that
share a timestamp are merged by the key's rule (sum for event keys, max for gauges). uPlot
takes ``data`` as it is.

The alignment runs inside sqlite (one ``GROUP BY ts`` over the ``(agent, key, ts)`` index), and
so does the JSON encoding of ``data`` (``json_group_array``): the answer costs about what reading
the rows costs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import apsw

from hive_actors.errors import Refused
from hive_actors.store import Store
from hive_actors.store.db import store_error

from . import keys as k

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_KEYS",
    "BadStatsQuery",
    "StatsQuery",
    "answer",
    "answer_json",
    "parse_query",
    "query_json_sql",
    "query_sql",
    "run_query",
    "run_query_json",
]

DEFAULT_WINDOW = 3600.0
"""Without ``since``, the last hour."""
MAX_KEYS = 32
"""The most series one query may ask for."""

KEY_HELP = (
    "known keys: turns, turn.duration_s, turn.tool_calls, turn.permission_denials, "
    "turn.outcome.<ok|compact-retry|failure|timeout|cancelled>, turn.duration_le.<bound>, "
    "tool.<name>, received[.<kind>], sent[.<kind>] (kind: peer|operator|manager|system), "
    "tokens.<input|output|cache_read|cache_creation>[@<model>], cost_usd[@<model>], "
    "model@<model>, inbox.depth, inbox.depth_max, inbox.oldest_age_s, since_last_turn_s, "
    "notes.bytes; for agent _hive: approvals.pending, approvals.oldest_age_s, questions.pending"
)


class BadStatsQuery(Refused):
    """A stats query that cannot be answered as asked (the API answers 400 with the reason)."""


@dataclass(frozen=True)
class StatsQuery:
    """A validated query."""

    agent: str
    since: float
    until: float | None
    keys: tuple[str, ...]


def _time(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise BadStatsQuery(
            f"{name}={raw!r} is not a number: give seconds since the epoch, e.g. "
            f"{name}=1767225600 (fractions allowed)"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise BadStatsQuery(
            f"{name}={raw!r} is out of range: give a finite, non-negative number of seconds "
            "since the epoch"
        )
    return value


def parse_query(
    params: Mapping[str, str], *, now: float, known_agent: Callable[[str], bool]
) -> StatsQuery:
    """Validate the query string's parameters; raise :class:`BadStatsQuery` saying what to fix.

    ``known_agent`` tells whether an agent name is registered (the hive-wide series live under
    :data:`keys.HIVE_AGENT` and are always known).
    """
    unknown = sorted(set(params) - {"agent", "since", "until", "keys"})
    if unknown:
        raise BadStatsQuery(
            f"unknown parameter(s) {', '.join(unknown)}: use agent, since, until and keys"
        )
    agent = params.get("agent", "")
    if not agent:
        raise BadStatsQuery(f"agent is required: name an agent, or {k.HIVE_AGENT} for the hive")
    if agent != k.HIVE_AGENT and not known_agent(agent):
        raise BadStatsQuery(
            f"unknown agent {agent!r}: name a registered agent, or {k.HIVE_AGENT} for the hive"
        )
    since = _time("since", params["since"]) if "since" in params else max(0.0, now - DEFAULT_WINDOW)
    until = _time("until", params["until"]) if "until" in params else None
    if until is not None and until < since:
        raise BadStatsQuery(f"until={until:g} is before since={since:g}: swap them")
    raw_keys = params.get("keys", "")
    wanted = [key.strip() for key in raw_keys.split(",") if key.strip()]
    if not wanted:
        raise BadStatsQuery(f"keys is required: a comma-separated list; {KEY_HELP}")
    bad = [key for key in wanted if not k.is_known_key(key)]
    if bad:
        raise BadStatsQuery(f"unknown key(s) {', '.join(repr(b) for b in bad)}; {KEY_HELP}")
    unique = tuple(dict.fromkeys(wanted))
    if len(unique) > MAX_KEYS:
        raise BadStatsQuery(
            f"{len(unique)} keys asked, at most {MAX_KEYS} per query: split the query"
        )
    return StatsQuery(agent=agent, since=since, until=until, keys=unique)


def _aligned(query: StatsQuery) -> tuple[str, list[Any]]:
    """The aligned select: one row per distinct ts, one column ``c<i>`` per key."""
    columns = ", ".join(
        f"{k.aggregation(key)}(CASE WHEN key = ? THEN value END) AS c{i}"
        for i, key in enumerate(query.keys)
    )
    marks = ", ".join("?" for _ in query.keys)
    sql = (
        f"SELECT ts, {columns} FROM stats WHERE agent = ? AND key IN ({marks}) AND ts >= ?"
        + (" AND ts <= ?" if query.until is not None else "")
        + " GROUP BY ts"
    )
    params: list[Any] = [*query.keys, query.agent, *query.keys, query.since]
    if query.until is not None:
        params.append(query.until)
    return sql, params


def query_sql(query: StatsQuery) -> tuple[str, list[Any]]:
    """The aligned query, ordered by ts (rows of ts, value per key)."""
    sql, params = _aligned(query)
    return sql + " ORDER BY ts", params


def query_json_sql(query: StatsQuery) -> tuple[str, list[Any]]:
    """The aligned query wrapped so that sqlite itself writes ``data`` as JSON text.

    sqlite's JSON writer prints the shortest text that reads back as the same double, and
    ``null`` for a missing point, so the answer never passes through Python floats.
    """
    inner, params = _aligned(query)
    # The arrays follow the subquery's ORDER BY: sqlite feeds an aggregate the rows of an
    # ordered subquery in that order (the tests insert out of order and check). An ORDER BY
    # inside each json_group_array would say so explicitly but sorts once per array: +50 %.
    arrays = ", ".join(
        ["json_group_array(ts)"] + [f"json_group_array(c{i})" for i in range(len(query.keys))]
    )
    return f"SELECT json_array({arrays}) FROM ({inner} ORDER BY ts)", params


def run_query(conn: apsw.Connection, query: StatsQuery) -> dict[str, Any]:
    """Answer ``query`` from the store's connection (apsw errors propagate to the caller)."""
    sql, params = query_sql(query)
    rows = conn.execute(sql, params).fetchall()
    # zip(*rows) transposes in C: rows of (ts, v1, v2...) become the columns uPlot wants.
    width = len(query.keys) + 1
    data: list[Any] = list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]
    return {
        "agent": query.agent,
        "since": query.since,
        "until": query.until,
        "keys": list(query.keys),
        "data": data,
    }


def run_query_json(conn: apsw.Connection, query: StatsQuery) -> str:
    """Answer ``query`` as the JSON text of :func:`run_query`'s object (sqlite writes ``data``)."""
    sql, params = query_json_sql(query)
    data = conn.execute(sql, params).get
    head = json.dumps(
        {"agent": query.agent, "since": query.since, "until": query.until,
         "keys": list(query.keys)},
        separators=(",", ":"),
    )
    return f'{head[:-1]},"data":{data}}}'


def answer_json(store: Store, params: Mapping[str, str], now: float) -> str:
    """Like :func:`answer`, as JSON text ready to send (the API handler's core)."""
    query = parse_query(
        params, now=now, known_agent=lambda name: store.registry.find(name) is not None
    )
    try:
        return run_query_json(store.db.connection, query)
    except apsw.Error as exc:
        raise store_error(exc, store.path, "read stats from", store.db.busy_timeout_ms) from exc


def answer(store: Store, params: Mapping[str, str], now: float) -> dict[str, Any]:
    """Validate ``params`` against ``store``'s registry and answer them (the API's handler core).

    Raises :class:`BadStatsQuery` (400) or StoreError (the store cannot be read).
    """
    query = parse_query(
        params, now=now, known_agent=lambda name: store.registry.find(name) is not None
    )
    try:
        return run_query(store.db.connection, query)
    except apsw.Error as exc:
        raise store_error(exc, store.path, "read stats from", store.db.busy_timeout_ms) from exc
