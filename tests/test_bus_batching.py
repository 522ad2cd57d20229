"""The bus's group commit of sends, claims and acks, its mailbox and its reply futures."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import pykka
import pytest

from hive_actors.config import load_config
from hive_actors.errors import Conflict
from hive_actors.protocol import Ack, Claim, Send
from hive_actors.services.bus import _Mailbox, _ReplyFuture, messages_to_await
from hive_actors.store import AgentState, Role, Store
from hive_actors.supervisors.root import start_root
from hive_actors.testing.counting import CountingHive
from tests.support.timeout import TIMEOUT


def test_claims_and_acks_ride_in_the_commit_of_the_sends_before_them(tmp_path: Path) -> None:
    hive = CountingHive(load_config(None, state_dir=str(tmp_path)))
    children, flags = hive.tree()
    start_root(children, flags, ready_timeout=TIMEOUT)
    with hive.open_store() as store:
        for name, role in (("boss", Role.MANAGER), ("alice", Role.AGENT), ("bob", Role.AGENT)):
            store.registry.register(name, role=role)
            store.registry.spawn(name)
            store.registry.set_state(name, AgentState.IDLE)
        generation = store.registry.get("bob").generation
    bus = hive.directory.wait("bus", TIMEOUT)
    before = hive.commits
    # Another connection holds the write lock: the bus's first commit waits for it, and the
    # burst below queues up in its mailbox meanwhile.
    blocker = Store.open(hive.config.db_path)
    try:
        blocker.db.execute("BEGIN IMMEDIATE")
        first = bus.ask(Send("alice", "bob", "first"), block=False)
        burst = [
            bus.ask(Send("alice", "bob", "one"), block=False),
            bus.ask(Send("boss", "bob", "two"), block=False),
            bus.ask(Claim("bob", generation + 1, "wrong-generation"), block=False),
            bus.ask(Claim("bob", generation, "turn-1"), block=False),
            bus.ask(Send("alice", "bob", "three"), block=False),
            bus.ask(Ack("turn-1"), block=False),
            bus.ask(Ack("no-such-turn"), block=False),
        ]
        blocker.db.execute("ROLLBACK")
    finally:
        blocker.close()
    first_id = first.get(timeout=TIMEOUT)
    one, two = burst[0].get(timeout=TIMEOUT), burst[1].get(timeout=TIMEOUT)
    with pytest.raises(Conflict, match="generation"):
        burst[2].get(timeout=TIMEOUT)
    claimed = burst[3].get(timeout=TIMEOUT)
    three = burst[4].get(timeout=TIMEOUT)
    # The claim sees every send before it and none after it; the refused claim next to it
    # changed nothing and held nothing back.
    assert [(m.id, m.body) for m in claimed] == [(first_id, "first"), (one, "one"), (two, "two")]
    assert burst[5].get(timeout=TIMEOUT) == 3
    assert burst[6].get(timeout=TIMEOUT) == 0
    assert first_id < one < two < three
    # One commit for the first send, at most one more for the whole burst (the old bus
    # committed each claim and each ack on its own).
    assert hive.commits - before <= 2
    with hive.open_store() as store:
        assert [m.body for m in store.messages.undelivered("bob")] == ["three"]
        kinds = [e.kind for e in store.events.events_since(0) if e.kind.startswith("message.")]
        assert kinds == ["message.sent"] * 3 + ["message.claimed", "message.sent",
                                                "message.delivered"]


@pytest.mark.parametrize(
    ("expected", "batched", "gathered", "awaited"),
    [(16, 3, False, 13), (16, 3, True, 0), (16, 16, False, 0), (16, 20, False, 0),
     (0, 1, False, 0), (5, 0, False, 0)],
)
def test_messages_to_await(expected: int, batched: int, gathered: bool, awaited: int) -> None:
    assert messages_to_await(expected, batched, gathered) == awaited


def test_mailbox_is_a_fifo_that_can_be_waited_on() -> None:
    mailbox = _Mailbox()
    assert mailbox.empty()
    assert not mailbox.wait_for(1, 0.01)  # nothing comes: the wait ends at its timeout
    mailbox.put("a")
    assert mailbox.wait_for(1, TIMEOUT)
    results: queue.SimpleQueue[bool] = queue.SimpleQueue()
    waiter = threading.Thread(target=lambda: results.put(mailbox.wait_for(3, TIMEOUT)))
    waiter.start()
    mailbox.put("b")
    mailbox.put("c")
    waiter.join(TIMEOUT)
    assert results.get(timeout=TIMEOUT) is True
    # The wake-up was used up: a wait that nothing completes still times out.
    assert not mailbox.wait_for(4, 0.01)
    assert [mailbox.get(), mailbox.get(), mailbox.get()] == ["a", "b", "c"]
    assert mailbox.empty()


def test_reply_future_behaves_like_pykkas() -> None:
    future = _ReplyFuture()
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0)
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0.01)
    waiters: queue.SimpleQueue[Any] = queue.SimpleQueue()
    threads = [threading.Thread(target=lambda: waiters.put(future.get(timeout=TIMEOUT)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    doubled = future.map(lambda value: value * 2)
    future.set(21)
    for thread in threads:
        thread.join(TIMEOUT)
    assert [waiters.get(timeout=TIMEOUT) for _ in threads] == [21, 21, 21]
    assert future.get() == 21 and doubled.get(timeout=TIMEOUT) == 42
    with pytest.raises(queue.Full):
        future.set(0)
    failed = _ReplyFuture()
    failed.set_exception(exc_info=(Conflict, Conflict("taken"), None))
    with pytest.raises(Conflict, match="taken"):
        failed.get(timeout=TIMEOUT)
    other = _ReplyFuture()
    other.set("x")
    assert pykka.get_all([future, other], timeout=TIMEOUT) == [21, "x"]
    assert future.join(other).get(timeout=TIMEOUT) == [21, "x"]
