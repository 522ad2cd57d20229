"""The agent registry on a real sqlite file: lifecycle, generations, ports, model overrides."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from hive_actors.errors import ConfigError, Conflict, NotFound, Refused
from hive_actors.store import TRANSITIONS, AgentState, MessageKind, Role, Store
from hive_actors.store.rules import ENTERED_VIA
from tests.support.store import T0, WallClock, open_store, refused, snapshot

S = AgentState


@pytest.fixture
def store(state_store: Store) -> Store:
    """The store of these tests: ``state_store`` (agents' state dirs under ``state_root``)."""
    return state_store


def _run(store: Store, name: str, *states: AgentState) -> None:
    for state in states:
        store.registry.set_state(name, state)


def test_register_and_read_back(store: Store, clock: WallClock) -> None:
    agent = store.registry.register("alice", web_port=8101)
    assert agent.name == "alice"
    assert agent.role is Role.AGENT
    assert agent.state is S.PENDING
    assert (agent.generation, agent.epoch) == (1, 0)
    assert agent.web_port == 8101
    assert agent.model is None and not agent.kept_state
    assert agent.created == agent.updated == T0
    assert store.registry.get("alice") == agent
    assert store.registry.find("bob") is None
    event = store.events.events_since(0)[-1]
    assert (event.kind, event.agent, event.payload["state"]) == (
        "agent.registered",
        "alice",
        "pending",
    )


def test_register_refusals_change_nothing(store: Store) -> None:
    store.registry.register("manager", role=Role.MANAGER, web_port=8000)
    store.registry.register("alice")
    refused(store, lambda: store.registry.register("Alice"), ConfigError, "'Alice' is invalid")
    refused(store, lambda: store.registry.register("alice"), Conflict, "already exists")
    refused(
        store,
        lambda: store.registry.register("boss", role=Role.MANAGER),
        Conflict,
        "manager is the manager",
    )
    refused(
        store,
        lambda: store.registry.register("bob", web_port=8000),
        Conflict,
        "used by agent manager",
    )
    refused(
        store, lambda: store.registry.register("bob", web_port=70000), ConfigError, "1 to 65535"
    )
    refused(
        store,
        lambda: store.registry.register("bob", state=S.IDLE),
        Refused,
        "starts as draft or pending",
    )
    refused(store, lambda: store.registry.get("bob"), NotFound, "no agent named 'bob'")


def test_set_state_follows_the_table_and_records_events(store: Store, clock: WallClock) -> None:
    store.registry.register("alice")
    store.registry.spawn("alice")
    clock.advance(5)
    agent = store.registry.set_state("alice", S.IDLE, reason="ready")
    assert agent.state is S.IDLE and agent.updated == T0 + 5
    last = store.events.events_since(0)[-1]
    assert last.kind == "agent.state"
    assert last.payload == {"from": "starting", "to": "idle", "reason": "ready"}
    # The same state again is not a move: no event.
    last_id = store.events.last_event_id()
    assert store.registry.set_state("alice", S.IDLE) == agent
    assert store.events.last_event_id() == last_id
    refused(
        store,
        lambda: store.registry.set_state("alice", S.GIVEN_UP),
        Conflict,
        "agent alice cannot go from idle to given_up",
    )
    refused(
        store, lambda: store.registry.set_state("alice", S.STARTING), Refused, r"only through spawn"
    )
    refused(store, lambda: store.registry.set_state("zed", S.IDLE), NotFound, "'zed'")


def test_spawn_bumps_the_epoch_never_the_generation(store: Store) -> None:
    store.registry.register("alice")
    assert store.registry.spawn("alice").epoch == 1
    refused(
        store,
        lambda: store.registry.spawn("alice"),
        Conflict,
        "cannot go from starting to starting",
    )
    _run(store, "alice", S.IDLE, S.BUSY, S.CRASHED, S.BACKOFF)
    agent = store.registry.spawn("alice")
    assert (agent.generation, agent.epoch, agent.state) == (1, 2, S.STARTING)
    spawned = [e for e in store.events.events_since(0) if e.kind == "agent.spawned"]
    assert [(e.payload["generation"], e.payload["epoch"]) for e in spawned] == [(1, 1), (1, 2)]


def test_a_restart_moves_a_running_agent_to_starting_in_one_step(store: Store) -> None:
    store.registry.register("alice")
    store.registry.spawn("alice")
    _run(store, "alice", S.IDLE, S.BUSY)
    refused(store, lambda: store.registry.spawn("alice"), Conflict, "from busy to starting")
    agent = store.registry.spawn("alice", restarted=True)
    assert (agent.state, agent.epoch) == (S.STARTING, 2)
    moves = [e.payload for e in store.events.events_since(0) if e.kind == "agent.state"]
    assert moves[-1] == {"from": "busy", "to": "stopped", "reason": "hive restarted"}
    # An operator's stop is not a restart's: it is never resumed by itself.
    _run(store, "alice", S.IDLE)
    store.registry.set_state("alice", S.STOPPED, reason="operator stop")
    assert store.registry.stopped_by_restart() == []


def test_an_agent_left_stopped_by_an_older_hive_restart_is_found(store: Store) -> None:
    store.registry.register("alice")
    store.registry.register("bob")
    for name in ("alice", "bob"):
        store.registry.spawn(name)
        _run(store, name, S.IDLE)
    # What a hive before the one-step restart left behind when killed between its two steps.
    store.registry.set_state("alice", S.STOPPED, reason="hive restarted")
    store.registry.set_state("bob", S.STOPPED, reason="operator stop")
    assert store.registry.stopped_by_restart() == ["alice"]


def test_destroy_keeps_or_purges_state(store: Store) -> None:
    for name in ("alice", "bob"):
        store.registry.register(name)
        store.registry.spawn(name)
        store.registry.set_state(name, S.STOPPED)
    refused(
        store,
        lambda: store.registry.set_state("alice", S.DESTROYED),
        Refused,
        "only through destroy",
    )
    kept = store.registry.destroy("alice", keep_state=True)
    purged = store.registry.destroy("bob", keep_state=False)
    assert kept.state is purged.state is S.DESTROYED
    assert kept.kept_state and not purged.kept_state
    assert [a.name for a in store.registry.kept_state()] == ["alice"]
    assert store.events.events_since(0)[-1].payload["kept_state"] is False
    refused(
        store,
        lambda: store.registry.set_state("alice", S.STOPPED),
        Refused,
        "register it again",
    )


def test_a_purge_ends_kept_state_once(store: Store) -> None:
    for name in ("alice", "bob", "carol"):
        store.registry.register(name)
        store.registry.spawn(name)
        store.registry.set_state(name, S.STOPPED)
    store.registry.destroy("alice", keep_state=True)
    store.registry.destroy("bob", keep_state=False)
    purged = store.registry.purge("alice")
    assert (purged.state, purged.kept_state) == (S.DESTROYED, False)
    assert store.registry.kept_state() == []
    assert store.events.events_since(0)[-1].payload == {
        "from": "destroyed", "kept_state": False, "purged": True}
    for name, why in (("alice", "destroyed with no kept state"),
                      ("bob", "destroyed with no kept state"),
                      ("carol", "is stopped: only a destroyed agent")):
        refused(store, lambda name=name: store.registry.purge(name), Conflict, why)
    refused(store, lambda: store.registry.purge("nobody"), NotFound, "nobody")


def test_destroy_needs_the_container_down(store: Store) -> None:
    store.registry.register("alice")
    store.registry.spawn("alice")
    store.registry.set_state("alice", S.IDLE)
    refused(
        store,
        lambda: store.registry.destroy("alice", keep_state=True),
        Conflict,
        "cannot go from idle to destroyed",
    )


def test_a_destroyed_name_comes_back_with_a_higher_generation(store: Store) -> None:
    store.registry.register("alice", web_port=8101)
    store.registry.spawn("alice")
    store.registry.set_state("alice", S.STOPPED)
    store.registry.destroy("alice", keep_state=True)
    # Its port is free for others while it is destroyed.
    store.registry.register("bob", web_port=8101)
    store.registry.set_port("bob", 8102)
    again = store.registry.register("alice")
    assert again.state is S.PENDING and not again.kept_state and again.web_port == 8101
    assert again.generation == 2
    assert store.registry.spawn("alice").generation == 2
    assert store.registry.kept_state() == []


def test_ports(store: Store) -> None:
    store.registry.register("alice", web_port=8101)
    store.registry.register("bob")
    assert store.registry.set_port("bob", 8102).web_port == 8102
    refused(store, lambda: store.registry.set_port("bob", 8101), Conflict, "used by agent alice")
    refused(store, lambda: store.registry.set_port("bob", 0), ConfigError, "invalid")
    assert store.registry.set_port("bob", None).web_port is None
    assert store.events.events_since(0)[-1].payload == {"from": 8102, "to": None}


def test_manager_lookup(store: Store) -> None:
    assert store.registry.manager() is None
    store.registry.register("boss", role=Role.MANAGER)
    store.registry.register("alice", state=S.DRAFT)
    manager = store.registry.manager()
    assert manager is not None and manager.name == "boss"
    assert [a.name for a in store.registry.agents([S.DRAFT])] == ["alice"]
    assert [a.name for a in store.registry.agents()] == ["alice", "boss"]


# --- the lifecycle, against the table -----------------------------------------------------


class LifecycleMachine(RuleBasedStateMachine):
    """Random moves on a real file; the model is the pure table. Refusals change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="hive-lifecycle-"))
        self.store = open_store(self.dir / "hive.db", WallClock())
        self.store.registry.register("alice")
        self.state = S.PENDING
        self.generation = 1
        self.kept = False

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)

    def _expect(self, call: Callable[[], Any], legal: bool) -> None:
        before = snapshot(self.store.path)
        if legal:
            call()
        else:
            with pytest.raises(Refused):
                call()
            assert snapshot(self.store.path) == before

    @rule(to=st.sampled_from([s for s in AgentState if s not in ENTERED_VIA]))
    def set_state(self, to: AgentState) -> None:
        legal = to is self.state or (
            self.state is not S.DESTROYED and to in TRANSITIONS[self.state]
        )
        self._expect(lambda: self.store.registry.set_state("alice", to), legal)
        if legal:
            self.state = to

    @rule()
    def spawn(self) -> None:
        legal = S.STARTING in TRANSITIONS[self.state]
        self._expect(lambda: self.store.registry.spawn("alice"), legal)
        if legal:
            self.state = S.STARTING

    @rule(keep=st.booleans())
    def destroy(self, keep: bool) -> None:
        legal = S.DESTROYED in TRANSITIONS[self.state]
        self._expect(lambda: self.store.registry.destroy("alice", keep_state=keep), legal)
        if legal:
            self.state, self.kept = S.DESTROYED, keep

    @precondition(lambda self: self.state is S.DESTROYED)
    @rule(draft=st.booleans())
    def register_again(self, draft: bool) -> None:
        self.store.registry.register("alice", state=S.DRAFT if draft else S.PENDING)
        self.state, self.kept = (S.DRAFT if draft else S.PENDING), False
        self.generation += 1

    @rule()
    def send(self) -> None:
        legal = self.state is not S.DESTROYED
        self._expect(
            lambda: self.store.messages.send("op", "alice", "hi", MessageKind.OPERATOR), legal
        )

    @rule()
    def check(self) -> None:
        agent = self.store.registry.get("alice")
        assert (agent.state, agent.generation, agent.kept_state) == (
            self.state,
            self.generation,
            self.kept,
        )
        # Everything undelivered is the current incarnation's.
        for message in self.store.messages.undelivered("alice"):
            assert message.generation == agent.generation


LifecycleMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lifecycle_against_the_table = LifecycleMachine.TestCase
