"""The stats API's query: validate ``agent``/``since``/``until``/``keys``, answer in uPlot's shape.

``GET /api/stats?agent=alice&since=1767225600&keys=turns,turn.duration_s`` answers::

    {"agent": "alice", "since": 1767225600.0, "until": null,
     "keys": ["turns", "turn.duration_s"],
     "data": [[ts, ...], [turns, ...], [turn.duration_s, ...]]}

``data[0]`` holds the distinct timestamps (seconds, ascending); ``data[i]`` the values of
``keys[i-1]`` aligned on them, ``null`` where that series has no point. Rows of one series that
share a timestamp are merged by the key's rule (sum for event keys, max for gauges). uPlot
takes ``data`` as it is.

With ``window`` (``15m``, ``1h``, ``24h``, ``7d``, or seconds in [60, 7 d]) instead of
``since``, the answer covers the window ending now (or at ``until``) and is **bucketed**: the
rows of each ``step`` seconds (``60`` up to an hour, ``600`` for a day, ``3600`` beyond) merge
into one point at the bucket's start, by the key's rule; the answer carries ``window`` and
``step``, so a chart turns a per-bucket sum into a rate (``turns`` / (step / 60) = turns/min).

A key ending in ``*`` names a whole family (``tool.*``, ``sent.*``, ``turn.outcome.*``...):
it expands to the family's keys that have rows in the range (at most :data:`MAX_KEYS` in all).

The alignment runs inside sqlite (one ``GROUP BY ts`` over the ``(agent, key, ts)`` index), and
so does the JSON encoding of ``data`` (``json_group_array``): the answer costs about what reading
the rows costs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import apsw

from hive_actors.errors import Refused
from hive_actors.store import Store
from hive_actors.store.db import store_error

from . import keys as k

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_KEYS",
    "MAX_WINDOW",
    "MIN_WINDOW",
    "WINDOWS",
    "BadStatsQuery",
    "StatsQuery",
    "answer",
    "answer_json",
    "expand_families",
    "parse_query",
    "query_json_sql",
    "query_sql",
    "run_query",
    "run_query_json",
    "step_for",
]

DEFAULT_WINDOW = 3600.0
"""Without ``since``, the last hour."""
MAX_KEYS = 32
"""The most series one query may ask for."""
WINDOWS = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 604800.0}
"""The named windows the pages offer."""
MIN_WINDOW = 60.0
MAX_WINDOW = 604800.0
"""``window`` bounds, in seconds (retention keeps hourly rows longer, but a chart of more than
a week of hourly points is no longer readable at a glance)."""
_STEPS = (60.0, 300.0, 600.0, 1800.0, 3600.0)
_FAMILY_PREFIXES = (
    k.OUTCOME_PREFIX, k.BUCKET_PREFIX, k.TOOL_PREFIX, k.RECEIVED_PREFIX, k.SENT_PREFIX,
    k.TOKENS_PREFIX, k.MODEL_PREFIX, k.COST_MODEL_PREFIX,
)

KEY_HELP = (
    "known keys: turns, turn.duration_s, turn.tool_calls, turn.permission_denials, "
    "turn.outcome.<ok|compact-retry|failure|timeout|cancelled>, turn.duration_le.<bound>, "
    "tool.<name>, received[.<kind>], sent[.<kind>] (kind: peer|operator|manager|system), "
    "tokens.<input|output|cache_read|cache_creation>[@<model>], cost_usd[@<model>], "
    "model@<model>, a family as <prefix>* (tool.*, sent.*...), inbox.depth, inbox.depth_max, "
    "inbox.oldest_age_s, since_last_turn_s, notes.bytes; for agent _hive: approvals.pending, "
    "approvals.oldest_age_s, questions.pending"
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
    window: float | None = None
    """The asked window in seconds (None: ``since`` was given, or the default hour)."""
    step: float | None = None
    """Bucket width in seconds (None: every timestamp is a point of its own)."""


def step_for(window: float) -> float:
    """The bucket width of a ``window``: about 240 points at most, never under a minute."""
    for step in _STEPS:
        if window / step <= 240:
            return step
    return _STEPS[-1]


def _window(raw: str) -> float:
    named = WINDOWS.get(raw.strip().lower())
    if named is not None:
        return named
    choices = ", ".join(WINDOWS)
    try:
        value = float(raw)
    except ValueError:
        raise BadStatsQuery(
            f"window={raw!r} is not a window: use {choices}, or a number of seconds from "
            f"{MIN_WINDOW:g} to {MAX_WINDOW:g}"
        ) from None
    if not math.isfinite(value) or not MIN_WINDOW <= value <= MAX_WINDOW:
        raise BadStatsQuery(
            f"window={raw!r} is out of range: use {choices}, or a number of seconds from "
            f"{MIN_WINDOW:g} (a minute) to {MAX_WINDOW:g} (a week)"
        )
    return value


def _is_family(key: str) -> bool:
    return key.endswith("*") and key[:-1] in _FAMILY_PREFIXES


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
    unknown = sorted(set(params) - {"agent", "since", "until", "window", "keys"})
    if unknown:
        raise BadStatsQuery(
            f"unknown parameter(s) {', '.join(unknown)}: use agent, since, until, window and keys"
        )
    agent = params.get("agent", "")
    if not agent:
        raise BadStatsQuery(f"agent is required: name an agent, or {k.HIVE_AGENT} for the hive")
    if agent != k.HIVE_AGENT and not known_agent(agent):
        raise BadStatsQuery(
            f"unknown agent {agent!r}: name a registered agent, or {k.HIVE_AGENT} for the hive"
        )
    until = _time("until", params["until"]) if "until" in params else None
    window: float | None = None
    step: float | None = None
    if "window" in params:
        if "since" in params:
            raise BadStatsQuery("give since or window, not both: window ends now (or at until)")
        window = _window(params["window"])
        step = step_for(window)
        since = max(0.0, (now if until is None else until) - window)
    elif "since" in params:
        since = _time("since", params["since"])
    else:
        since = max(0.0, now - DEFAULT_WINDOW)
    if until is not None and until < since:
        raise BadStatsQuery(f"until={until:g} is before since={since:g}: swap them")
    raw_keys = params.get("keys", "")
    wanted = [key.strip() for key in raw_keys.split(",") if key.strip()]
    if not wanted:
        raise BadStatsQuery(f"keys is required: a comma-separated list; {KEY_HELP}")
    bad = [key for key in wanted if not (k.is_known_key(key) or _is_family(key))]
    if bad:
        raise BadStatsQuery(f"unknown key(s) {', '.join(repr(b) for b in bad)}; {KEY_HELP}")
    unique = tuple(dict.fromkeys(wanted))
    if len(unique) > MAX_KEYS:
        raise BadStatsQuery(
            f"{len(unique)} keys asked, at most {MAX_KEYS} per query: split the query"
        )
    return StatsQuery(
        agent=agent, since=since, until=until, keys=unique, window=window, step=step
    )


def expand_families(conn: apsw.Connection, query: StatsQuery) -> StatsQuery:
    """``query`` with each ``<prefix>*`` replaced by the family's keys that have rows in its
    range (sorted; the first :data:`MAX_KEYS` keys in all)."""
    if not any(_is_family(key) for key in query.keys):
        return query
    keys: list[str] = []
    for key in query.keys:
        if not _is_family(key):
            keys.append(key)
            continue
        prefix = key[:-1]
        sql = "SELECT DISTINCT key FROM stats WHERE agent = ? AND key GLOB ? AND ts >= ?"
        params: list[Any] = [query.agent, prefix.replace("[", "[[]") + "*", query.since]
        if query.until is not None:
            sql += " AND ts <= ?"
            params.append(query.until)
        keys.extend(sorted(str(row[0]) for row in conn.execute(sql, params)))
    unique = tuple(key for key in dict.fromkeys(keys) if k.is_known_key(key))[:MAX_KEYS]
    return replace(query, keys=unique)


def _aligned(query: StatsQuery) -> tuple[str, list[Any]]:
    """The aligned select: one row per distinct ts (or bucket), one column ``c<i>`` per key.

    One ``key IN (...)`` range scan of the ``(agent, key, ts)`` index; each column's aggregate
    takes only its key's rows (``FILTER``: the other rows skip the aggregate's step).
    """
    columns = ", ".join(
        f"{k.aggregation(key)}(value) FILTER (WHERE key = ?) AS c{i}"
        for i, key in enumerate(query.keys)
    )
    marks = ", ".join("?" for _ in query.keys)
    if query.step is None:
        head, tail = "ts", "ts"
    else:
        # A bucket's start, in whole steps (ts >= 0, so the cast floors).
        step = repr(float(query.step))
        head, tail = f"CAST(ts / {step} AS INTEGER) * {step} AS ts", "1"
    sql = (
        f"SELECT {head}, {columns} FROM stats WHERE agent = ? AND key IN ({marks}) AND ts >= ?"
        + (" AND ts <= ?" if query.until is not None else "")
        + f" GROUP BY {tail}"
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


def _head(query: StatsQuery, thresholds: Mapping[str, float] | None) -> dict[str, Any]:
    head: dict[str, Any] = {
        "agent": query.agent,
        "since": query.since,
        "until": query.until,
        "window": query.window,
        "step": query.step,
        "keys": list(query.keys),
    }
    marks = {key: v for key, v in (thresholds or {}).items() if key in query.keys}
    if marks:
        head["thresholds"] = marks
    return head


def run_query(
    conn: apsw.Connection, query: StatsQuery, thresholds: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Answer ``query`` from the store's connection (apsw errors propagate to the caller).

    ``thresholds``: lines a chart draws (``notes.bytes``: the compaction threshold), added to
    the answer for the keys it asks for."""
    query = expand_families(conn, query)
    head = _head(query, thresholds)
    if not query.keys:
        return {**head, "data": [[]]}
    sql, params = query_sql(query)
    rows = conn.execute(sql, params).fetchall()
    # zip(*rows) transposes in C: rows of (ts, v1, v2...) become the columns uPlot wants.
    width = len(query.keys) + 1
    data: list[Any] = list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]
    return {**head, "data": data}


def run_query_json(
    conn: apsw.Connection, query: StatsQuery, thresholds: Mapping[str, float] | None = None
) -> str:
    """Answer ``query`` as the JSON text of :func:`run_query`'s object (sqlite writes ``data``)."""
    query = expand_families(conn, query)
    head = json.dumps(_head(query, thresholds), separators=(",", ":"))
    if not query.keys:
        return f'{head[:-1]},"data":[[]]}}'
    sql, params = query_json_sql(query)
    data = conn.execute(sql, params).get
    return f'{head[:-1]},"data":{data}}}'


def answer_json(
    store: Store, params: Mapping[str, str], now: float,
    thresholds: Mapping[str, float] | None = None,
) -> str:
    """Like :func:`answer`, as JSON text ready to send (the API handler's core)."""
    query = parse_query(
        params, now=now, known_agent=lambda name: store.registry.find(name) is not None
    )
    try:
        return run_query_json(store.db.connection, query, thresholds)
    except apsw.Error as exc:
        raise store_error(exc, store.path, "read stats from", store.db.busy_timeout_ms) from exc


def answer(
    store: Store, params: Mapping[str, str], now: float,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Validate ``params`` against ``store``'s registry and answer them (the API's handler core).

    Raises :class:`BadStatsQuery` (400) or StoreError (the store cannot be read).
    """
    query = parse_query(
        params, now=now, known_agent=lambda name: store.registry.find(name) is not None
    )
    try:
        return run_query(store.db.connection, query, thresholds)
    except apsw.Error as exc:
        raise store_error(exc, store.path, "read stats from", store.db.busy_timeout_ms) from exc
