"""The manager's view of the other agents' repositories grows while its container runs: the
nixos backend tells (``view_changed``), and the manager's AgentActor has itself restarted by
the agents supervisor between two turns — a planned restart, not a crash — so a draft it
staged is mounted before its next turn."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hive_actors.containers import ContainerSpec
from hive_actors.containers.base import view_changed
from hive_actors.daemon import Daemon, make_backend
from hive_actors.modelserver import ModelServer
from hive_actors.store import EventKind, Role
from hive_actors.watcher.intents import WatchedBackend
from tests.support.hive import EventWatch, hive_config, send, start_tree
from tests.support.timeout import TIMEOUT
from tests.test_nixos_spawn import make_world

RESTART_LINE = "restarting to mount new agents' repositories"


# -- the backend -------------------------------------------------------------------------------


def test_nixos_tells_when_the_managers_view_grew(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    backend = world.backend
    world.register("boss", role=Role.MANAGER)
    world.register("alice")
    world.desk.settings("alice")
    world.desk.settings("boss")
    backend.create("alice", ContainerSpec())
    # A draft (no container yet): its state dir is in the manager's view too.
    world.desk.stage("dora", by="boss")
    backend.create("boss", ContainerSpec())
    assert not backend.view_changed("boss")  # created, never started by this backend
    backend.start("boss")
    backend.start("alice")
    assert not backend.view_changed("boss")
    assert not backend.view_changed("alice")

    # dora gets its container: the view loses dora's state bind, which needs no restart.
    backend.create("dora", ContainerSpec())
    assert not backend.view_changed("boss")

    # A draft staged while the manager's container runs: a restart would mount it.
    world.desk.stage("erin", by="boss")
    erin = world.hive.agent_paths("erin").config / "proposed"
    assert not any("/hive/agents/erin/" in f for f in world.conf_flags("boss"))
    assert backend.view_changed("boss")
    assert not backend.view_changed("alice")  # only the manager sees the others
    # The crash watcher's wrapper (what the AgentActors use) passes it on.
    assert WatchedBackend(backend, lambda message: None).view_changed("boss")
    assert view_changed(backend, "boss")

    backend.stop("boss")
    backend.start("boss")
    assert f"--bind={erin}:/hive/agents/erin/proposed:idmap" in world.conf_flags("boss")
    assert not backend.view_changed("boss")


def test_other_backends_never_ask_for_a_restart(tmp_path: Path) -> None:
    config = hive_config(tmp_path, "http://127.0.0.1:1")
    process = make_backend(config)
    try:
        assert process.view_changed("boss") is False  # type: ignore[attr-defined]
        assert WatchedBackend(process, lambda message: None).view_changed("boss") is False
    finally:
        process.close()
    # A backend without the optional method: no restart either.
    assert view_changed(object(), "boss") is False
    assert WatchedBackend(object(), lambda message: None).view_changed("boss") is False


# -- the actor and the supervisor --------------------------------------------------------------


class GrowsOnce:
    """An injected stand-in around the real process backend: the manager's view "grows" once,
    after ``arm()``; while the restart it causes stops the manager's container, ``during``
    runs once (the test sends a message then)."""

    def __init__(self, inner: Any, agent: str) -> None:
        self.inner = inner
        self.agent = agent
        self._armed = threading.Event()
        self._fired = threading.Event()
        self.during: Any = None

    def arm(self) -> None:
        self._armed.set()

    def view_changed(self, name: str) -> bool:
        if name == self.agent and self._armed.is_set() and not self._fired.is_set():
            self._fired.set()
            return True
        return False

    def stop(self, name: str, *, grace: Any = None) -> Any:
        if name == self.agent and self._fired.is_set() and self.during is not None:
            during, self.during = self.during, None
            during()
        return self.inner.stop(name, grace=grace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextmanager
def hive_with(tmp_path: Path, agents: dict[str, Role]) -> Iterator[tuple[Daemon, GrowsOnce,
                                                                        EventWatch]]:
    model = ModelServer()
    model.start()
    config = hive_config(tmp_path, model.url)
    backend = GrowsOnce(make_backend(config), "boss")
    daemon = Daemon(config, backend=backend, api_key="loopback-test-key")
    root = None
    try:
        root = start_tree(daemon, agents)
        yield daemon, backend, EventWatch(daemon.hive.open_store, daemon.hive.bell)
    finally:
        if root is not None:
            root.stop(block=True, timeout=TIMEOUT * 6)
        daemon.close()
        model.stop()


def test_the_manager_restarts_between_turns_when_its_view_grew(tmp_path: Path) -> None:
    with hive_with(tmp_path, {"boss": Role.MANAGER}) as (daemon, backend, events):
        first_up = events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE
                                   and e.agent == "boss" and e.payload["to"] == "idle")
        spawned = events.wait_for(lambda e: e.kind == EventKind.AGENT_SPAWNED
                                  and e.agent == "boss")
        epoch = spawned.payload["epoch"]
        sent: list[int] = []
        # Sent while the restart stops the old actor's container: it must reach the new one.
        backend.during = lambda: sent.append(send(daemon, "boss", "after the restart"))
        backend.arm()
        first = send(daemon, "boss", "stage a draft")

        ended = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "boss",
                                after=first_up.id)
        assert ended.payload["outcome"] == "ok", ended.payload
        line = events.wait_for(lambda e: e.kind == EventKind.TURN_LOG and e.agent == "boss"
                               and e.payload["line"] == RESTART_LINE, after=ended.id)
        assert line.payload["turn_id"] == ended.payload["turn_id"]
        respawned = events.wait_for(lambda e: e.kind == EventKind.AGENT_SPAWNED
                                    and e.agent == "boss", after=line.id)
        assert respawned.payload["epoch"] == epoch + 1
        assert respawned.payload["generation"] == spawned.payload["generation"]

        # The new actor's turn takes the message sent during the restart, and only it.
        started = events.wait_for(lambda e: e.kind == EventKind.TURN_STARTED
                                  and e.agent == "boss", after=respawned.id)
        assert sent and started.payload["messages"] == sent
        assert started.payload["turn_id"].startswith(f"boss-{epoch + 1}-")
        second = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "boss",
                                 after=started.id)
        assert second.payload["outcome"] == "ok", second.payload
        delivered = events.wait_for(lambda e: e.kind == EventKind.MESSAGE_DELIVERED
                                    and sent[0] in e.payload["ids"], after=started.id)
        idle = events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "boss"
                               and e.payload["to"] == "idle", after=second.id)

        with daemon.hive.open_store() as store:
            row = store.registry.get("boss")
            assert str(row.state) == "idle" and row.epoch == epoch + 1
            everything = store.events.events_since(0, 100_000)
        boss = [e for e in everything if e.agent == "boss" and e.id <= max(idle.id,
                                                                            delivered.id)]
        # A planned restart: no crash, no restart counted, no notice.
        kinds = {e.kind for e in boss}
        assert EventKind.AGENT_CRASHED not in kinds
        assert EventKind.AGENT_RESTARTING not in kinds
        assert EventKind.AGENT_GIVEN_UP not in kinds
        states = [e.payload["to"] for e in boss if e.kind == EventKind.AGENT_STATE]
        assert not {"crashed", "backoff", "given_up"} & set(states), states
        # The first message was delivered once, by the first turn (acked before the restart).
        firsts = [e for e in boss if e.kind == EventKind.TURN_STARTED
                  and first in e.payload["messages"]]
        assert len(firsts) == 1
        assert sum(1 for e in boss if e.kind == EventKind.AGENT_SPAWNED) == 2
