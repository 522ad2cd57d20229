"""The store's batch paths on a real sqlite file: multi-row inserts, enqueue_many, claim rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.errors import NotFound, Refused
from hive_actors.store import AgentState, MessageKind, MessageStatus, Role, SendRequest, Store
from hive_actors.store.db import ROWS_PER_INSERT
from hive_actors.store.events import encode_payload
from hive_actors.store.messages import sent_payload
from tests.support.store import WallClock, open_store

EVENT_COLUMNS = "INSERT INTO events (ts, kind, agent, payload)"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "hive.db", WallClock(), max_body_bytes=1024) as store:
        for name, role in (("boss", Role.MANAGER), ("alice", Role.AGENT), ("bob", Role.AGENT)):
            store.registry.register(name, role=role)
            store.registry.spawn(name)
            store.registry.set_state(name, AgentState.IDLE)
        yield store


def _payloads(store: Store, ids: list[int]) -> list[str]:
    marks = ",".join("?" * len(ids))
    rows = store.db.rows(f"SELECT id, payload FROM events WHERE id IN ({marks})", ids)
    by_id = {int(r[0]): str(r[1]) for r in rows}
    return [by_id[i] for i in ids]


def test_insert_rows_returns_the_stored_id_of_each_row_across_chunks(store: Store) -> None:
    count = 2 * ROWS_PER_INSERT + 5  # three statements
    rows = [(1.0, "test.row", None, f'{{"n": {n}}}') for n in range(count)]
    with store.db.transaction():
        ids = store.db.insert_rows(EVENT_COLUMNS, rows)
    assert len(set(ids)) == count
    assert _payloads(store, ids) == [f'{{"n": {n}}}' for n in range(count)]


def test_insert_rows_ids_follow_autoincrement_past_deleted_rows(store: Store) -> None:
    with store.db.transaction():
        first = store.db.insert_rows(EVENT_COLUMNS, [(1.0, "test.row", None, "{}")] * 10)
        # The newest rows go: a plain rowid table would hand their ids out again.
        store.db.execute("DELETE FROM events WHERE id > ?", (first[4],))
        again = store.db.insert_rows(
            EVENT_COLUMNS, [(1.0, "test.row", None, f'{{"n": {n}}}') for n in range(3)]
        )
    assert again == [first[-1] + 1, first[-1] + 2, first[-1] + 3]
    assert _payloads(store, again) == ['{"n": 0}', '{"n": 1}', '{"n": 2}']


@pytest.mark.parametrize("sender", ["alice", 'the "operator"', "Zoë\n", "🐝 keeper", ""])
def test_sent_payload_is_the_generic_encoding(sender: str) -> None:
    expected = encode_payload(
        {"id": 7, "from": sender, "kind": "peer", "bytes": 12, "generation": 3,
         "status": "queued"}
    )
    assert sent_payload(7, sender, "peer", 12, 3, "queued") == expected


def test_enqueue_many_keeps_order_ids_and_events_around_refusals(store: Store) -> None:
    requests: list[SendRequest] = []
    for n in range(ROWS_PER_INSERT + 8):
        requests.append(SendRequest("alice", "bob", f"m{n}"))
        if n % 10 == 3:
            requests.append(SendRequest("alice", "zed", "lost"))
        if n % 10 == 7:
            requests.append(SendRequest("alice", "boss", "boss only", MessageKind.MANAGER))
    requests.append(SendRequest("hive", "alice", "système", MessageKind.SYSTEM))
    results = store.messages.send_many(requests)
    refused = [r for r in results if isinstance(r, Refused)]
    assert [type(r) for r in refused] == [NotFound, Refused] * 4
    ids = [r for r in results if isinstance(r, int)]
    assert ids == sorted(ids) and len(ids) == ROWS_PER_INSERT + 9
    stored = [store.messages.get(i) for i in ids]
    assert [m.body for m in stored] == [f"m{n}" for n in range(ROWS_PER_INSERT + 8)] + ["système"]
    assert stored[-1].recipient == "alice" and stored[-1].kind is MessageKind.SYSTEM
    sent = [e for e in store.events.events_since(0) if e.kind == "message.sent"]
    assert [e.payload["id"] for e in sent] == ids
    assert sent[-1].payload == {"id": ids[-1], "from": "hive", "kind": "system",
                                "bytes": len("système".encode()), "generation": 1,
                                "status": "queued"}


def test_enqueue_many_needs_the_callers_transaction(store: Store) -> None:
    with pytest.raises(RuntimeError, match="outside a transaction"):
        store.messages.enqueue_many([SendRequest("alice", "bob", "hi")])


def test_a_refusal_per_pair_is_not_reused_for_the_next_request(store: Store) -> None:
    results = store.messages.send_many([SendRequest("alice", "zed", "a"),
                                        SendRequest("alice", "zed", "b")])
    assert all(isinstance(r, NotFound) for r in results)
    assert results[0] is not results[1]


def test_claimed_messages_are_the_rows_as_stored(store: Store) -> None:
    ids = [store.messages.send("alice", "bob", f"m{n}") for n in range(5)]
    store.messages.claim("bob", 1, "turn-1", limit=2)
    assert store.messages.release("turn-1") == 2
    claimed = store.messages.claim("bob", 1, "turn-2")
    assert [m.id for m in claimed] == ids
    assert claimed == [store.messages.get(i) for i in ids]
    assert [m.claims for m in claimed] == [2, 2, 1, 1, 1]
    assert all(m.status is MessageStatus.IN_FLIGHT and m.turn_id == "turn-2" for m in claimed)
    event = [e for e in store.events.events_since(0) if e.kind == "message.claimed"][-1]
    assert event.payload == {"turn_id": "turn-2", "generation": 1, "ids": ids}
    assert json.loads(json.dumps(event.payload))["ids"] == ids


def test_settle_reports_the_ids_in_order(store: Store) -> None:
    ids = [store.messages.send("alice", "bob", f"m{n}") for n in range(4)]
    store.messages.claim("bob", 1, "turn-1")
    assert store.messages.ack("turn-1") == 4
    event = [e for e in store.events.events_since(0) if e.kind == "message.delivered"][-1]
    assert event.agent == "bob" and event.payload["ids"] == ids
    assert all(store.messages.get(i).status is MessageStatus.DELIVERED for i in ids)
