"""The telemetry over real HTTP: ``GET /api/stats`` and ``GET /metrics`` served by uvicorn on
127.0.0.1 (port 0) from the Starlette routes, the separate metrics port, and ``promtool check
metrics`` on a live scrape (when promtool — Debian package ``prometheus`` — is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from hive_actors.protocol import TurnRecord
from hive_actors.stats import FlushStats, SampleNow, serve_metrics
from hive_actors.stats.exposition import encode_text
from hive_actors.stats.query import answer, answer_json
from hive_actors.store import AgentState, ApprovalKind, MessageKind
from hive_actors.store.events import EventKind
from hive_actors.supervisors import SupervisorClient
from tests.support.mcp import serve
from tests.support.stats import (
    T0,
    Crash,
    Hold,
    Noop,
    TelemetryRig,
    samples,
    turn_end,
    value,
)
from tests.support.timeout import TIMEOUT


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[TelemetryRig]:
    r = TelemetryRig(tmp_path)
    yield r
    r.close()


@pytest.fixture
def http(rig: TelemetryRig) -> Iterator[httpx.Client]:
    with serve(rig.app(), TIMEOUT) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        yield client


def turn(agent: str, ended: float, duration: float, **kw: Any) -> TurnRecord:
    return TurnRecord(agent, f"t{ended}", ended - duration, ended,
                      turn_end(duration_s=duration, **kw), {"peer": 1})


# -- the stats API -------------------------------------------------------------------------------


def test_api_returns_uplot_series_and_honours_since(rig: TelemetryRig, http: httpx.Client) -> None:
    for i, ended in enumerate((T0 + 10, T0 + 20, T0 + 30)):
        rig.stats.tell(turn("alice", ended, 2.0 + i))
    rig.wall.t = T0 + 25
    rig.store.messages.send("manager", "alice", "x", MessageKind.MANAGER)
    rig.stats.ask(SampleNow(), timeout=TIMEOUT)  # inbox.depth at T0 + 25

    response = http.get(
        "/api/stats",
        params={
            "agent": "alice", "since": str(T0 + 15), "keys": "turns,turn.duration_s,inbox.depth"
        },
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["keys"] == ["turns", "turn.duration_s", "inbox.depth"]
    assert body["data"] == [
        [T0 + 20, T0 + 25, T0 + 30],
        [1, None, 1],
        [3.0, None, 4.0],
        [None, 1, None],
    ]
    everything = http.get("/api/stats", params={"agent": "alice", "since": "0", "keys": "turns"})
    assert everything.json()["data"] == [[T0 + 10, T0 + 20, T0 + 30], [1, 1, 1]]
    window = http.get(
        "/api/stats",
        params={"agent": "alice", "since": str(T0 + 11), "until": str(T0 + 20), "keys": "turns"},
    )
    assert window.json()["data"] == [[T0 + 20], [1]]
    empty = http.get("/api/stats", params={"agent": "bob", "since": "0", "keys": "turns,tool.Read"})
    assert empty.json()["data"] == [[], [], []]
    hive = http.get(
        "/api/stats", params={"agent": "_hive", "since": "0", "keys": "approvals.pending"}
    )
    assert hive.json()["data"] == [[T0 + 25], [0]]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"agent": "alice", "since": "soon", "keys": "turns"}, "since='soon' is not a number"),
        ({"agent": "alice", "since": "-1", "keys": "turns"}, "out of range"),
        ({"agent": "mallory", "since": "0", "keys": "turns"}, "unknown agent 'mallory'"),
        ({"agent": "alice", "since": "0", "keys": "turns,nope"}, "unknown key(s) 'nope'"),
        ({"agent": "alice", "since": "0"}, "keys is required"),
        ({"agent": "alice", "window": "1y", "keys": "turns"}, "window='1y' is not a window"),
        ({"agent": "alice", "window": "5", "keys": "turns"}, "out of range"),
    ],
)
def test_api_refuses_bad_queries_with_the_reason(
    http: httpx.Client, params: dict[str, str], fragment: str
) -> None:
    response = http.get("/api/stats", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["error"]


def test_a_window_answers_buckets_and_families_expand(
    rig: TelemetryRig, http: httpx.Client
) -> None:
    # Three turns in one minute bucket, one in the next; tools differ per turn.
    for ended, tools in ((T0 + 5, {"Bash": 2}), (T0 + 20, {"Read": 1}), (T0 + 50, {"Bash": 1}),
                         (T0 + 70, {"mcp__hive__send": 3})):
        rig.stats.tell(turn("alice", ended, 2.0, tools=tools))
    rig.stats.ask(FlushStats(), timeout=TIMEOUT)
    rig.wall.t = T0 + 100
    body = http.get(
        "/api/stats", params={"agent": "alice", "window": "15m", "keys": "turns,tool.*"}
    ).json()
    assert (body["window"], body["step"], body["since"]) == (900, 60, T0 + 100 - 900)
    assert body["keys"] == ["turns", "tool.Bash", "tool.Read", "tool.mcp__hive__send"]
    assert body["data"] == [[T0, T0 + 60], [3, 1], [3, None], [1, None], [None, 3]]
    # An empty family is no series at all; a plain query says it has no window.
    empty = http.get("/api/stats", params={"agent": "bob", "window": "1h", "keys": "tool.*"})
    assert empty.json()["keys"] == [] and empty.json()["data"] == [[]]
    plain = http.get("/api/stats", params={"agent": "alice", "since": "0", "keys": "turns"})
    assert plain.json()["window"] is None and plain.json()["step"] is None


def test_the_notes_answer_carries_the_compaction_threshold(
    rig: TelemetryRig, http: httpx.Client
) -> None:
    body = http.get("/api/stats", params={"agent": "alice", "window": "1h",
                                          "keys": "notes.bytes"}).json()
    assert body["thresholds"] == {"notes.bytes": 16384.0}
    assert "thresholds" not in http.get(
        "/api/stats", params={"agent": "alice", "window": "1h", "keys": "turns"}).json()


def test_the_notes_threshold_is_the_agents_own() -> None:
    from hive_actors.agent.runtime import AgentRuntime
    from hive_actors.stats import StatsConfig

    field = AgentRuntime.__dataclass_fields__["notes_threshold"]
    assert StatsConfig().notes_threshold == field.default


# -- /metrics -----------------------------------------------------------------------------------


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def test_metrics_report_the_hive_as_it_is(rig: TelemetryRig, http: httpx.Client) -> None:
    durations = [0.5, 3.0, 45.0, 700.0]
    for i, duration in enumerate(durations):
        rig.stats.tell(turn("alice", T0 + 100 * (i + 1), duration,
                            tools={"Bash": 1, "mcp__hive__send": 1, "mcp__gh__issue": 2,
                                   "Invented": 1}))
    rig.stats.tell(TurnRecord("bob", "tb", T0, T0 + 1, None, {}, "worker died"))
    rig.store.registry.spawn("alice")
    rig.store.registry.set_state("alice", AgentState.IDLE)
    rig.store.messages.send("manager", "alice", "hi", MessageKind.MANAGER)
    rig.store.approvals.request(ApprovalKind.SPAWN, "carol", requested_by="manager")
    rig.store.questions.ask("alice", "may I?")
    rig.store.events.record(EventKind.AGENT_RESTARTING, "bob", {"reason": "boom"})
    rig.store.events.record(EventKind.AGENT_GIVEN_UP, "bob", {"reason": "boom"})
    rig.stats.ask(SampleNow(), timeout=TIMEOUT)  # reads the lifecycle events

    # bob's actor crashes: its supervisor waits out a 4 s backoff (virtual: nothing moves).
    bob = next(c.ref for c in _children(rig) if c.id == "bob")
    bob.tell(Crash())
    assert rig.restarting.wait(TIMEOUT)
    # alice's actor is blocked with three messages waiting in its mailbox.
    alice = next(c.ref for c in _children(rig) if c.id == "alice")
    held, release = threading.Event(), threading.Event()
    alice.tell(Hold(held, release))
    assert held.wait(TIMEOUT)
    for _ in range(3):
        alice.tell(Noop())
    notes = rig.hive.agent_paths("alice").state / "notes.md"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_text("x" * 1234)
    try:
        rig.wall.t = T0 + 1000
        m = scrape(http)
    finally:
        release.set()

    assert value(m, "hive_build_info", version="0.1.0") == 1
    assert value(m, "hive_turns_total", agent="alice", outcome="ok") == 4
    assert value(m, "hive_turns_total", agent="alice", outcome="failure") == 0
    assert value(m, "hive_turns_total", agent="bob", outcome="failure") == 1
    assert value(m, "hive_turn_duration_seconds_count", agent="alice") == 4
    assert value(m, "hive_turn_duration_seconds_sum", agent="alice") == sum(durations)
    assert value(m, "hive_turn_duration_seconds_bucket", agent="alice", le="1.0") == 1
    assert value(m, "hive_turn_duration_seconds_bucket", agent="alice", le="5.0") == 2
    assert value(m, "hive_turn_duration_seconds_bucket", agent="alice", le="60.0") == 3
    assert value(m, "hive_turn_duration_seconds_bucket", agent="alice", le="600.0") == 3
    assert value(m, "hive_turn_duration_seconds_bucket", agent="alice", le="+Inf") == 4
    assert value(m, "hive_tool_calls_total", agent="alice", tool="Bash") == 4
    assert value(m, "hive_tool_calls_total", agent="alice", tool="mcp__hive__send") == 4
    assert value(m, "hive_tool_calls_total", agent="alice", tool="mcp__gh") == 8
    assert value(m, "hive_tool_calls_total", agent="alice", tool="other") == 4
    model = "claude-sonnet-4-5"
    assert value(m, "hive_tokens_total", agent="alice", model=model, type="input") == 400
    assert value(m, "hive_cost_usd_total", agent="alice", model=model) == pytest.approx(0.04)
    assert value(m, "hive_inbox_depth", agent="alice") == 1
    assert value(m, "hive_inbox_oldest_age_seconds", agent="alice") == 1000
    assert value(m, "hive_approvals_pending") == 1
    assert value(m, "hive_approval_oldest_age_seconds") == 1000
    assert value(m, "hive_questions_pending") == 1
    assert value(m, "hive_agent_state", agent="alice", state="waiting_operator") == 1
    assert value(m, "hive_agent_state", agent="alice", state="pending") == 0
    assert value(m, "hive_agent_state", agent="bob", state="pending") == 1
    assert value(m, "hive_agents_given_up") == 0  # the registry says so, whatever events say
    assert value(m, "hive_agent_restarts_total", agent="bob") == 1
    assert value(m, "hive_agent_crashes_total", agent="bob", result="given_up") == 1
    assert value(m, "hive_agent_restarts_total", agent="alice") == 0
    assert value(m, "hive_agent_backoff_seconds", agent="bob") == 4.0
    assert value(m, "hive_agent_backoff_seconds", agent="alice") == 0.0
    assert value(m, "hive_actor_mailbox_depth", actor="agent:alice") == 3
    assert value(m, "hive_actor_mailbox_depth", actor="stats") == 0
    assert value(m, "hive_seconds_since_last_turn", agent="alice") == 1000 - 400
    assert value(m, "hive_stats_write_errors_total") == 0
    assert value(m, "hive_scrape_source_up", source="store") == 1
    assert value(m, "hive_scrape_source_up", source="agents") == 1
    assert value(m, "hive_messages_received_total", agent="alice", kind="peer") == 4
    assert ("hive_messages_received_total", (("agent", "alice"), ("kind", "system"))) not in m
    assert value(m, "hive_notes_bytes", agent="alice") == 1234
    assert not any(name == "hive_notes_bytes" and ("agent", "bob") in lbl for (name, lbl) in m)
    assert value(m, "hive_notes_compaction_threshold_bytes") == 16384
    labels = {dict(lbl).get("tool") for (name, lbl) in m if name == "hive_tool_calls_total"}
    assert "Invented" not in labels and "mcp__gh__issue" not in labels


def _children(rig: TelemetryRig) -> list[Any]:
    return SupervisorClient(rig.supervisor, timeout=TIMEOUT).which_children()


def test_metrics_negotiate_openmetrics(http: httpx.Client) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    response = http.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "hive_turns" in response.text


def test_a_scrape_without_the_supervisor_still_answers(
    rig: TelemetryRig, http: httpx.Client
) -> None:
    rig.supervisor.stop(block=True, timeout=TIMEOUT)
    rig.hive.directory.withdraw("agents", rig.supervisor)
    m = scrape(http)
    assert value(m, "hive_scrape_source_up", source="agents") == 0
    assert value(m, "hive_scrape_source_up", source="store") == 1
    assert value(m, "hive_inbox_depth", agent="alice") == 0


def test_metrics_on_their_own_port(rig: TelemetryRig) -> None:
    rig.stats.tell(turn("alice", T0 + 5, 1.0))
    rig.stats.ask(FlushStats(), timeout=TIMEOUT)
    server = serve_metrics(rig.telemetry.registry, host="127.0.0.1", port=0)
    try:
        assert server.port > 0
        response = httpx.get(server.url, timeout=TIMEOUT)
        assert response.status_code == 200
        assert value(samples(response.text), "hive_turns_total", agent="alice", outcome="ok") == 1
    finally:
        server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=TIMEOUT)


def test_the_scrape_passes_promtool(rig: TelemetryRig, http: httpx.Client, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    rig.stats.tell(turn("alice", T0 + 5, 1.0, tools={"Bash": 1}))
    rig.stats.ask(SampleNow(), timeout=TIMEOUT)
    text = http.get("/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", "promtool lint findings"


def test_fast_text_encoding_is_byte_for_byte_the_librarys(rig: TelemetryRig) -> None:
    # Label values that need escaping, and every family populated.
    rig.stats.tell(turn("alice", T0 + 5, 1.0, tools={"Bash": 1, 'mcp__we"ird\\x__t': 2},
                        model='m"\\\nx'))
    rig.store.messages.send("manager", "alice", "hi", MessageKind.MANAGER)
    rig.stats.ask(SampleNow(), timeout=TIMEOUT)
    registry = rig.telemetry.registry
    fast, library = encode_text(registry), generate_latest(registry)
    assert fast == library
    assert b'model="m_' in fast  # the model name was cleaned into a safe label


def test_the_json_answer_is_the_aligned_answer(rig: TelemetryRig) -> None:
    # Rows inserted out of ts order, two series with different timestamps.
    rows = [("alice", T0 + t, key, float(t)) for t in (30, 10, 20, 5, 25)
            for key in ("turns", "inbox.depth") if (t % 10 == 0) == (key == "turns")]
    rows.append(("alice", T0 + 10, "turns", 2.0))  # same ts, summed
    with rig.store.db.transaction():
        rig.store.db.connection.executemany("INSERT INTO stats VALUES (?, ?, ?, ?)", rows)
    params = {"agent": "alice", "since": "0", "keys": "turns,inbox.depth"}
    text = rig.telemetry.reader.use(lambda store: answer_json(store, params, T0))
    objects = rig.telemetry.reader.use(lambda store: answer(store, params, T0))
    assert json.loads(text) == json.loads(json.dumps(objects))
    assert json.loads(text)["data"] == [
        [T0 + 5, T0 + 10, T0 + 20, T0 + 25, T0 + 30],
        [None, 12.0, 20.0, None, 30.0],
        [5.0, None, None, 25.0, None],
    ]
