"""Retention on a real sqlite file: bounded steps, open mail kept, a pruned resume gets a snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient

from hive_actors.errors import ConfigError, HiveError
from hive_actors.gateway.endpoints import OperatorApi
from hive_actors.gateway.reads import HiveReader
from hive_actors.httpd import Fanout, SecurityMiddleware, SecurityPolicy
from hive_actors.store import AgentState, ApprovalKind, MessageKind, Role, Store
from hive_actors.store.events import EventKind
from hive_actors.store.pool import StorePool
from hive_actors.store.prune import DAY, Pruner, RetentionLimits, Table
from tests.support.store import T0, WallClock, open_store
from tests.support.timeout import TIMEOUT
from tests.support.web import recv_json, serving, ws_connect


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    clock = WallClock()
    with open_store(tmp_path / "hive.db", clock) as store:
        for name in ("boss", "alice"):
            store.registry.register(name, role=Role.MANAGER if name == "boss" else Role.AGENT)
            store.registry.spawn(name)
            store.registry.set_state(name, AgentState.IDLE)
        yield store


def _clock(store: Store) -> WallClock:
    clock = store.db.now
    assert isinstance(clock, WallClock)
    return clock


def _log(store: Store, n: int) -> None:
    for first in range(0, n, 500):
        store.events.record_many(
            [(EventKind.TURN_LOG, "alice", {"line": f"line {i}"})
             for i in range(first, min(n, first + 500))]
        )


def _count(store: Store, table: str) -> int:
    return int(store.db.value(f"SELECT count(*) FROM {table}"))


# -- the limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "message"), [
    ("retention_days", -1, "retention_days = -1 must be a number 0 or more"),
    ("max_events", 2.5, "max_events = 2.5 must be a whole number"),
    ("max_messages", -3, "max_messages = -3 must be a whole number 0 or more"),
    ("prune_batch", 0, "prune_batch = 0 must be a whole number in 1..100000"),
    ("prune_interval", 0.0, "prune_interval = 0.0 must be a positive number of seconds"),
])
def test_bad_limits_are_refused_with_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        RetentionLimits(**{key: value})


def test_hive_toml_store_keys_are_validated(tmp_path: Path) -> None:
    from hive_actors.config import load_config

    path = tmp_path / "hive.toml"
    path.write_text("[store]\nretention_days = 7\nmax_events = 5000\n")
    limits = load_config(path).store.retention()
    assert (limits.retention_days, limits.max_events) == (7.0, 5000)
    path.write_text("[store]\nmax_events = -1\n")
    with pytest.raises(ConfigError, match=r"hive\.toml: \[store\] max_events = -1"):
        load_config(path)


# -- bounded steps ---------------------------------------------------------------------------


def test_each_step_deletes_at_most_one_batch_and_the_cap_holds(store: Store) -> None:
    _log(store, 2_000)
    last = store.events.last_event_id()
    pruner = Pruner(store.db, RetentionLimits(retention_days=0, max_events=300, prune_batch=128))
    pruner.start(_clock(store)())
    steps = []
    while pruner.running:
        before = _count(store, "events")
        step = pruner.step()
        assert step.deleted == before - _count(store, "events")  # one step, one DELETE
        assert step.deleted <= 128
        steps.append(step)
    assert sum(s.deleted for s in steps if s.table is Table.EVENTS) == last - 300
    assert len([s for s in steps if s.table is Table.EVENTS]) >= (last - 300) // 128
    assert _count(store, "events") == 300
    assert store.events.oldest_event_id() == last - 299
    assert store.events.last_event_id() == last  # ids never go back


def test_events_past_the_window_go_the_recent_stay(store: Store) -> None:
    clock = _clock(store)
    _log(store, 50)
    old_last = store.events.last_event_id()
    clock.advance(3 * DAY)
    _log(store, 20)
    report = Pruner(store.db, RetentionLimits(retention_days=2, max_events=0)).run(clock())
    assert report.deleted == {"events": old_last}
    assert store.events.oldest_event_id() == old_last + 1


def test_a_step_holds_the_write_lock_only_for_its_own_batch(store: Store, tmp_path: Path) -> None:
    """Between two steps another connection (the bus) commits without waiting."""
    _log(store, 1_000)
    pruner = Pruner(store.db, RetentionLimits(retention_days=0, max_events=10, prune_batch=100))
    pruner.start(_clock(store)())
    with open_store(tmp_path / "hive.db", WallClock(), busy_timeout_ms=0) as bus:
        while pruner.running:
            pruner.step()
            assert not store.db.in_transaction
            bus.messages.send("operator", "alice", "between steps", MessageKind.OPERATOR)
    # The sends logged events of their own meanwhile: the next run trims those too.
    pruner.run(_clock(store)())
    assert _count(store, "events") == 10


def test_the_store_actor_prunes_step_by_step_on_its_timer(tmp_path: Path) -> None:
    from hive_actors.clock import FakeClock
    from hive_actors.services.store import StoreActor

    path, wall = tmp_path / "hive.db", WallClock()
    with open_store(path, wall) as store:
        _log(store, 200)
    limits = RetentionLimits(retention_days=0, max_events=10, prune_batch=20, prune_interval=60)
    clock = FakeClock()
    ref = StoreActor.start(lambda: open_store(path, wall), retention=limits, clock=clock)
    try:
        with open_store(path, wall) as reader:
            assert clock.wait_pending(1, TIMEOUT) and clock.next_deadline() == 60
            assert _count(reader, "events") == 200  # nothing before the first run
            counts, delay = [], 60.0
            while True:
                clock.advance(delay)
                assert clock.wait_pending(1, TIMEOUT), "the actor scheduled nothing"
                delay = clock.next_deadline() or 0.0
                counts.append(_count(reader, "events"))
                if delay == pytest.approx(limits.prune_interval):
                    break  # the run is over; the next one is due in an interval
                assert delay == pytest.approx(limits.prune_pause)
        assert counts[-1] == 10
        steps = [a - b for a, b in zip([200, *counts], counts, strict=False)]
        assert max(steps) <= 20 and len(steps) >= (200 - 10) // 20, steps
    finally:
        ref.stop(timeout=TIMEOUT)


# -- what is never pruned ------------------------------------------------------------------------


def test_open_mail_pending_decisions_and_open_questions_are_never_pruned(store: Store) -> None:
    clock = _clock(store)
    msgs = store.messages
    gen = store.registry.get("alice").generation
    delivered = msgs.send("operator", "alice", "done with", MessageKind.OPERATOR)
    msgs.claim("alice", gen, "t1")
    msgs.ack("t1")
    stale = msgs.send("operator", "alice", "stale", MessageKind.OPERATOR)
    with store.db.transaction():
        store.db.execute("UPDATE messages SET status = 'stale' WHERE id = ?", (stale,))
    in_flight = msgs.send("operator", "alice", "being read", MessageKind.OPERATOR)
    msgs.claim("alice", gen, "t2")
    queued = msgs.send("operator", "alice", "waiting", MessageKind.OPERATOR)
    pending = store.approvals.request(ApprovalKind.SPAWN, "carol", requested_by="boss")
    denied = store.approvals.request(ApprovalKind.SPAWN, "dave", requested_by="boss")
    store.approvals.decide(denied.id, False, "operator")
    approved = store.approvals.request(ApprovalKind.SPAWN, "erin", requested_by="boss")
    store.approvals.decide(approved.id, True, "operator")  # not carried out yet
    answered = store.questions.ask("alice", "answered?")
    answer = store.questions.answer(answered.id, "yes", "operator")
    open_question = store.questions.ask("alice", "still open?")
    agents = store.registry.agents()
    # Everything is a year old, and every cap is tiny.
    clock.advance(365 * DAY)
    limits = RetentionLimits(retention_days=1, max_events=1, max_messages=1, prune_batch=2)
    report = Pruner(store.db, limits).run(clock())
    assert report.deleted.keys() == {"events", "messages", "approvals", "questions"}
    left = dict(store.db.rows("SELECT id, status FROM messages"))
    assert {in_flight, queued, answer.message_id} <= left.keys()  # the answer: not read yet
    assert delivered not in left and stale not in left
    assert set(left.values()) == {"queued", "in_flight"}, left  # every open one, only those
    assert [a.id for a in store.approvals.pending()] == [pending.id]
    assert [a.id for a in store.approvals.outstanding()] == [approved.id]
    assert {r[0] for r in store.db.rows("SELECT id FROM approvals")} == {pending.id, approved.id}
    assert [q.id for q in store.questions.pending()] == [open_question.id]
    assert _count(store, "questions") == 1
    assert store.registry.agents() == agents
    # The open mail is still delivered as if nothing happened.
    assert [m.id for m in msgs.claim("alice", gen, "t2")] == [queued, answer.message_id]


def test_a_message_a_kept_question_refers_to_stays(store: Store) -> None:
    clock = _clock(store)
    question = store.questions.ask("alice", "which branch?")
    answer = store.questions.answer(question.id, "main", "operator")
    gen = store.registry.get("alice").generation
    store.messages.claim("alice", gen, "t1")
    store.messages.ack("t1")  # the answer's message is delivered, the question kept
    clock.advance(10 * DAY)
    Pruner(store.db, RetentionLimits(retention_days=0, max_events=0, max_messages=1)).run(clock())
    ids = {row[0] for row in store.db.rows("SELECT id FROM messages")}
    assert answer.message_id in ids


def test_no_limit_no_pruning(store: Store) -> None:
    _log(store, 100)
    limits = RetentionLimits(retention_days=0, max_events=0, max_messages=0)
    assert not limits.enabled
    assert Pruner(store.db, limits).run(T0 + 1000 * DAY).total == 0
    assert _count(store, "events") >= 100


# -- a resume from a pruned id ---------------------------------------------------------------------


@pytest.fixture
def reader(store: Store) -> Iterator[HiveReader]:
    path = store.path
    clock = _clock(store)
    reader = HiveReader(lambda: open_store(path, clock), lambda name: path.parent / name)
    yield reader
    reader.close()


def _pruned(store: Store, keep: int) -> int:
    """Log 50 events, prune all but the newest ``keep``; return the last id a client saw."""
    _log(store, 50)
    seen = store.events.last_event_id() - 40  # a client that saw the log up to here
    Pruner(store.db, RetentionLimits(retention_days=0, max_events=keep)).run(_clock(store)())
    assert store.events.oldest_event_id() > seen + 1
    return seen


def test_a_websocket_resuming_from_a_pruned_id_gets_a_snapshot(
    store: Store, reader: HiveReader
) -> None:
    seen = _pruned(store, keep=10)
    fanout = Fanout(reader.snapshot, reader.events_since, last_event_id=reader.last_event_id,
                    oldest_event_id=reader.oldest_event_id)
    app = SecurityMiddleware(Starlette(routes=[WebSocketRoute("/ws", fanout)]), SecurityPolicy())
    with serving(app) as (_, port):

        async def resume(since: int) -> dict[str, Any]:
            async with ws_connect(port, f"/ws?since={since}") as ws:
                return await recv_json(ws)

        first = asyncio.run(resume(seen))
        assert first["type"] == "snapshot", first
        assert first["last_event_id"] == store.events.last_event_id()
        # A client still within the log resumes event by event.
        kept = store.events.oldest_event_id()
        assert asyncio.run(resume(kept))["type"] == "event"


def test_the_events_api_says_pruned_and_carries_the_state(
    store: Store, reader: HiveReader
) -> None:
    seen = _pruned(store, keep=10)
    api = OperatorApi(reader, None, 10.0, 1024)  # type: ignore[arg-type]  # reads only
    with TestClient(Starlette(routes=api.dashboard_routes())) as client:
        page = client.get("/api/events", params={"since": seen}).json()
        assert page["pruned"] is True
        assert page["oldest_id"] == store.events.oldest_event_id()
        assert page["snapshot"]["last_event_id"] == store.events.last_event_id()
        assert {a["name"] for a in page["snapshot"]["agents"]} == {"boss", "alice"}
        # Within the log: a plain page, no snapshot.
        kept = store.events.oldest_event_id() - 1
        plain = client.get("/api/events", params={"since": kept, "limit": 5}).json()
        assert "pruned" not in plain and [e["id"] for e in plain["events"]] == list(
            range(kept + 1, kept + 6))


# -- the pool ------------------------------------------------------------------------------------


def test_the_pool_keeps_a_few_connections_whatever_the_threads(store: Store) -> None:
    import threading

    path, clock = store.path, _clock(store)
    pool = StorePool(lambda: open_store(path, clock), max_idle=2)
    gate = threading.Barrier(6)

    def read() -> None:
        with pool.connection() as conn:
            gate.wait(timeout=10)  # six at once: six lent
            conn.events.last_event_id()

    for _ in range(5):  # five generations of short-lived threads
        threads = [threading.Thread(target=read) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert pool.open_count == 2
    pool.close()
    assert pool.open_count == 0
    with pytest.raises(HiveError, match="closed"), pool.connection():
        pass
