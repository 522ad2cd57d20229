"""Pure telemetry logic: keys, turn → rows, sent-message attribution, sampling, query
validation, and the retention plan (examples and Hypothesis properties)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hive_actors.errors import ConfigError
from hive_actors.harness.events import Tokens
from hive_actors.stats import keys as k
from hive_actors.stats.query import BadStatsQuery, StatsQuery, parse_query, query_sql
from hive_actors.stats.retention import (
    HOUR,
    MINUTE,
    Cutoffs,
    RetentionPolicy,
    StoredRow,
    cutoffs,
    plan_retention,
    scan_ranges,
)
from hive_actors.stats.series import (
    AgentSample,
    GaugeFilter,
    HiveSample,
    Row,
    SentMessage,
    TurnSpan,
    WindowMax,
    count_sent,
    outcome_of,
    recipient_kind,
    sample_rows,
    turn_rows,
)
from tests.support.stats import T0, turn_end

# -- keys -----------------------------------------------------------------------------------------


def test_every_key_a_turn_writes_is_known_and_sums() -> None:
    end = turn_end(tools={"Bash": 2, "mcp__hive__send": 1, "weird tool!": 1}, denials=1)
    rows = turn_rows("alice", T0, T0 + 3, end, {"peer": 1}, None, {"manager": 2})
    for row in rows:
        assert k.is_known_key(row.key), row.key
        assert k.aggregation(row.key) == "sum"
    assert k.is_known_key("tool.weird_tool_")


@pytest.mark.parametrize(
    "key",
    ["turns", "inbox.depth", "turn.outcome.ok", "turn.duration_le.+Inf", "turn.duration_le.2.5",
     "tool.Read", "tokens.input", "tokens.output@claude-haiku-4-5", "cost_usd@x", "model@m",
     "received.peer", "sent.system", "approvals.pending"],
)
def test_known_keys(key: str) -> None:
    assert k.is_known_key(key)


@pytest.mark.parametrize(
    "key",
    ["", "turn", "turn.outcome.exploded", "turn.duration_le.7.0", "tool.", "tokens.bogus",
     "received.friend", "inbox.depth; DROP TABLE stats", "tool.a b", "cost", "TURNS"],
)
def test_unknown_keys(key: str) -> None:
    assert not k.is_known_key(key)


def test_gauges_take_the_max() -> None:
    assert all(k.aggregation(key) == "max" for key in k.GAUGE_KEYS)


@pytest.mark.parametrize(
    ("duration", "bound"),
    [(0.0, "1.0"), (1.0, "1.0"), (1.01, "2.5"), (59.9, "60.0"), (3600.0, "3600.0"),
     (3600.1, "+Inf"), (math.nan, "+Inf")],
)
def test_bucket_key_is_the_smallest_bound_holding_the_duration(duration: float, bound: str) -> None:
    assert k.bucket_key(duration) == k.BUCKET_PREFIX + bound


@pytest.mark.parametrize(
    ("tool", "label"),
    [("Bash", "Bash"), ("Read", "Read"), ("mcp__hive__send", "mcp__hive__send"),
     ("mcp__github__create_issue", "mcp__github"), ("mcp__", "other"), ("Frobnicate", "other"),
     ("mcp__hive__", "mcp__hive")],
)
def test_fold_tool_keeps_labels_low_cardinality(tool: str, label: str) -> None:
    assert k.fold_tool(tool) == label


def test_clean_label() -> None:
    assert k.clean_label("claude-sonnet-4-5") == "claude-sonnet-4-5"
    assert k.clean_label("<synthetic>") == "_synthetic_"
    assert k.clean_label(None) == "unknown"
    assert k.clean_label("") == "unknown"
    assert len(k.clean_label("x" * 500)) == 100


# -- turn → rows ---------------------------------------------------------------------------------


def as_dict(rows: list[Row]) -> dict[str, float]:
    found: dict[str, float] = {}
    for row in rows:
        assert row.key not in found, f"duplicate key {row.key}"
        found[row.key] = row.value
    return found


def test_turn_rows_carry_every_series_at_the_end_time() -> None:
    end = turn_end(
        duration_s=42.5,
        tools={"Bash": 3, "Read": 1},
        tokens=Tokens(input=1000, output=200, cache_read=300, cache_creation=40),
        cost_usd=0.25,
        model="claude-haiku-4-5",
        denials=2,
    )
    rows = turn_rows("bob", T0, T0 + 50, end, {"peer": 2, "operator": 1}, None, {"peer": 4})
    assert {row.ts for row in rows} == {T0 + 50} and {row.agent for row in rows} == {"bob"}
    got = as_dict(rows)
    assert got["turns"] == 1 and got["turn.outcome.ok"] == 1
    assert got["turn.duration_s"] == 42.5 and got["turn.duration_le.60.0"] == 1
    assert got["turn.tool_calls"] == 4 and got["tool.Bash"] == 3 and got["tool.Read"] == 1
    assert got["turn.permission_denials"] == 2
    assert got["received"] == 3 and got["received.peer"] == 2 and got["received.operator"] == 1
    assert got["received.system"] == 0 and got["received.manager"] == 0
    assert got["sent"] == 4 and got["sent.peer"] == 4 and got["sent.manager"] == 0
    assert got["tokens.input"] == 1000 and got["tokens.input@claude-haiku-4-5"] == 1000
    assert got["tokens.cache_read@claude-haiku-4-5"] == 300
    assert got["cost_usd"] == 0.25 and got["cost_usd@claude-haiku-4-5"] == 0.25
    assert got["model@claude-haiku-4-5"] == 1


def test_a_turn_without_turnend_is_a_failure_timed_by_its_span() -> None:
    got = as_dict(turn_rows("bob", T0, T0 + 7, None, None, "worker died", {}))
    assert got["turn.outcome.failure"] == 1 and got["turn.duration_s"] == 7
    assert got["turn.tool_calls"] == 0
    assert not any(key.startswith(("tokens.", "cost_usd", "model@")) for key in got)


@pytest.mark.parametrize(
    ("outcome", "error", "counted"),
    [("ok", None, "ok"), ("compact-retry", None, "compact-retry"), ("error", None, "failure"),
     ("timeout", None, "timeout"), ("cancelled", None, "cancelled"),
     ("ok", "required MCP server(s) failed to start: hive", "failure")],
)
def test_outcomes(outcome: str, error: str | None, counted: str) -> None:
    assert outcome_of(turn_end(outcome=outcome), error) == counted
    assert counted in k.OUTCOMES


def test_count_sent_attributes_messages_to_the_turn_that_sent_them() -> None:
    turns = [TurnSpan("alice", 100, 110), TurnSpan("bob", 105, 120), TurnSpan("alice", 130, 140)]
    messages = [
        SentMessage("alice", "peer", 100),  # start edge: inside
        SentMessage("alice", "peer", 110),  # end edge: inside
        SentMessage("alice", "peer", 111),  # between alice's turns: nobody's
        SentMessage("bob", "manager", 106),
        SentMessage("alice", "peer", 135),
        SentMessage("carol", "peer", 105),  # not a turn in this batch
    ]
    assert count_sent(turns, messages) == [
        Counter(peer=2), Counter(manager=1), Counter(peer=1)
    ]
    assert count_sent([], messages) == []


# -- sampling ------------------------------------------------------------------------------------


def test_window_max_covers_exactly_the_trailing_window() -> None:
    window = WindowMax(60)
    assert window.add("a", 0, 5) == 5
    assert window.add("a", 30, 1) == 5
    assert window.add("a", 59, 2) == 5
    assert window.add("a", 60, 0) == 2  # the sample at 0 is 60 s old: out
    window.retain([])
    assert window.add("a", 61, 1) == 1


def test_gauge_filter_drops_repeats_until_the_heartbeat() -> None:
    gauges = GaugeFilter(heartbeat=300)
    assert gauges.keep(Row("a", 0, "inbox.depth", 0))
    assert not gauges.keep(Row("a", 15, "inbox.depth", 0))
    assert gauges.keep(Row("b", 15, "inbox.depth", 0))  # another series
    assert gauges.keep(Row("a", 30, "inbox.depth", 1))  # changed
    assert not gauges.keep(Row("a", 329, "inbox.depth", 1))
    assert gauges.keep(Row("a", 330, "inbox.depth", 1))  # heartbeat
    gauges.forget()
    assert gauges.keep(Row("a", 331, "inbox.depth", 1))


def test_gauge_filter_writes_clock_driven_ages_once_per_heartbeat_unless_they_fall() -> None:
    gauges = GaugeFilter(heartbeat=300)
    assert gauges.keep(Row("a", 0, "since_last_turn_s", 10))
    assert not gauges.keep(Row("a", 15, "since_last_turn_s", 25))  # grew with the clock
    assert gauges.keep(Row("a", 30, "since_last_turn_s", 2))  # fell: a turn ended
    assert not gauges.keep(Row("a", 329, "since_last_turn_s", 301))
    assert gauges.keep(Row("a", 330, "since_last_turn_s", 302))  # heartbeat
    assert gauges.keep(Row("a", 0, "inbox.depth", 1))
    assert gauges.keep(Row("a", 15, "inbox.depth", 2))  # not an age: growth is a change


def test_sample_rows() -> None:
    window, gauges = WindowMax(300), GaugeFilter(300)
    agents = [
        AgentSample("alice", 3, 12.5, 40.0, 2048),
        AgentSample("bob", 0, 0.0, None, None),
    ]
    rows = sample_rows(T0, agents, HiveSample(2, 99.0, 1), window, gauges)
    got = {(r.agent, r.key): r.value for r in rows}
    assert got == {
        ("alice", "inbox.depth"): 3, ("alice", "inbox.depth_max"): 3,
        ("alice", "inbox.oldest_age_s"): 12.5, ("alice", "since_last_turn_s"): 40.0,
        ("alice", "notes.bytes"): 2048,
        ("bob", "inbox.depth"): 0, ("bob", "inbox.depth_max"): 0, ("bob", "inbox.oldest_age_s"): 0,
        ("_hive", "approvals.pending"): 2, ("_hive", "approvals.oldest_age_s"): 99.0,
        ("_hive", "questions.pending"): 1,
    }
    assert {r.ts for r in rows} == {T0}
    later = sample_rows(T0 + 15, [AgentSample("alice", 1, 1.0, 55.0, 2048)], None, window, gauges)
    fresh = {r.key: r.value for r in later}
    # depth fell, its window max did not (so it is not written again), nor did the notes size
    assert fresh["inbox.depth"] == 1
    assert "inbox.depth_max" not in fresh and "notes.bytes" not in fresh
    later = sample_rows(T0 + 300, [AgentSample("alice", 1, 1.0, 55.0, 2048)], None, window, gauges)
    fresh = {r.key: r.value for r in later}
    assert fresh["inbox.depth_max"] == 1  # the sample of depth 3 left the window


# -- query validation ----------------------------------------------------------------------------


def parse(**params: str) -> StatsQuery:
    return parse_query(params, now=T0, known_agent=lambda name: name in {"alice", "bob"})


def test_parse_query_defaults_to_the_last_hour_and_dedups_keys() -> None:
    q = parse(agent="alice", keys="turns, inbox.depth,turns")
    assert q == StatsQuery("alice", T0 - 3600, None, ("turns", "inbox.depth"))
    assert parse(agent="_hive", since="12.5", until="20", keys="approvals.pending").since == 12.5


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"keys": "turns"}, "agent is required"),
        ({"agent": "mallory", "keys": "turns"}, "unknown agent 'mallory'"),
        ({"agent": "alice", "since": "yesterday", "keys": "turns"}, "since='yesterday' is not"),
        ({"agent": "alice", "since": "nan", "keys": "turns"}, "out of range"),
        ({"agent": "alice", "since": "-5", "keys": "turns"}, "out of range"),
        ({"agent": "alice", "since": "inf", "keys": "turns"}, "out of range"),
        ({"agent": "alice", "since": "10", "until": "5", "keys": "turns"}, "before since"),
        ({"agent": "alice"}, "keys is required"),
        ({"agent": "alice", "keys": "turns,bogus"}, "unknown key(s) 'bogus'"),
        ({"agent": "alice", "keys": ",".join(f"tool.t{i}" for i in range(40))}, "at most 32"),
        ({"agent": "alice", "keys": "turns", "limit": "5"}, "unknown parameter(s) limit"),
        ({"agent": "alice", "window": "2y", "keys": "turns"}, "window='2y' is not a window"),
        ({"agent": "alice", "window": "30", "keys": "turns"}, "window='30' is out of range"),
        ({"agent": "alice", "window": "1e9", "keys": "turns"}, "to 604800 (a week)"),
        ({"agent": "alice", "window": "nan", "keys": "turns"}, "out of range"),
        ({"agent": "alice", "window": "1h", "since": "5", "keys": "turns"}, "not both"),
        ({"agent": "alice", "keys": "bogus.*"}, "unknown key(s) 'bogus.*'"),
    ],
)
def test_bad_queries_say_what_to_fix(params: dict[str, str], fragment: str) -> None:
    with pytest.raises(BadStatsQuery) as info:
        parse(**params)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("window", "seconds", "step"),
    [("15m", 900, 60), ("1h", 3600, 60), ("24h", 86400, 600), ("7d", 604800, 3600),
     ("7200", 7200, 60), ("600", 600, 60)],
)
def test_a_window_ends_now_and_buckets_by_its_step(
    window: str, seconds: float, step: float
) -> None:
    q = parse(agent="alice", window=window, keys="turns,tool.*")
    assert (q.since, q.until, q.window, q.step) == (T0 - seconds, None, seconds, step)
    assert q.keys == ("turns", "tool.*")
    assert seconds / step <= 240
    ending = parse(agent="alice", window=window, until=str(T0 - 100), keys="turns")
    assert ending.since == T0 - 100 - seconds


def test_bucketed_sql_groups_by_the_step() -> None:
    sql, _ = query_sql(StatsQuery("alice", 5.0, None, ("turns",), window=3600.0, step=60.0))
    assert sql.startswith("SELECT CAST(ts / 60.0 AS INTEGER) * 60.0 AS ts,")
    assert sql.endswith("GROUP BY 1 ORDER BY ts")


@pytest.mark.parametrize(
    ("kind", "recipient", "role", "expected"),
    [
        ("peer", "bob", "agent", "peer"),
        ("manager", "bob", "agent", "peer"),  # the manager writing to an agent: a peer
        ("peer", "boss", "manager", "manager"),  # an agent reporting to the manager
        ("system", "boss", "manager", "system"),  # a notice or crash report
        ("peer", "operator", None, "operator"),
        ("peer", "gone", None, "peer"),
    ],
)
def test_recipient_kind(kind: str, recipient: str, role: str | None, expected: str) -> None:
    assert recipient_kind(kind, recipient, role) == expected
    assert expected in k.MESSAGE_KINDS


def test_query_sql_aggregates_each_key_by_its_rule() -> None:
    sql, params = query_sql(StatsQuery("alice", 5.0, 9.0, ("turns", "inbox.depth")))
    assert "sum(value) FILTER (WHERE key = ?) AS c0" in sql
    assert "max(value) FILTER (WHERE key = ?) AS c1" in sql
    assert sql.endswith("AND ts <= ? GROUP BY ts ORDER BY ts")
    assert params == ["turns", "inbox.depth", "alice", "turns", "inbox.depth", 5.0, 9.0]


# -- retention -----------------------------------------------------------------------------------


POLICY = RetentionPolicy(raw=2 * HOUR, minutes=6 * HOUR, hours=24 * HOUR)
NOW = 1_767_225_600.0 + 17 * HOUR + 23 * MINUTE + 7  # not aligned to anything


def test_policy_is_validated() -> None:
    with pytest.raises(ConfigError, match="must grow"):
        RetentionPolicy(raw=10, minutes=5, hours=20)
    with pytest.raises(ConfigError, match="positive"):
        RetentionPolicy(raw=0)


def test_cutoffs_align_to_their_resolution() -> None:
    cut = cutoffs(NOW, POLICY)
    assert cut.raw == math.floor((NOW - 2 * HOUR) / 60) * 60
    assert cut.minute % 3600 == 0 and cut.drop % 3600 == 0
    assert cut.drop <= cut.minute <= cut.raw <= NOW - 2 * HOUR


def test_plan_merges_drops_and_leaves_recent_rows_alone() -> None:
    cut = cutoffs(NOW, POLICY)
    rows = [
        StoredRow(1, "a", cut.raw + 1, "turns", 1),  # recent: untouched
        StoredRow(2, "a", cut.raw - 50, "turns", 1),  # raw → minute
        StoredRow(3, "a", cut.raw - 40, "turns", 1),
        StoredRow(4, "a", cut.raw - 45, "inbox.depth", 3),
        StoredRow(5, "a", cut.raw - 44, "inbox.depth", 7),
        StoredRow(6, "a", cut.minute - 10, "turns", 2),  # minute → hour
        StoredRow(7, "a", cut.minute - 1800, "turns", 3),
        StoredRow(8, "a", cut.drop - 1, "turns", 9),  # past the horizon
        StoredRow(9, "a", cut.minute - HOUR, "turns", 4),  # already an hour aggregate
    ]
    plan = plan_retention(rows, cut)
    assert plan.drop == (8,)
    merged = {g.insert: g.delete for g in plan.merges}
    minute = math.floor((cut.raw - 50) / 60) * 60
    assert merged[Row("a", minute, "turns", 2.0)] == (2, 3)
    assert merged[Row("a", math.floor((cut.raw - 45) / 60) * 60, "inbox.depth", 7.0)] == (4, 5)
    assert merged[Row("a", cut.minute - HOUR, "turns", 9.0)] == (6, 7, 9)
    assert len(plan.merges) == 3 and plan.merged_rows == 7


def test_scan_ranges_after_a_run_cover_only_what_crossed_a_cut() -> None:
    first = cutoffs(NOW, POLICY)
    assert scan_ranges(first, None) == [(-math.inf, first.raw)]
    later = cutoffs(NOW + 2 * HOUR, POLICY)
    ranges = scan_ranges(later, first)
    assert (-math.inf, later.drop) in ranges
    assert (first.minute, later.minute) in ranges and (first.raw, later.raw) in ranges
    same = scan_ranges(first, first)
    assert same == [(-math.inf, first.drop)]


# A property test: retention keeps every event total and gauge peak of the rows it keeps,
# never touches recent rows, and a second run changes nothing.

KEYS = ["turns", "tool.Bash", "inbox.depth", "notes.bytes"]


@st.composite
def tables(draw: Any) -> list[StoredRow]:
    count = draw(st.integers(0, 60))
    rows = []
    for rowid in range(1, count + 1):
        age = draw(st.floats(0, 30 * HOUR, allow_nan=False))
        key = draw(st.sampled_from(KEYS))
        value = float(draw(st.integers(0, 50)))
        rows.append(StoredRow(rowid, draw(st.sampled_from("ab")), NOW - age, key, value))
    return rows


def apply(rows: list[StoredRow], cut: Cutoffs) -> list[StoredRow]:
    plan = plan_retention(rows, cut)
    gone = set(plan.drop) | {r for g in plan.merges for r in g.delete}
    kept = [r for r in rows if r.rowid not in gone]
    next_id = max((r.rowid for r in rows), default=0) + 1
    for offset, group in enumerate(plan.merges):
        kept.append(StoredRow(next_id + offset, *group.insert))
    return kept


@settings(max_examples=200, deadline=None)
@given(tables())
def test_retention_preserves_sums_and_peaks_and_is_idempotent(rows: list[StoredRow]) -> None:
    cut = cutoffs(NOW, POLICY)
    after = apply(rows, cut)

    def totals(table: list[StoredRow], pick: Any) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for r in table:
            if r.ts >= cut.drop:
                series = (r.agent, r.key)
                if k.aggregation(r.key) == "sum":
                    out[series] = out.get(series, 0.0) + r.value
                else:
                    out[series] = max(out.get(series, -1.0), r.value)
        return out

    assert totals(after, None) == totals(rows, None)
    assert sorted(r for r in after if r.ts >= cut.raw) == sorted(r for r in rows if r.ts >= cut.raw)
    assert all(r.ts >= cut.drop for r in after)
    for r in after:
        if r.ts < cut.minute:
            assert r.ts % HOUR == 0
        elif r.ts < cut.raw:
            assert r.ts % MINUTE == 0
    again = plan_retention(after, cut)
    assert again.empty
