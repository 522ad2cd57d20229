"""The bus's durable part on a real sqlite file: send, group commit, claim/ack/release, stale."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.errors import Conflict, NotFound, Refused
from hive_actors.store import (
    AgentState,
    InboxStats,
    MessageKind,
    MessageStatus,
    Role,
    SendRequest,
    Store,
)
from tests.support.store import T0, WallClock, counts, open_store, refused

S = AgentState
K = MessageKind


@pytest.fixture
def store(db_path: Path, clock: WallClock) -> Iterator[Store]:
    with open_store(db_path, clock, max_body_bytes=1024) as store:
        store.registry.register("boss", role=Role.MANAGER)
        for name in ("boss", "alice", "bob"):
            if name != "boss":
                store.registry.register(name)
            store.registry.spawn(name)
            store.registry.set_state(name, S.IDLE)
        yield store


def test_send_stores_the_current_generation_and_an_event(store: Store, clock: WallClock) -> None:
    clock.advance(1)
    message_id = store.messages.send("alice", "bob", "hello bob")
    message = store.messages.get(message_id)
    assert (message.sender, message.recipient, message.kind, message.body) == (
        "alice",
        "bob",
        K.PEER,
        "hello bob",
    )
    assert message.generation == store.registry.get("bob").generation == 1
    assert message.status is MessageStatus.QUEUED
    assert message.created == T0 + 1 and message.delivered is None
    event = store.events.events_since(0)[-1]
    assert event.kind == "message.sent" and event.agent == "bob"
    assert event.payload["id"] == message_id and event.payload["bytes"] == 9


def test_send_refusals_change_nothing(store: Store) -> None:
    send = store.messages.send
    refused(store, lambda: send("alice", "zed", "hi"), NotFound, "no agent named 'zed'")
    refused(store, lambda: send("ghost", "bob", "hi"), NotFound, "no agent named 'ghost'")
    refused(
        store,
        lambda: send("alice", "bob", "x" * 1025),
        Refused,
        "message body is 1025 bytes, over the 1024-byte limit",
    )
    refused(
        store, lambda: send("alice", "bob", "hi", K.MANAGER), Refused, "must come from the manager"
    )
    refused(
        store,
        lambda: send("alice", "bob", "hi", "gossip"),  # type: ignore[arg-type]
        Refused,
        "unknown message kind 'gossip'",
    )
    refused(store, lambda: send("", "bob", "hi", K.SYSTEM), Refused, "needs a sender")
    store.registry.set_state("bob", S.STOPPED)
    store.registry.destroy("bob", keep_state=True)
    refused(store, lambda: send("alice", "bob", "hi"), Refused, "bob: the agent was destroyed")


def test_send_many_is_one_transaction_with_a_result_each(store: Store) -> None:
    commits: list[int] = []

    def count_commit() -> bool:
        commits.append(1)
        return False  # False lets the commit go ahead

    store.db.connection.set_commit_hook(count_commit)
    try:
        results = store.messages.send_many(
            [
                SendRequest("alice", "bob", "one"),
                SendRequest("alice", "zed", "lost"),
                SendRequest("boss", "bob", "two", K.MANAGER),
                SendRequest("alice", "bob", "x" * 2000),
                SendRequest("hive", "alice", "three", K.SYSTEM),
            ]
        )
    finally:
        store.db.connection.set_commit_hook(None)
    assert commits == [1]
    ids = [r for r in results if isinstance(r, int)]
    refusals = [r for r in results if not isinstance(r, int)]
    assert [type(r) for r in refusals] == [NotFound, Refused]
    assert isinstance(results[1], NotFound) and "zed" in str(results[1])
    assert isinstance(results[3], Refused) and "2000 bytes" in str(results[3])
    assert [store.messages.get(i).body for i in ids] == ["one", "two", "three"]
    assert counts(store.path)["messages"] == 3
    sent = [e for e in store.events.events_since(0) if e.kind == "message.sent"]
    assert [e.payload["id"] for e in sent] == ids


def test_order_per_sender_and_recipient(store: Store) -> None:
    store.messages.send_many(
        [SendRequest(s, "bob", f"{s}{i}") for i in range(4) for s in ("alice", "boss")]
    )
    store.messages.send("alice", "bob", "alice4")
    claimed = store.messages.claim("bob", 1, "turn-1")
    for sender in ("alice", "boss"):
        bodies = [m.body for m in claimed if m.sender == sender]
        expected = [f"{sender}{i}" for i in range(5 if sender == "alice" else 4)]
        assert bodies == expected
    assert [m.id for m in claimed] == sorted(m.id for m in claimed)


def test_claim_ack_release(store: Store, clock: WallClock) -> None:
    ids = [store.messages.send("alice", "bob", f"m{i}") for i in range(5)]
    first = store.messages.claim("bob", 1, "turn-1", limit=2)
    assert [m.id for m in first] == ids[:2]
    assert all(m.status is MessageStatus.IN_FLIGHT and m.turn_id == "turn-1" for m in first)
    # A second recv in the same turn takes the next ones; nothing is handed out twice.
    second = store.messages.claim("bob", 1, "turn-1", limit=2)
    assert [m.id for m in second] == ids[2:4]
    assert store.messages.inbox_depth("bob") == 5
    clock.advance(3)
    assert store.messages.ack("turn-1") == 4
    assert store.messages.inbox_depth("bob") == 1
    assert store.messages.get(ids[0]).status is MessageStatus.DELIVERED
    assert store.messages.get(ids[0]).delivered == T0 + 3
    assert store.messages.ack("turn-1") == 0  # idempotent
    # A failed turn gives its messages back; the next turn gets them first, marked redelivered.
    third = store.messages.claim("bob", 1, "turn-2")
    assert [m.id for m in third] == ids[4:]
    later = store.messages.send("alice", "bob", "later")
    assert store.messages.release("turn-2") == 1
    again = store.messages.claim("bob", 1, "turn-3")
    assert [m.id for m in again] == [ids[4], later]
    assert [m.claims for m in again] == [2, 1]
    kinds = [e.kind for e in store.events.events_since(0)]
    assert {"message.claimed", "message.delivered", "message.released"} <= set(kinds)
    assert store.messages.claim("bob", 1, "turn-4") == []


def test_claim_refusals(store: Store) -> None:
    store.messages.send("alice", "bob", "hi")
    store.messages.send("bob", "alice", "hi")
    store.messages.claim("alice", 1, "shared")
    refused(
        store,
        lambda: store.messages.claim("bob", 7, "t"),
        Conflict,
        "agent bob is at generation 1, the turn asked for generation 7",
    )
    refused(
        store,
        lambda: store.messages.claim("bob", 1, "shared"),
        Conflict,
        "turn id 'shared' already holds messages of agent alice",
    )
    refused(store, lambda: store.messages.claim("zed", 1, "t"), NotFound, "'zed'")
    refused(store, lambda: store.messages.claim("bob", 1, ""), Refused, "needs a turn id")


def test_a_restart_keeps_the_mail_and_redelivers_what_a_cut_short_turn_took(
    store: Store,
) -> None:
    delivered = store.messages.send("alice", "bob", "read in gen 1")
    store.messages.claim("bob", 1, "turn-1")
    store.messages.ack("turn-1")
    taken = store.messages.send("alice", "bob", "taken by a turn that was cut short")
    store.messages.claim("bob", 1, "turn-2")
    queued = store.messages.send("alice", "bob", "still queued")
    store.registry.set_state("bob", S.CRASHED)
    after_crash = store.messages.send("alice", "bob", "after the crash")
    # A restart is no new incarnation: everything is still bob's, at his generation.
    bob = store.registry.spawn("bob")
    assert (bob.generation, bob.epoch) == (1, 2)
    assert store.messages.stale("bob") == []
    assert store.messages.ack("turn-2") == 0  # the cut-short turn's ack finds nothing
    again = store.messages.claim("bob", bob.generation, "turn-3")
    assert [m.id for m in again] == [taken, queued, after_crash]
    assert [m.claims for m in again] == [2, 1, 1]  # the prompt marks the first redelivered
    assert store.messages.get(delivered).status is MessageStatus.DELIVERED
    released = [e for e in store.events.events_since(0) if e.kind == "message.released"]
    assert released[-1].payload == {"turn_id": "turn-2", "ids": [taken],
                                    "reason": "agent started"}


def test_only_a_new_incarnation_makes_mail_stale(store: Store) -> None:
    store.messages.send("alice", "bob", "never read")
    store.messages.claim("bob", 1, "turn-1")
    store.messages.send("alice", "bob", "never claimed")
    store.registry.set_state("bob", S.STOPPED)
    store.registry.destroy("bob", keep_state=True)
    stale = store.messages.stale("bob")
    assert [m.body for m in reversed(stale)] == ["never read", "never claimed"]
    bob = store.registry.register("bob")
    assert bob.generation == 2
    fresh = store.messages.send("alice", "bob", "for the new bob")
    refused(store, lambda: store.messages.claim("bob", 1, "old"), Conflict, "generation 2")
    bob = store.registry.spawn("bob")
    assert [m.id for m in store.messages.claim("bob", bob.generation, "t")] == [fresh]
    assert store.messages.ack("turn-1") == 0


def test_messages_to_a_pending_agent_wait_for_its_first_spawn(store: Store) -> None:
    store.registry.register("carol")
    message_id = store.messages.send("boss", "carol", "welcome", K.MANAGER)
    carol = store.registry.spawn("carol")
    assert [m.id for m in store.messages.claim("carol", carol.generation, "t")] == [message_id]


def test_destroy_marks_the_inbox_stale(store: Store) -> None:
    store.messages.send("alice", "bob", "never read")
    store.registry.set_state("bob", S.STOPPED)
    store.registry.destroy("bob", keep_state=False)
    assert [m.body for m in store.messages.stale("bob")] == ["never read"]
    assert store.messages.inbox_depth("bob") == 0


def test_in_flight_is_released_at_hive_start(db_path: Path, clock: WallClock) -> None:
    with open_store(db_path, clock) as store:
        store.registry.register("alice")
        store.registry.spawn("alice")
        ids = [store.messages.send("op", "alice", f"m{i}", K.OPERATOR) for i in range(3)]
        store.messages.claim("alice", 1, "turn-1", limit=2)
        # The daemon dies here: the turn never acks.
    with open_store(db_path, clock) as other:  # another actor's connection: no recovery
        assert other.messages.get(ids[0]).status is MessageStatus.IN_FLIGHT
    with open_store(db_path, clock, recover=True) as store:
        assert store.messages.get(ids[0]).status is MessageStatus.QUEUED
        again = store.messages.claim("alice", 1, "turn-2")
        assert [m.id for m in again] == ids
        assert [m.claims for m in again] == [2, 2, 1]
        released = [e for e in store.events.events_since(0) if e.kind == "message.released"]
        assert released[-1].payload == {"ids": ids[:2], "reason": "startup", "turn_id": "turn-1"}


def test_inbox_metrics(store: Store, clock: WallClock) -> None:
    assert store.messages.inbox_depth("bob") == 0
    assert store.messages.oldest_age("bob") == 0.0
    store.messages.send("alice", "bob", "first")
    clock.advance(10)
    store.messages.send("alice", "bob", "second")
    store.messages.send("bob", "alice", "reply")
    clock.advance(5)
    assert store.messages.inbox_depth("bob") == 2
    assert store.messages.oldest_age("bob") == 15.0
    assert store.messages.oldest_age("bob", now=T0 + 100) == 100.0
    store.messages.claim("bob", 1, "t", limit=1)
    assert store.messages.inbox_depth("bob") == 2  # in flight is not consumed yet
    store.messages.ack("t")
    assert store.messages.oldest_age("bob") == 5.0
    assert store.messages.inbox_stats() == {
        "alice": InboxStats("alice", 1, 5.0),
        "bob": InboxStats("bob", 1, 5.0),
        "boss": InboxStats("boss", 0, 0.0),
    }


def test_many_messages_stay_fast_to_query(store: Store) -> None:
    # The partial index keeps the inbox queries on the undelivered rows only.
    plan = store.db.rows(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM messages "
        "WHERE recipient = ? AND status IN ('queued', 'in_flight')",
        ("bob",),
    )
    assert any("messages_open" in str(row[-1]) for row in plan)
