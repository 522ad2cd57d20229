"""StatsActor on a real store file: turn records → rows and totals, batching, sampling ticks in
virtual time, lifecycle events, a failing write, totals across a restart, retention, and a
TurnEnd captured from the real claude CLI against the loopback model server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from hive_actors.clock import FakeClock
from hive_actors.harness.claude import TurnRequest, find_claude, run_cli
from hive_actors.modelserver import ModelServer
from hive_actors.protocol import TurnRecord
from hive_actors.stats import (
    FlushStats,
    HiveTelemetry,
    RetainNow,
    RetentionPolicy,
    SampleNow,
    StatsActor,
    StatsConfig,
    Telemetry,
)
from hive_actors.stats.actor import HeldTurns
from hive_actors.stats.retention import HOUR, MINUTE
from hive_actors.stats.series import Row
from hive_actors.store import ApprovalKind, MessageKind, Role, Store
from hive_actors.store.events import EventKind
from hive_actors.supervisors import Backoff, SupervisorFlags
from hive_actors.supervisors.root import start_root
from tests.support.stats import T0, WallClock, WallHive, make_hive, turn_end
from tests.support.timeout import TIMEOUT

CONFIG = StatsConfig(
    sample_interval=15.0,
    retention_interval=600.0,
    retention=RetentionPolicy(raw=2 * HOUR, minutes=6 * HOUR, hours=24 * HOUR),
)


class Rig:
    """A hive on a temp dir with alice, bob and a manager, and a stats actor on it."""

    def __init__(self, tmp_path: Path, *, busy_timeout_ms: int = 2000) -> None:
        self.wall = WallClock(T0)
        self.clock = FakeClock()
        self.hive: WallHive = make_hive(tmp_path, self.wall, busy_timeout_ms=busy_timeout_ms)
        self.store = self.hive.open_store()
        self.store.registry.register("manager", role=Role.MANAGER)
        for name in ("alice", "bob"):
            self.store.registry.register(name)
        self.telemetry = Telemetry()
        self.ref: Any = None

    def start(self, telemetry: Telemetry | None = None) -> Any:
        if telemetry is not None:
            self.telemetry = telemetry
        self.ref = StatsActor.start(
            self.hive, self.telemetry, config=CONFIG, clock=self.clock, wall=self.wall
        )
        # Both ticks are scheduled in on_start: wait for them before moving virtual time.
        assert self.clock.wait_pending(2, TIMEOUT)
        return self.ref

    def ask(self, message: Any) -> Any:
        return self.ref.ask(message, timeout=TIMEOUT)

    def stop(self) -> None:
        if self.ref is not None and self.ref.is_alive():
            self.ref.stop(block=True, timeout=TIMEOUT)

    def rows(self, agent: str | None = None) -> list[tuple[str, float, str, float]]:
        where, params = ("WHERE agent = ?", (agent,)) if agent else ("", ())
        return [
            (str(a), float(ts), str(key), float(v))
            for a, ts, key, v in self.store.db.rows(
                f"SELECT agent, ts, key, value FROM stats {where} ORDER BY ts, agent, key", params
            )
        ]

    def keyed(self, agent: str, ts: float) -> dict[str, float]:
        return {key: v for a, t, key, v in self.rows(agent) if t == ts}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.stop()
    r.store.close()


def record(agent: str, started: float, ended: float, end: Any = None, **kw: Any) -> TurnRecord:
    return TurnRecord(
        agent, f"turn-{uuid.uuid4().hex[:8]}", started, ended,
        end if end is not None else turn_end(duration_s=ended - started),
        kw.pop("received", {}), kw.pop("error", None),
    )


# -- turns ---------------------------------------------------------------------------------------


def test_turn_records_become_rows_and_totals(rig: Rig) -> None:
    rig.start()
    # alice sends two messages inside her turn [T0, T0+10], one after it.
    sends = ((T0 + 2, "a", "bob"), (T0 + 9, "b", "manager"), (T0 + 11, "c", "bob"))
    for at, body, recipient in sends:
        rig.wall.t = at
        rig.store.messages.send("alice", recipient, body, MessageKind.PEER)
    rig.wall.t = T0 + 20
    alice = turn_end(duration_s=9.5, tools={"Bash": 2, "mcp__hive__send": 2}, cost_usd=0.5)
    rig.ref.tell(record("alice", T0, T0 + 10, alice, received={"peer": 1, "system": 2}))
    rig.ref.tell(record("bob", T0 + 1, T0 + 12, None, error="worker failed before the CLI"))
    rig.ref.tell(record("alice", T0 + 13, T0 + 15, turn_end(outcome="timeout", duration_s=400.0)))
    rig.ask(FlushStats())  # a barrier: every record before it is written when it answers

    first = rig.keyed("alice", T0 + 10)
    assert first["turns"] == 1 and first["turn.outcome.ok"] == 1
    assert first["turn.duration_s"] == 9.5 and first["turn.duration_le.10.0"] == 1
    assert first["tool.Bash"] == 2 and first["tool.mcp__hive__send"] == 2
    assert first["turn.tool_calls"] == 4
    assert first["received"] == 3 and first["received.system"] == 2
    # Split by recipient (not by the sender's own role): one to bob, one to the manager.
    assert first["sent"] == 2  # not the one sent after the turn
    assert first["sent.peer"] == 1 and first["sent.manager"] == 1
    assert first["sent.operator"] == 0 and first["sent.system"] == 0
    assert first["cost_usd@claude-sonnet-4-5"] == 0.5
    bob = rig.keyed("bob", T0 + 12)
    assert bob["turn.outcome.failure"] == 1 and bob["turn.duration_s"] == 11.0
    assert rig.keyed("alice", T0 + 15)["turn.outcome.timeout"] == 1

    snap = rig.telemetry.snapshot()
    assert snap.sums[("alice", "turns")] == 2 and snap.sums[("bob", "turns")] == 1
    assert snap.sums[("alice", "turn.duration_s")] == 409.5
    assert snap.sums[("alice", "turn.duration_le.600.0")] == 1
    assert snap.sums[("alice", "tool.Bash")] == 2
    assert snap.sums[("alice", "tokens.input@claude-sonnet-4-5")] == 200
    assert snap.last_turn == {"alice": T0 + 15, "bob": T0 + 12}
    assert snap.write_errors == 0


def asked(rig: Rig, agent: str, at: float) -> None:
    """A question to the operator, as ask_operator records it (without the state change)."""
    rig.store.db.connection.execute(
        "INSERT INTO questions (agent, question, asked) VALUES (?, 'which branch?', ?)",
        (agent, at),
    )


def test_sent_messages_are_split_by_recipient_not_by_the_senders_role(rig: Rig) -> None:
    rig.start()
    rig.wall.t = T0 + 1
    rig.store.messages.send("manager", "alice", "do this", MessageKind.MANAGER)
    rig.wall.t = T0 + 2
    asked(rig, "manager", T0 + 2)
    rig.wall.t = T0 + 3
    rig.store.messages.send("alice", "manager", "done", MessageKind.PEER)
    rig.store.messages.send("alice", "bob", "fyi", MessageKind.PEER)
    rig.wall.t = T0 + 4
    asked(rig, "alice", T0 + 4)
    rig.wall.t = T0 + 10
    rig.ref.tell(record("manager", T0, T0 + 5))
    rig.ref.tell(record("alice", T0, T0 + 5))
    rig.ask(FlushStats())

    manager = rig.keyed("manager", T0 + 5)
    assert manager["sent"] == 2 and manager["sent.peer"] == 1 and manager["sent.operator"] == 1
    assert manager["sent.manager"] == 0
    alice = rig.keyed("alice", T0 + 5)
    assert alice["sent"] == 3
    assert (alice["sent.manager"], alice["sent.peer"], alice["sent.operator"]) == (1, 1, 1)
    sums = rig.telemetry.snapshot().sums
    assert sums[("alice", "sent.manager")] == 1 and sums[("manager", "sent.operator")] == 1


class CommitGate:
    """Counts the stats connection's commits; the first one waits until released."""

    def __init__(self) -> None:
        self.commits = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def hook(self) -> bool:
        self.commits += 1
        if self.commits == 1:
            self.entered.set()
            self.release.wait(TIMEOUT)
        return False  # False lets the commit go ahead


def test_records_arriving_during_a_write_share_one_transaction(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    gate = CommitGate()

    def open_store() -> Store:
        store = rig.hive.open_store()
        store.db.connection.set_commit_hook(gate.hook)
        return store

    rig.ref = StatsActor.start(
        rig.hive, rig.telemetry, config=CONFIG, clock=rig.clock, wall=rig.wall,
        open_store=open_store,
    )
    try:
        rig.ref.tell(record("alice", T0, T0 + 1))
        assert gate.entered.wait(TIMEOUT)  # the first record's commit is under way
        for i in range(5):
            rig.ref.tell(record("bob", T0 + i, T0 + i + 0.5))
        gate.release.set()
        rig.ask(FlushStats())
        assert gate.commits == 2  # one for alice's record, ONE for bob's five
        assert sum(v for _, _, key, v in rig.rows("bob") if key == "turns") == 5
    finally:
        gate.release.set()
        rig.stop()
        rig.store.close()


def test_a_failed_write_is_counted_and_the_actor_goes_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path, busy_timeout_ms=50)
    try:
        rig.start()
        rig.ask(FlushStats())  # the totals are loaded
        blocker = apsw.Connection(str(rig.hive.config.db_path))
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the timeout
        try:
            rig.ref.tell(record("alice", T0, T0 + 4))
            assert rig.ask(FlushStats()) == 0
            rig.ref.tell(record("alice", T0 + 5, T0 + 6))
            assert rig.ask(SampleNow()) == 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        snap = rig.telemetry.snapshot()
        assert snap.write_errors == 2
        assert snap.sums[("alice", "turns")] == 2  # the turns happened: they count
        assert rig.ref.is_alive()
        rig.ref.tell(record("alice", T0 + 7, T0 + 8))
        assert rig.ask(SampleNow()) > 0
        assert [ts for _, ts, key, _ in rig.rows("alice") if key == "turns"] == [T0 + 8]
        # The gauges lost with the failed tick are written again, not filtered as unchanged.
        assert "inbox.depth" in rig.keyed("bob", rig.wall.t)
    finally:
        rig.stop()
        rig.store.close()


# -- sampling and lifecycle ----------------------------------------------------------------------


def test_sampling_ticks_in_virtual_time(rig: Rig) -> None:
    notes = rig.hive.agent_paths("alice").state / "notes.md"
    notes.parent.mkdir(parents=True)
    notes.write_text("x" * 1234)
    rig.wall.t = T0
    rig.store.messages.send("manager", "alice", "do it", MessageKind.MANAGER)
    rig.store.approvals.request(ApprovalKind.SPAWN, "carol", requested_by="manager")
    rig.start()
    rig.ref.tell(record("bob", T0 - 30, T0 - 20))
    rig.wall.t = T0 + 40
    rig.clock.advance(15.0)  # the sampling tick
    rig.ask(FlushStats())
    alice = rig.keyed("alice", T0 + 40)
    assert alice["inbox.depth"] == 1 and alice["inbox.depth_max"] == 1
    assert alice["inbox.oldest_age_s"] == 40.0 and alice["notes.bytes"] == 1234
    assert alice["since_last_turn_s"] == T0 + 40 - rig.store.registry.get("alice").created
    assert rig.keyed("bob", T0 + 40)["since_last_turn_s"] == 60.0
    hive = rig.keyed("_hive", T0 + 40)
    assert hive == {"approvals.pending": 1, "approvals.oldest_age_s": 40.0, "questions.pending": 0}

    # Lifecycle events are counted at the next tick.
    rig.store.events.record(EventKind.AGENT_RESTARTING, "alice", {"reason": "boom"})
    rig.store.events.record(EventKind.AGENT_RESTARTING, "alice", {"reason": "boom"})
    rig.store.events.record(EventKind.AGENT_GIVEN_UP, "alice", {"reason": "boom"})
    rig.store.events.record(EventKind.AGENT_CRASHED, "bob", {"reason": "x", "phase": "start"})
    rig.wall.t = T0 + 50
    rig.store.messages.send("manager", "alice", "and this", MessageKind.MANAGER)
    rig.wall.t = T0 + 55
    rig.clock.advance(15.0)
    rig.ask(FlushStats())
    assert dict(rig.telemetry.snapshot().lifecycle) == {
        ("alice", "restarted"): 2, ("alice", "given_up"): 1, ("bob", "start_failed"): 1
    }
    alice = rig.keyed("alice", T0 + 55)
    assert alice["inbox.depth"] == 2 and alice["inbox.depth_max"] == 2
    # Unchanged (notes) or only older (the oldest message, the last turn): not written again
    # within the heartbeat.
    assert "notes.bytes" not in alice and "inbox.oldest_age_s" not in alice
    assert "since_last_turn_s" not in alice
    assert rig.clock.pending() == 2  # both ticks rescheduled


def test_totals_survive_a_restart(rig: Rig) -> None:
    rig.start()
    for i in range(4):
        end = turn_end(duration_s=1.0 + i, tools={"Read": i}, cost_usd=0.25)
        rig.ref.tell(record("alice", T0 + 10 * i, T0 + 10 * i + 5, end))
    rig.store.events.record(EventKind.AGENT_RESTARTING, "bob", {"reason": "boom"})
    rig.ask(SampleNow())
    before = rig.telemetry.snapshot()
    rig.stop()

    rig.start(Telemetry())  # a new process: nothing in memory
    rig.ask(FlushStats())  # behind the load
    after = rig.telemetry.snapshot()
    assert after.loaded and dict(after.sums) == dict(before.sums)
    assert after.sums[("alice", "turns")] == 4 and after.sums[("alice", "tool.Read")] == 6
    assert after.sums[("alice", "cost_usd@claude-sonnet-4-5")] == 1.0
    assert dict(after.lifecycle) == {("bob", "restarted"): 1}
    assert after.last_turn == {"alice": T0 + 35}
    # Events before the load are not counted twice by the next tick.
    rig.ask(SampleNow())
    assert dict(rig.telemetry.snapshot().lifecycle) == {("bob", "restarted"): 1}


# -- retention -----------------------------------------------------------------------------------


def test_retention_removes_and_downsamples_what_it_should_and_nothing_else(rig: Rig) -> None:
    now = T0 + 30 * HOUR
    rig.wall.t = now
    rig.start()
    # Turns at known ages: 1 h (raw), 3 h (→ minute), 8 h (→ hour), 30 h (→ dropped).
    ages = {
        "recent": [HOUR + 5, HOUR + 20],
        "minute": [3 * HOUR + 2, 3 * HOUR + 30],  # same minute after alignment? see below
        "hour": [8 * HOUR + 100, 8 * HOUR + 1000],
        "old": [29 * HOUR],
    }
    for ages_of in ages.values():
        for age in ages_of:
            rig.ref.tell(record("alice", now - age - 3, now - age))
    rig.ask(FlushStats())
    raw_before = rig.rows("alice")
    total_before = rig.telemetry.snapshot().sums[("alice", "turns")]
    assert total_before == 7

    report = rig.ask(RetainNow())
    assert report.ok
    after = rig.rows("alice")
    policy = CONFIG.retention
    recent = [r for r in raw_before if r[1] >= now - policy.raw]
    # Recent rows: untouched, row for row.
    assert [r for r in after if r[1] >= now - policy.raw] == recent
    # Nothing older than the horizon is left; tiers are aligned.
    assert min(r[1] for r in after) >= now - policy.hours
    for _, ts, _, _ in after:
        if ts < now - policy.minutes:
            assert ts % HOUR == 0
        elif ts < now - policy.raw:
            assert ts % MINUTE == 0
    turns = {ts: v for _, ts, key, v in after if key == "turns"}
    assert sum(turns.values()) == 6  # the 29 h-old turn was dropped, nothing else lost
    hour_rows = [v for ts, v in turns.items() if ts < now - policy.minutes]
    assert hour_rows == [2.0] or sorted(hour_rows) == [1.0, 1.0]  # one hour, or two
    assert report.dropped == len([r for r in raw_before if r[1] < now - 24 * HOUR])
    durations = sum(v for _, ts, key, v in after if key == "turn.duration_s")
    assert durations == pytest.approx(18.0)  # 6 kept turns of 3 s each, summed exactly

    # A second run right away has nothing to do; running again later merges only the new slice.
    again = rig.ask(RetainNow())
    assert (again.dropped, again.merged) == (0, 0)
    assert rig.rows("alice") == after
    rig.wall.t = now + 2 * HOUR
    rig.clock.advance(600.0)  # the retention tick
    rig.ask(FlushStats())
    later = rig.rows("alice")
    assert sum(v for _, _, key, v in later if key == "turns") == 6
    assert all(ts % MINUTE == 0 for _, ts, _, _ in later if ts < rig.wall.t - policy.raw)


# -- the real CLI --------------------------------------------------------------------------------


def test_a_real_cli_turn_is_recorded(rig: Rig, tmp_path: Path) -> None:
    claude = find_claude()
    root = tmp_path / "cli"
    dirs = ("CLAUDE_CONFIG_DIR", "HOME", "TMPDIR", "XDG_RUNTIME_DIR")
    env = {name: str(root / name.lower()) for name in dirs}
    for path in env.values():
        Path(path).mkdir(parents=True)
    with ModelServer() as server:
        request = TurnRequest(
            prompt='@tool Bash {"command": "echo hi"}\n@tool Bash {"command": "echo again"}',
            model="claude-sonnet-4-5",
            session_id=str(uuid.uuid4()),
            base_url=server.url,
            env=env,
            api_key="sk-loopback",
            cwd=str(root),
            allowed_tools=["Bash(echo *)"],
        )
        started = time.time()
        end = run_cli(request, lambda event: None, claude=claude)
        ended = time.time()
    assert end.outcome == "ok", end.error
    rig.wall.t = ended
    rig.start()
    rig.ref.tell(TurnRecord("alice", "t-real", started, ended, end, {"operator": 1}))
    rig.ask(FlushStats())
    got = rig.keyed("alice", ended)
    assert got["turns"] == 1 and got["turn.outcome.ok"] == 1
    assert got["tool.Bash"] == 2 and got["turn.tool_calls"] == 2
    assert 0 < got["turn.duration_s"] <= ended - started
    assert got["tokens.input@claude-sonnet-4-5"] == end.tokens.input > 0
    assert got["tokens.output"] == end.tokens.output > 0
    assert got["cost_usd"] == pytest.approx(end.cost_usd) and end.cost_usd > 0
    assert got["model@claude-sonnet-4-5"] == 1 and got["received.operator"] == 1


def test_a_crashed_stats_service_comes_back_with_its_totals(rig: Rig) -> None:
    telemetry = HiveTelemetry(rig.hive, CONFIG, clock=rig.clock, wall=rig.wall)
    root = start_root(
        [telemetry.child_spec()],
        SupervisorFlags("one_for_one", intensity=3, period=60, backoff=Backoff(min=0)),
        name="hive",
        ready_timeout=TIMEOUT,
    )
    try:
        first = rig.hive.directory.wait("stats", TIMEOUT)
        telemetry.on_turn_end(record("alice", T0, T0 + 2))
        first.ask(FlushStats(), timeout=TIMEOUT)
        # Something only in memory: a reload from the store forgets it.
        telemetry.telemetry.add_rows([Row("alice", T0, "turns", 100.0)])
        first.tell(object())  # an unknown message is a bug: the actor crashes
        second = rig.hive.directory.wait("stats", TIMEOUT, other_than=first)
        telemetry.on_turn_end(record("alice", T0 + 3, T0 + 5))
        second.ask(FlushStats(), timeout=TIMEOUT)
        snap = telemetry.telemetry.snapshot()
        assert snap.loaded and snap.sums[("alice", "turns")] == 2  # reloaded, then one more
        assert [ts for _, ts, key, _ in rig.rows("alice") if key == "turns"] == [T0 + 2, T0 + 5]
    finally:
        root.stop(block=True, timeout=TIMEOUT)
        telemetry.close()
    assert rig.hive.directory.find("stats") is None


def test_a_turn_that_ends_while_the_stats_actor_is_down_is_counted_by_the_next(
    rig: Rig,
) -> None:
    telemetry = HiveTelemetry(rig.hive, CONFIG, clock=rig.clock, wall=rig.wall)
    # No stats actor yet (as while it is being restarted): the record is held, not lost.
    telemetry.on_turn_end(record("alice", T0, T0 + 2))
    assert rig.hive.directory.find("stats") is None
    ref = telemetry.child_spec().start()
    try:
        # The next sampling tick takes the held record with everything else.
        ref.ask(SampleNow(), timeout=TIMEOUT)
        assert [ts for _, ts, key, _ in rig.rows("alice") if key == "turns"] == [T0 + 2]
        assert telemetry.telemetry.snapshot().sums[("alice", "turns")] == 1
        assert telemetry.held.take() == ([], 0)  # taken once: a later tick does not count it
        ref.ask(SampleNow(), timeout=TIMEOUT)
        assert [ts for _, ts, key, _ in rig.rows("alice") if key == "turns"] == [T0 + 2]
    finally:
        ref.stop(block=True, timeout=TIMEOUT)
        telemetry.close()


def test_held_turns_are_bounded_and_say_how_many_gave_way() -> None:
    held = HeldTurns(limit=2)
    records = [record("alice", T0 + i, T0 + i + 1) for i in range(3)]
    for r in records:
        held.hold(r)
    assert held.take() == (records[1:], 1)
    assert held.take() == ([], 0)
