"""Give-up is bounded: an agent that can never start is given up within its limits, and its
backoff (or its slow start) never holds up the other agents' starts.

The first two tests run real actors under a supervisor that queues its children as the agents'
supervisor does (no caller waiting on a start), in virtual time with the agents' default
``[supervision]`` limits; the last one runs a real hive and reads the manager's notice.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hive_actors.actor import HiveActor
from hive_actors.agent.notices import notice_text
from hive_actors.agent.supervisor import AgentsSupervisor, SpawnAgent
from hive_actors.config import SupervisionConfig
from hive_actors.hive import agents_flags
from hive_actors.store import AgentState, EventKind, MessageKind, Role
from hive_actors.supervisors import ChildEvent, ChildSpec, Supervisor
from tests.support.hive import agent_whose_server_is_gone, running_hive
from tests.support.supervision import Child, Journal, Tree
from tests.support.timeout import TIMEOUT

GOOD = [f"good{i:02d}" for i in range(20)]
FLAGS, LIMIT = agents_flags(SupervisionConfig())


@dataclass(frozen=True)
class Resume:
    """Queue these children, as the agents' supervisor queues the agents it resumes."""

    specs: tuple[ChildSpec, ...]


class Agents(Supervisor):
    """A supervisor whose start queue works as the agents' supervisor's does."""

    concurrent_starts = AgentsSupervisor.concurrent_starts

    def receive(self, message: Any) -> Any:
        if isinstance(message, Resume):
            for spec in message.specs:
                self._policy.add(spec)
                self._queue.append(spec.id)
            self._pump()
            return None
        return super().receive(message)


class OneAtATime(Agents):
    """The same, starting one child at a time: only the backoff is out of the queue's way."""

    concurrent_starts = 1


class Broken(HiveActor):
    """A child that can never start: it fails in ``on_start``, as an AgentActor whose container
    does not come up does."""

    def __init__(self, cid: str, journal: Journal) -> None:
        super().__init__(name=cid)
        self.cid, self.journal = cid, journal

    def on_start(self) -> None:
        self.journal.add(f"start {self.cid}")
        raise OSError("container did not come up")


def spec(cid: str, journal: Journal, *, ready: bool = True) -> ChildSpec:
    """An agent-like child: its limit and ready timeout are the agents' (120 s)."""
    return ChildSpec(cid, lambda: Child.start(cid, journal, ready=ready), ready_timeout=120.0,
                     limit=LIMIT)


def next_of(tree: Tree, cid: str, *kinds: str) -> ChildEvent:
    """The next event of one of ``kinds`` for ``cid`` (others are skipped)."""
    while True:
        ev = tree.events.get(timeout=TIMEOUT)
        if ev.child == cid and ev.kind in kinds:
            return ev


def start_all(tree: Tree, first: ChildSpec, j: Journal) -> list[ChildEvent]:
    """Queue ``first``, then the twenty good children; wait for the twenty to be started
    without moving the clock. Returns ``first``'s events meanwhile."""
    before = tree.clock.now()
    tree.ref.tell(Resume((first, *(spec(c, j) for c in GOOD))))
    started: set[str] = set()
    seen: list[ChildEvent] = []
    try:
        while started != set(GOOD):
            ev = tree.events.get(timeout=TIMEOUT)
            if ev.child == first.id:
                seen.append(ev)
            elif ev.kind == "started":
                started.add(ev.child)
    except queue.Empty:
        raise AssertionError(
            f"only {sorted(started)} started while {first.id} was starting or backing off"
        ) from None
    assert tree.clock.now() == before  # no one waited for a timer: the clock never moved
    return seen


def test_a_never_ready_agent_is_given_up_after_n_attempts_and_holds_up_no_one() -> None:
    assert LIMIT.consecutive == 10 and AgentsSupervisor.concurrent_starts > 1
    j = Journal()
    tree = Tree([], FLAGS, kind=Agents)
    assert start_all(tree, spec("slow", j, ready=False), j) == []
    assert j.lines[0] == "start slow"  # first in the queue, yet still starting
    assert tree.stats("slow").state == "starting"
    attempts = 0
    while True:
        attempts += 1
        assert tree.clock.wait_pending(1, TIMEOUT)  # its ready timeout
        tree.clock.advance(120.0)
        ev = next_of(tree, "slow", "restarting", "given_up")
        if ev.kind == "given_up":
            break
        # Its backoff grew past the 60 s window long ago: only the count in a row stops it.
        tree.clock.advance(ev.delay)
    assert attempts == 10 and j.lines.count("start slow") == 10
    assert (ev.limit, ev.count, ev.restarts) == ("consecutive", 10, 9)
    assert ev.detail == ("slow given up after 10 failures in a row (limit 10); last failure: "
                         "failed to start: did not become ready within 120 s")
    assert tree.stats("slow").state == "given_up"
    assert [(tree.stats(c).state, tree.stats(c).restarts) for c in GOOD] == [("running", 0)] * 20


def test_an_agent_in_backoff_holds_up_no_one_even_one_start_at_a_time() -> None:
    j = Journal()
    tree = Tree([], FLAGS, kind=OneAtATime)
    boom = ChildSpec("boom", lambda: Broken.start("boom", j), ready_timeout=120.0, limit=LIMIT)
    seen = start_all(tree, boom, j)
    # It failed, and its first restart is not due yet, while the twenty behind it started.
    assert [e.kind for e in seen] == ["start_failed", "restarting"] and seen[1].delay == 1.0
    assert tree.stats("boom").state == "backoff"
    assert j.lines[0] == "start boom" and j.lines.count("start boom") == 1
    attempts, ev = 1, seen[1]
    while ev.kind == "restarting":
        tree.clock.advance(ev.delay)
        attempts += 1
        ev = next_of(tree, "boom", "restarting", "given_up")
    # Quick failures (backoff 1, 2, 4, 8, 16 s): the window fills first.
    assert (attempts, ev.limit) == (6, "window")
    assert ev.detail.startswith("boom given up after 5 restarts in 60 s (limit 5); last failure: ")
    assert "OSError: container did not come up" in ev.detail
    assert [tree.stats(c).state for c in GOOD] == ["running"] * 20


def test_the_manager_is_told_which_limit_gave_an_agent_up(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER}, agent_restarts=100,
                      agent_max_consecutive_failures=3, backoff_min=0.05,
                      backoff_max=0.1) as (daemon, _root, _model, events):
        server = agent_whose_server_is_gone(daemon, tmp_path, "eve")
        daemon.hive.directory.get("agents").tell(SpawnAgent("eve"))
        given_up = events.wait_for(lambda e: e.kind == EventKind.AGENT_GIVEN_UP
                                   and e.agent == "eve")
        notice = given_up.payload["notice"]
        assert notice.startswith(
            "eve given up after 3 failures in a row (limit [supervision] "
            "agent_max_consecutive_failures = 3); last: failed to start: "), notice
        assert notice.endswith("; it stays down until the operator revives it")
        assert str(server) in notice
        assert (given_up.payload["limit_hit"], given_up.payload["crashes"],
                given_up.payload["told"]) == ("consecutive", 3, "boss")
        restarts = [e for e in events.events
                    if e.kind == EventKind.AGENT_RESTARTING and e.agent == "eve"]
        assert len(restarts) == 2
        with daemon.hive.open_store() as store:
            assert store.registry.get("eve").state == AgentState.GIVEN_UP
        def is_the_notice(e: Any) -> bool:
            # The bus may commit the notice before the supervisor records agent.given_up:
            # it is found by its words, not by its place after that event.
            if not (e.kind == EventKind.MESSAGE_SENT and e.agent == "boss"
                    and e.payload.get("from") == "hive"):
                return False
            with daemon.hive.open_store() as store:
                return notice_text(store.messages.get(e.payload["id"]).body) == notice

        told = events.wait_for(is_the_notice)
        with daemon.hive.open_store() as store:
            message = store.messages.get(told.payload["id"])
        assert (message.kind, notice_text(message.body)) == (MessageKind.SYSTEM, notice)
