"""Approvals and operator questions on a real sqlite file: exactly-once, atomic consequences."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.errors import ConfigError, Conflict, NotFound, Refused
from hive_actors.store import (
    AgentState,
    ApprovalKind,
    ApprovalStatus,
    MessageKind,
    MessageStatus,
    Role,
    Store,
)
from hive_actors.store.schema import MIGRATIONS, SCHEMA_VERSION
from tests.support.store import T0, WallClock, counts, open_store, refused
from tests.support.timeout import TIMEOUT

S = AgentState
A = ApprovalKind


@pytest.fixture
def store(db_path: Path, clock: WallClock) -> Iterator[Store]:
    with open_store(db_path, clock, max_body_bytes=4096) as store:
        store.registry.register("boss", role=Role.MANAGER)
        store.registry.spawn("boss")
        store.registry.set_state("boss", S.IDLE)
        store.registry.set_state("boss", S.BUSY)
        yield store


def _inbox(store: Store, agent: str) -> list[str]:
    return [m.body for m in store.messages.undelivered(agent)]


# --- approvals ----------------------------------------------------------------------------


def test_spawn_approval_registers_the_agent_and_tells_the_manager(
    store: Store, clock: WallClock
) -> None:
    approval = store.approvals.request(A.SPAWN, "alice", requested_by="boss", diff="new agent")
    assert approval.status is ApprovalStatus.PENDING
    assert (approval.kind, approval.agent, approval.requested_by, approval.requested) == (
        A.SPAWN,
        "alice",
        "boss",
        T0,
    )
    assert store.registry.find("alice") is None
    clock.advance(60)
    assert store.approvals.pending_count() == 1
    assert store.approvals.oldest_pending_age() == 60.0
    decided = store.approvals.decide(approval.id, True, "operator", "welcome")
    assert (decided.status, decided.decided_by, decided.decided, decided.note) == (
        ApprovalStatus.APPROVED,
        "operator",
        T0 + 60,
        "welcome",
    )
    assert store.registry.get("alice").state is S.PENDING
    assert _inbox(store, "boss") == [
        f"approval {approval.id} (spawn alice) was approved by operator: welcome"
    ]
    assert store.messages.undelivered("boss")[0].kind is MessageKind.SYSTEM
    assert store.approvals.pending_count() == 0
    assert store.approvals.oldest_pending_age() == 0.0
    kinds = [e.kind for e in store.events.events_since(0)]
    assert kinds[-4:] == [
        "approval.requested",
        "agent.registered",
        "approval.decided",
        "message.sent",
    ]


def test_second_decision_is_a_conflict_and_changes_nothing(store: Store) -> None:
    approval = store.approvals.request(A.SPAWN, "alice", requested_by="boss")
    store.approvals.decide(approval.id, True, "operator")
    for approve in (True, False):
        refused(
            store,
            functools.partial(store.approvals.decide, approval.id, approve, "mallory"),
            Conflict,
            rf"^approval {approval.id} was already approved by operator at "
            r"2025-06-15 15:06:40Z; nothing changed$",
        )
    refused(
        store, lambda: store.approvals.decide(999, True, "op"), NotFound, "no approval with id 999"
    )


def test_concurrent_decisions_exactly_one_wins(
    db_path: Path, store: Store, clock: WallClock
) -> None:
    approval = store.approvals.request(A.SPAWN, "alice", requested_by="boss")
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    outcomes: dict[str, object] = {}

    def decide(who: str, approve: bool) -> None:
        with open_store(db_path, clock) as mine:
            barrier.wait()
            try:
                outcomes[who] = mine.approvals.decide(approval.id, approve, who).status
            except Conflict as exc:
                outcomes[who] = exc

    threads = [
        threading.Thread(target=decide, args=("ann", True)),
        threading.Thread(target=decide, args=("ben", False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
        assert not t.is_alive()
    wins = [who for who, o in outcomes.items() if isinstance(o, ApprovalStatus)]
    losses = [o for o in outcomes.values() if isinstance(o, Conflict)]
    assert len(wins) == 1 and len(losses) == 1
    final = store.approvals.get(approval.id)
    assert final.decided_by == wins[0]
    assert [e.kind for e in store.events.events_since(0)].count("approval.decided") == 1


def test_denied_spawn_registers_nothing(store: Store) -> None:
    approval = store.approvals.request(A.SPAWN, "alice", requested_by="boss")
    assert store.approvals.decide(approval.id, False, "operator", "not now").status is (
        ApprovalStatus.DENIED
    )
    assert store.registry.find("alice") is None
    assert _inbox(store, "boss") == [
        f"approval {approval.id} (spawn alice) was denied by operator: not now"
    ]


def test_two_step_spawn(store: Store) -> None:
    store.registry.register("alice", state=S.DRAFT)
    approval = store.approvals.request(
        A.SPAWN_COMMIT, "alice", requested_by="boss", ref="abc123", diff="+ model = opus"
    )
    assert (approval.ref, approval.diff) == ("abc123", "+ model = opus")
    store.approvals.decide(approval.id, True, "operator")
    assert store.registry.get("alice").state is S.PENDING
    state_event = [e for e in store.events.events_since(0) if e.kind == "agent.state"][-1]
    assert state_event.payload["ref"] == "abc123"


def test_apply_commit_for_an_existing_agent(store: Store) -> None:
    store.registry.register("alice")
    approval = store.approvals.request(A.APPLY_COMMIT, "alice", requested_by="boss", ref="def456")
    decided = store.approvals.decide(approval.id, True, "operator")
    assert decided.status is ApprovalStatus.APPROVED
    assert store.registry.get("alice").state is S.PENDING  # the host applies and restarts it
    assert [a.id for a in store.approvals.recent()] == [approval.id]


def test_request_refusals_change_nothing(store: Store) -> None:
    store.registry.register("alice")
    store.registry.register("dora", state=S.DRAFT)
    request = store.approvals.request
    refused(
        store, lambda: request(A.SPAWN, "Bad_Name", requested_by="boss"), ConfigError, "invalid"
    )
    refused(store, lambda: request(A.SPAWN, "alice", requested_by="boss"), Conflict, "exists")
    refused(
        store,
        lambda: request(A.SPAWN_COMMIT, "alice", requested_by="boss", ref="r"),
        Conflict,
        "only a draft",
    )
    refused(
        store,
        lambda: request(A.APPLY_COMMIT, "dora", requested_by="boss", ref="r"),
        Conflict,
        "use spawn_commit",
    )
    refused(
        store, lambda: request(A.APPLY_COMMIT, "alice", requested_by="boss"), Refused, "config ref"
    )
    refused(
        store,
        lambda: request("merge", "alice", requested_by="boss"),  # type: ignore[arg-type]
        Refused,
        "unknown approval kind",
    )
    first = request(A.SPAWN, "carol", requested_by="boss")
    refused(
        store,
        lambda: request(A.SPAWN, "carol", requested_by="boss"),
        Conflict,
        f"approval {first.id} already asks for spawn of carol",
    )


def test_approving_a_spawn_whose_name_was_taken_isrefused(store: Store) -> None:
    approval = store.approvals.request(A.SPAWN, "alice", requested_by="boss")
    store.registry.register("alice", state=S.DRAFT)
    refused(
        store,
        lambda: store.approvals.decide(approval.id, True, "operator"),
        Conflict,
        "already exists",
    )
    assert store.approvals.decide(approval.id, False, "operator").status is ApprovalStatus.DENIED


# --- operator questions -------------------------------------------------------------------


def test_ask_and_answer_round_trip(store: Store, clock: WallClock) -> None:
    question = store.questions.ask("boss", "May I spawn three agents?")
    assert store.registry.get("boss").state is S.WAITING_OPERATOR
    assert [q.id for q in store.questions.pending()] == [question.id]
    clock.advance(30)
    answer = store.questions.answer(question.id, "Two.", "operator")
    assert answer.question.answer == "Two." and answer.question.answered == T0 + 30
    message = store.messages.get(answer.message_id)
    assert (message.kind, message.sender, message.recipient) == (
        MessageKind.OPERATOR,
        "operator",
        "boss",
    )
    assert message.status is MessageStatus.QUEUED
    assert (
        message.body
        == f"Answer to your question {question.id} ('May I spawn three agents?'):\nTwo."
    )
    assert answer.question.message_id == answer.message_id
    assert store.registry.get("boss").state is S.BUSY  # back where it was
    assert store.questions.pending() == []
    last = store.events.events_since(0)[-3:]
    assert [e.kind for e in last] == ["message.sent", "question.answered", "agent.state"]
    assert last[1].payload == {"by": "operator", "id": question.id, "message_id": answer.message_id}
    assert last[2].payload["to"] == "busy"


def test_answer_and_inbox_message_commit_together(store: Store) -> None:
    question = store.questions.ask("boss", "ok?")
    # Over the body limit: the whole answer is refused — no message, question still pending.
    refused(
        store,
        lambda: store.questions.answer(question.id, "x" * 5000, "operator"),
        Refused,
        "over the 4096-byte limit",
    )
    assert store.questions.get(question.id).answered is None
    store.questions.answer(question.id, "yes", "operator")
    # Exactly one message, one answered question, both from the one transaction.
    assert counts(store.path)["messages"] == 1
    refused(
        store,
        lambda: store.questions.answer(question.id, "again", "operator"),
        Conflict,
        rf"^question {question.id} was already answered by operator at 2025-06-15 15:06:40Z",
    )
    refused(
        store,
        lambda: store.questions.answer(999, "x", "operator"),
        NotFound,
        "no question with id 999",
    )
    refused(store, lambda: store.questions.answer(question.id, "  ", "operator"), Refused, "empty")


def test_agent_waits_until_every_question_is_answered(store: Store) -> None:
    first = store.questions.ask("boss", "one?")
    second = store.questions.ask("boss", "two?")
    store.questions.answer(second.id, "b", "operator")
    assert store.registry.get("boss").state is S.WAITING_OPERATOR
    assert [q.id for q in store.questions.pending("boss")] == [first.id]
    store.questions.answer(first.id, "a", "operator")
    assert store.registry.get("boss").state is S.BUSY
    assert _inbox(store, "boss") == [
        f"Answer to your question {second.id} ('two?'):\nb",
        f"Answer to your question {first.id} ('one?'):\na",
    ]


def test_a_turn_that_ended_meanwhile_is_left_alone(store: Store) -> None:
    question = store.questions.ask("boss", "later?")
    store.registry.set_state("boss", S.IDLE)  # the turn ended while it waited
    store.questions.answer(question.id, "now", "operator")
    assert store.registry.get("boss").state is S.IDLE


def test_ask_refusals_change_nothing(store: Store) -> None:
    store.registry.register("alice")
    refused(store, lambda: store.questions.ask("zed", "hi?"), NotFound, "'zed'")
    refused(store, lambda: store.questions.ask("boss", " "), Refused, "empty question")
    refused(
        store,
        lambda: store.questions.ask("alice", "hi?"),
        Conflict,
        "cannot go from pending to waiting_operator",
    )


def test_answer_to_a_destroyed_asker_is_kept_as_stale(store: Store) -> None:
    question = store.questions.ask("boss", "still there?")
    store.registry.set_state("boss", S.STOPPED)
    store.registry.destroy("boss", keep_state=True)
    answer = store.questions.answer(question.id, "yes", "operator")
    assert store.messages.get(answer.message_id).status is MessageStatus.STALE
    assert store.questions.pending() == []


# -- carrying approvals out ------------------------------------------------------------------------


def test_an_approved_approval_is_outstanding_until_its_outcome_is_recorded(store: Store) -> None:
    spawn = store.approvals.request(ApprovalKind.SPAWN, "alice", requested_by="boss")
    denied = store.approvals.request(ApprovalKind.SPAWN, "bob", requested_by="boss")
    pending = store.approvals.request(ApprovalKind.SPAWN, "carol", requested_by="boss")
    store.approvals.decide(spawn.id, True, "operator")
    store.approvals.decide(denied.id, False, "operator")
    assert [a.id for a in store.approvals.outstanding()] == [spawn.id]
    done = store.approvals.record_outcome(spawn.id, "started")
    assert (done.outcome, done.carried_out is not None) == ("started", True)
    assert store.approvals.outstanding() == []
    with pytest.raises(Conflict, match=f"approval {spawn.id} was already carried out .*started"):
        store.approvals.record_outcome(spawn.id, "started again")
    for other in (denied, pending):
        with pytest.raises(Conflict, match="only an approved one is carried out"):
            store.approvals.record_outcome(other.id, "started")
    with pytest.raises(NotFound):
        store.approvals.record_outcome(999, "started")
    assert store.approvals.get(spawn.id).outcome == "started"  # the refusals changed nothing


def test_approvals_decided_before_outcomes_were_kept_count_as_carried_out(
    db_path: Path, clock: WallClock
) -> None:
    with open_store(db_path, clock, migrations=MIGRATIONS[:2]) as old, old.db.transaction():
        # Rows as a version-2 hive wrote them (this code reads the new columns).
        for agent, status in (("alice", "approved"), ("bob", "pending")):
            old.db.execute(
                "INSERT INTO approvals (kind, agent, requested_by, requested, status, decided) "
                "VALUES ('spawn', ?, 'boss', 1.0, ?, ?)",
                (agent, status, 2.0 if status == "approved" else None),
            )
    with open_store(db_path, clock) as new:
        assert new.db.schema_version == SCHEMA_VERSION
        # Not carried out a second time on the upgrade: the old hive did it.
        assert new.approvals.outstanding() == []
        approved, waiting = new.approvals.get(1), new.approvals.get(2)
        assert (approved.agent, approved.carried_out, approved.outcome) == (
            "alice", 2.0, "carried out (before outcomes were kept)")
        assert (waiting.agent, waiting.carried_out, waiting.outcome) == ("bob", None, None)
