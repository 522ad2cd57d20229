"""The audit log and the benchmark ceiling, on real sqlite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_actors.errors import ConfigError, Conflict, StoreError
from hive_actors.store import AgentState, ApprovalKind, MessageKind, Role
from hive_actors.store.events import ACTOR_EVENTS, EventKind, append_event
from hive_actors.store.raw import raw_insert_messages
from tests.support.store import T0, WallClock, open_store, snapshot

S = AgentState


def test_every_kind_of_change_is_logged_in_order(tmp_path: Path, clock: WallClock) -> None:
    with open_store(tmp_path / "hive.db", clock, state_dirs=lambda n: tmp_path / n) as store:
        store.registry.register("boss", role=Role.MANAGER)
        store.registry.spawn("boss")
        store.registry.set_state("boss", S.IDLE)
        store.registry.set_port("boss", 8000)
        store.models.set_model("boss", "opus", persist=True)
        store.messages.send("operator", "boss", "hi", MessageKind.OPERATOR)
        store.messages.claim("boss", 1, "t1")
        store.messages.ack("t1")
        store.messages.send("operator", "boss", "again", MessageKind.OPERATOR)
        store.messages.claim("boss", 1, "t2")
        store.messages.release("t2")
        approval = store.approvals.request(ApprovalKind.SPAWN, "alice", requested_by="boss")
        store.approvals.decide(approval.id, False, "operator")
        approval = store.approvals.request(ApprovalKind.SPAWN, "bob", requested_by="boss")
        store.approvals.decide(approval.id, True, "operator")
        store.approvals.record_outcome(approval.id, "started")
        question = store.questions.ask("boss", "why?")
        store.questions.answer(question.id, "because", "operator")
        store.registry.set_state("boss", S.STOPPED)
        store.registry.spawn("boss")  # the undelivered answer becomes stale
        store.registry.set_state("boss", S.STOPPED)
        store.registry.destroy("boss", keep_state=True)
        events = store.events.events_since(0)
    kinds = {e.kind for e in events}
    # The rest are facts the actors record themselves (turns, crashes), via EventLog.record.
    domain = {str(k) for k in EventKind} - {str(k) for k in ACTOR_EVENTS}
    assert kinds == domain, kinds ^ domain
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert all(e.ts == T0 for e in events)


def test_replay_pages_and_survives_reopen(tmp_path: Path, clock: WallClock) -> None:
    path = tmp_path / "hive.db"
    with open_store(path, clock) as store:
        assert store.events.last_event_id() == 0
        assert store.events.events_since(0) == []
        for i in range(7):
            store.registry.register(f"a{i}")
            clock.advance(1)
        last = store.events.last_event_id()
        assert last == 7
    with open_store(path, clock) as store:
        page_1 = store.events.events_since(0, limit=3)
        page_2 = store.events.events_since(page_1[-1].id, limit=3)
        page_3 = store.events.events_since(page_2[-1].id, limit=3)
        assert [e.agent for e in page_1 + page_2 + page_3] == [f"a{i}" for i in range(7)]
        assert [e.ts for e in page_1] == [T0, T0 + 1, T0 + 2]
        assert store.events.events_since(last) == []


def test_the_oldest_event_still_held_marks_how_far_a_resume_can_go(
    tmp_path: Path, clock: WallClock
) -> None:
    with open_store(tmp_path / "hive.db", clock) as store:
        assert store.events.oldest_event_id() == 1  # nothing written: the first id to come
        for i in range(4):
            store.registry.register(f"a{i}")
        assert store.events.oldest_event_id() == 1
        with store.db.transaction():  # pruned by hand (an operator trimming the log)
            store.db.execute("DELETE FROM events WHERE id <= 2")
        assert store.events.oldest_event_id() == 3
        with store.db.transaction():
            store.db.execute("DELETE FROM events")
        assert store.events.oldest_event_id() == 5  # one past the last id ever written


def test_a_refusal_leaves_no_event_and_burns_no_id(tmp_path: Path, clock: WallClock) -> None:
    path = tmp_path / "hive.db"
    with open_store(path, clock) as store:
        store.registry.register("alice")
        before = store.events.last_event_id()
        with pytest.raises(Conflict):
            store.registry.register("alice")
        assert store.events.last_event_id() == before
        assert store.registry.register("bob") is not None
        assert store.events.last_event_id() == before + 1


def test_events_prune_keeps_ids_monotonic(tmp_path: Path, clock: WallClock) -> None:
    with open_store(tmp_path / "hive.db", clock) as store:
        store.registry.register("alice")
        store.registry.register("bob")
        with store.db.transaction():
            store.db.execute("DELETE FROM events")
        assert store.events.last_event_id() == 2
        store.registry.register("carol")
        assert [e.id for e in store.events.events_since(0)] == [3]


def test_events_are_written_only_inside_a_transaction(tmp_path: Path, clock: WallClock) -> None:
    with open_store(tmp_path / "hive.db", clock) as store, pytest.raises(RuntimeError):
        append_event(store.db, EventKind.AGENT_STATE, None, {})


def test_raw_ceiling_inserts_what_the_bus_reads(tmp_path: Path, clock: WallClock) -> None:
    path = tmp_path / "hive.db"
    with open_store(path, clock) as store:
        store.registry.register("alice")
        store.registry.spawn("alice")
    result = raw_insert_messages(path, "bench", "alice", [f"m{i}" for i in range(25)], batch=10)
    assert (result.messages, result.commits) == (25, 3)
    assert result.per_second > 0
    with open_store(path, clock) as store:
        claimed = store.messages.claim("alice", 1, "t")
        assert [m.body for m in claimed] == [f"m{i}" for i in range(25)]
    with pytest.raises(ValueError, match="batch must be positive"):
        raw_insert_messages(path, "bench", "alice", ["x"], batch=0)


def test_closed_store_refuses_use(tmp_path: Path, clock: WallClock) -> None:
    store = open_store(tmp_path / "hive.db", clock)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="cannot use"):
        store.registry.agents()
    assert snapshot(tmp_path / "hive.db")["agents"] == []


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("max_body_bytes", 0, "max_body_bytes must be a positive"),
        ("busy_timeout_ms", -1, "0 or more"),
    ],
)
def test_bad_options_are_config_errors(
    tmp_path: Path, clock: WallClock, option: str, value: int, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        open_store(tmp_path / "hive.db", clock, **{option: value})
    assert not (tmp_path / "hive.db").exists()
