"""BusActor and ApprovalQueueActor in a real tree on a real sqlite file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pykka
import pytest

from hive_actors import lifecycle
from hive_actors.config import load_config
from hive_actors.errors import Conflict, NotFound, Refused, UnexpectedMessage
from hive_actors.hive import Hive
from hive_actors.messages import Crashed
from hive_actors.protocol import (
    Ack,
    AnswerQuestion,
    AskOperator,
    Claim,
    Decide,
    DecisionMade,
    GetModel,
    InboxStatsRequest,
    ListApprovals,
    ListQuestions,
    MailArrived,
    Release,
    RequestApproval,
    Send,
    SetModel,
    Subscribe,
)
from hive_actors.store import AgentState, ApprovalKind, MessageKind, Role, Store
from hive_actors.supervisors import SupervisorClient
from hive_actors.supervisors.root import start_root
from tests.support.probe import ProbeHandle
from tests.support.timeout import TIMEOUT


class Running:
    def __init__(self, tmp_path: Path) -> None:
        self.hive = Hive(load_config(None, state_dir=str(tmp_path)))
        children, flags = self.hive.tree()
        self.root = start_root(children, flags, ready_timeout=TIMEOUT)
        with self.hive.open_store() as store:
            for name, role in (("boss", Role.MANAGER), ("alice", Role.AGENT), ("bob", Role.AGENT)):
                store.registry.register(name, role=role)
                store.registry.spawn(name)
                store.registry.set_state(name, AgentState.IDLE)

    @property
    def bus(self) -> pykka.ActorRef[Any]:
        return self.hive.directory.get("bus")

    @property
    def approvals(self) -> pykka.ActorRef[Any]:
        return self.hive.directory.get("approvals")

    def generation(self, name: str) -> int:
        with self.hive.open_store() as store:
            return store.registry.get(name).generation


@pytest.fixture
def hive(tmp_path: Path) -> Running:
    return Running(tmp_path)


def test_send_is_acknowledged_after_commit_and_delivered_in_order(hive: Running) -> None:
    ids = [hive.bus.ask(Send("alice", "bob", f"m{i}"), timeout=TIMEOUT) for i in range(5)]
    # A separate connection sees every acknowledged message: it was committed before the ack.
    with hive.hive.open_store() as store:
        assert [store.messages.get(i).body for i in ids] == [f"m{i}" for i in range(5)]
    claimed = hive.bus.ask(Claim("bob", hive.generation("bob"), "t1"), timeout=TIMEOUT)
    assert [m.body for m in claimed] == [f"m{i}" for i in range(5)]
    assert hive.bus.ask(Ack("t1"), timeout=TIMEOUT) == 5
    assert hive.bus.ask(Claim("bob", hive.generation("bob"), "t2"), timeout=TIMEOUT) == []


def test_concurrent_senders_are_group_committed_and_keep_their_order(hive: Running) -> None:
    senders, each = 16, 25
    results: dict[int, list[int]] = {}
    go = threading.Barrier(senders)

    def sender(k: int) -> None:
        go.wait(TIMEOUT)
        results[k] = [
            hive.bus.ask(Send("alice", "bob", f"{k}:{i}"), timeout=TIMEOUT) for i in range(each)
        ]

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(len(v) for v in results.values()) == [each] * senders
    claimed = hive.bus.ask(Claim("bob", hive.generation("bob"), "t"), timeout=TIMEOUT)
    assert len(claimed) == senders * each
    for k in range(senders):
        mine = [m.body for m in claimed if m.body.startswith(f"{k}:")]
        assert mine == [f"{k}:{i}" for i in range(each)]
    assert all(ids == sorted(ids) for ids in results.values())


def test_bad_sends_are_refused_and_the_bus_lives_on(hive: Running) -> None:
    with pytest.raises(NotFound, match="zed"):
        hive.bus.ask(Send("alice", "zed", "hi"), timeout=TIMEOUT)
    with pytest.raises(Refused, match="bytes"):
        hive.bus.ask(Send("alice", "bob", "x" * (64 * 1024 + 1)), timeout=TIMEOUT)
    assert hive.bus.ask(InboxStatsRequest(), timeout=TIMEOUT)["bob"].depth == 0
    assert isinstance(hive.bus.ask(Send("alice", "bob", "still here"), timeout=TIMEOUT), int)


def test_subscriber_hears_of_new_mail_and_a_released_turn_is_redelivered(
    hive: Running, probe: ProbeHandle
) -> None:
    hive.bus.ask(Subscribe("bob", probe.ref), timeout=TIMEOUT)
    hive.bus.ask(Send("alice", "bob", "work"), timeout=TIMEOUT)
    assert probe.get() == MailArrived("bob")
    gen = hive.generation("bob")
    assert [m.body for m in hive.bus.ask(Claim("bob", gen, "turn-1"), timeout=TIMEOUT)] == ["work"]
    # The turn crashed: its messages go back and the agent is woken again.
    assert hive.bus.ask(Release("turn-1", "turn crashed"), timeout=TIMEOUT) == 1
    assert probe.get() == MailArrived("bob")
    again = hive.bus.ask(Claim("bob", gen, "turn-2"), timeout=TIMEOUT)
    assert [(m.body, m.claims) for m in again] == [("work", 2)]


def test_model_override_is_read_back_and_can_persist(hive: Running, tmp_path: Path) -> None:
    assert hive.bus.ask(GetModel("alice"), timeout=TIMEOUT) is None
    hive.bus.ask(SetModel("alice", "opus", persist=True), timeout=TIMEOUT)
    assert hive.bus.ask(GetModel("alice"), timeout=TIMEOUT) == "opus"
    assert (tmp_path / "agents" / "alice" / "state" / "model").read_text().strip() == "opus"
    hive.bus.ask(SetModel("alice", None), timeout=TIMEOUT)
    assert hive.bus.ask(GetModel("alice"), timeout=TIMEOUT) is None


def test_a_bus_crash_is_restarted_and_sends_work_again(hive: Running) -> None:
    old = hive.bus
    # A message outside BusMessage is a bug: the asker is told which actor got which type, and
    # the bus crashes.
    with pytest.raises(UnexpectedMessage, match=r"^BusActor\(bus\) got an unexpected message "
                       r"of type str: 'junk'$"):
        old.ask("junk", timeout=TIMEOUT)
    assert isinstance(lifecycle.wait_exit(old, TIMEOUT), Crashed)
    new = hive.hive.directory.wait("bus", TIMEOUT, other_than=old)
    stats = {s.id: s for s in SupervisorClient(hive.root).statistics()}
    assert stats["bus"].restarts == 1
    assert "UnexpectedMessage: BusActor(bus) got an unexpected message of type str" in (
        stats["bus"].last_failure or "")
    assert isinstance(new.ask(Send("alice", "bob", "after"), timeout=TIMEOUT), int)


def test_approval_is_decided_exactly_once(hive: Running, probe: ProbeHandle) -> None:
    hive.approvals.ask(Subscribe("*", probe.ref), timeout=TIMEOUT)
    approval = hive.approvals.ask(
        RequestApproval(ApprovalKind.SPAWN, "carol", "boss", diff="+ carol"), timeout=TIMEOUT)
    assert [a.id for a in hive.approvals.ask(ListApprovals(), timeout=TIMEOUT)] == [approval.id]
    decided = hive.approvals.ask(Decide(approval.id, True, "operator"), timeout=TIMEOUT)
    assert decided.status == "approved"
    assert probe.get() == DecisionMade(decided)
    with pytest.raises(Conflict, match="already approved"):
        hive.approvals.ask(Decide(approval.id, False, "operator"), timeout=TIMEOUT)
    assert hive.approvals.ask(ListApprovals(), timeout=TIMEOUT) == []
    with hive.hive.open_store() as store:
        assert store.registry.get("carol").state == AgentState.PENDING


def test_answer_reaches_the_managers_inbox_and_wakes_it(hive: Running, probe: ProbeHandle) -> None:
    hive.bus.ask(Subscribe("boss", probe.ref), timeout=TIMEOUT)
    question = hive.approvals.ask(AskOperator("boss", "ship it?"), timeout=TIMEOUT)
    with hive.hive.open_store() as store:
        assert store.registry.get("boss").state == AgentState.WAITING_OPERATOR
    assert [q.id for q in hive.approvals.ask(ListQuestions(), timeout=TIMEOUT)] == [question.id]
    answer = hive.approvals.ask(AnswerQuestion(question.id, "yes", "operator"), timeout=TIMEOUT)
    assert probe.get() == MailArrived("boss")
    claimed = hive.bus.ask(Claim("boss", hive.generation("boss"), "t"), timeout=TIMEOUT)
    assert [(m.id, m.kind) for m in claimed] == [(answer.message_id, MessageKind.OPERATOR)]
    assert "yes" in claimed[0].body
    with pytest.raises(NotFound):
        hive.approvals.ask(AnswerQuestion(999, "?", "operator"), timeout=TIMEOUT)
    with Store.open(hive.hive.config.db_path) as store:
        assert store.registry.get("boss").state == AgentState.IDLE


def test_a_bad_model_name_is_refused_and_the_bus_lives_on(hive: Running) -> None:
    bus = hive.bus
    with pytest.raises(Refused, match="'two words' for agent alice is invalid"):
        bus.ask(SetModel("alice", "two words"), timeout=TIMEOUT)
    assert bus.ask(GetModel("alice"), timeout=TIMEOUT) is None
    assert hive.bus == bus  # the same bus: nothing crashed
