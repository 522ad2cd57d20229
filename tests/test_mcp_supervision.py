"""The manager's supervision tools over real HTTP: ``agent_status`` and ``revive`` (the official
``mcp`` client, the hive's real :class:`ActorHiveOps` over a real store; the agents' supervisor and
the approval queue stand in as recording services) — and the pure parts: the structured
supervision notice, its rendering in the turn prompt and in ``recv``, the ``revive`` approval kind
in the store (and the schema step that allows it), and ``[supervision] revive_needs_approval``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
import pytest

from hive_actors.agent.notices import (
    SupervisionNotice,
    notice_text,
    parse_notice,
    render_message_body,
)
from hive_actors.agent.ops import ActorHiveOps
from hive_actors.agent.prompt import render_turn_prompt
from hive_actors.agent.supervisor import ReviveAgent
from hive_actors.agent.turnbook import TurnBook
from hive_actors.config import load_config
from hive_actors.errors import ConfigError, Conflict
from hive_actors.mcp import (
    DESCRIPTIONS,
    MANAGER_TOOLS,
    HiveSurface,
    InboxMessage,
    TokenBook,
    render,
)
from hive_actors.protocol import RequestApproval
from hive_actors.store import AgentState, ApprovalKind, EventKind, MessageKind, Role, Store
from hive_actors.store.schema import MIGRATIONS
from tests.support.mcp import serve
from tests.support.timeout import TIMEOUT

from .test_mcp_surface import connect, run, text

# -- a hive of real ops over a real store, its services recording ------------------------------


class _Service:
    """A service ref as ActorHiveOps uses it: ``ask`` (blocking, or a future) runs ``handle``."""

    def __init__(self, handle: Callable[[Any], Any]) -> None:
        self._handle = handle

    def ask(self, message: Any, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            return self._handle(message)
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        try:
            future.set(self._handle(message))
        except Exception as exc:  # noqa: BLE001  (handed to the asker, as pykka does)
            future.set_exception((type(exc), exc, exc.__traceback__))
        return future


@dataclass
class Directory:
    """The two services the supervision tools reach: the agents' supervisor and the approvals."""

    path: Path
    revived: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, service: str) -> _Service:
        return _Service({"agents": self._agents, "approvals": self._approvals}[service])

    def _agents(self, message: Any) -> None:
        assert isinstance(message, ReviveAgent), message
        with self.lock, Store.open(self.path) as store:
            self.revived.append(message.name)
            store.registry.spawn(message.name)

    def _approvals(self, message: Any) -> Any:
        assert isinstance(message, RequestApproval), message
        with self.lock, Store.open(self.path) as store:
            return store.approvals.request(message.kind, message.agent,
                                           requested_by=message.requested_by,
                                           reason=message.reason)


@dataclass
class Hive:
    url: str
    token: dict[str, str]
    directory: Directory
    path: Path


@contextmanager
def live_hive(tmp_path: Path, *, revive_needs_approval: bool = False) -> Iterator[Hive]:
    """boss (manager), alice (given up after crashes, with a turn log) and bob (idle)."""
    path = tmp_path / "hive.db"
    with Store.open(path) as store:
        for name, role in (("boss", Role.MANAGER), ("alice", Role.AGENT), ("bob", Role.AGENT)):
            store.registry.register(name, role=role)
            store.registry.spawn(name)
            store.registry.set_state(name, AgentState.IDLE)
        for n in range(3):
            store.events.record(EventKind.TURN_LOG, "alice", {"turn_id": "t", "line": f"line {n}"})
        store.events.record(EventKind.AGENT_CRASHED, "alice", {"reason": "exit-code 1",
                                                               "epoch": 1})
        store.events.record(EventKind.AGENT_RESTARTING, "alice", {"notice": "alice crashed: …"})
        store.events.record(EventKind.AGENT_CRASHED, "alice", {"reason": "exit-code 2",
                                                               "epoch": 2})
        store.events.record(EventKind.AGENT_GIVEN_UP, "alice", {"notice": "alice given up …"})
        store.registry.set_state("alice", AgentState.CRASHED, reason="exit-code 2")
        store.registry.set_state("alice", AgentState.GIVEN_UP, reason="exit-code 2")
    directory = Directory(path)
    ops = ActorHiveOps(directory, TurnBook(), lambda: Store.open(path), None,  # type: ignore[arg-type]
                       timeout=TIMEOUT, revive_needs_approval=revive_needs_approval,
                       limits="given up past 5 restarts in 60 s", log_tail=2)
    tokens = TokenBook()
    token = {"boss": tokens.issue("boss", Role.MANAGER), "alice": tokens.issue("alice", Role.AGENT)}
    surface = HiveSurface(ops, tokens)
    try:
        with serve(surface.asgi_app(), TIMEOUT) as base:
            yield Hive(f"{base}{surface.path}", token, directory, path)
    finally:
        ops.close()


def test_the_supervision_tools_are_manager_tools_with_descriptions() -> None:
    assert {"agent_status", "revive"} <= set(MANAGER_TOOLS)
    for tool in ("agent_status", "revive"):
        assert DESCRIPTIONS[tool].startswith("Only the hive's manager may call this")


@pytest.mark.parametrize("tool", ["agent_status", "revive"])
def test_a_sub_agent_is_refused_the_supervision_tools(tmp_path: Path, tool: str) -> None:
    with live_hive(tmp_path) as hive:
        async def scenario() -> None:
            async with connect(hive.url, hive.token["alice"]) as alice:
                result = await alice.call_tool(tool, {"name": "alice"})
            assert result.is_error
            assert text(result) == f"{tool} is for the manager; ask the manager to do it"

        run(scenario)
        assert hive.directory.revived == []


def test_agent_status_shows_state_restarts_last_crash_and_the_log_tail(tmp_path: Path) -> None:
    with live_hive(tmp_path) as hive:
        async def scenario() -> None:
            async with connect(hive.url, hive.token["boss"]) as boss:
                alice = await boss.call_tool("agent_status", {"name": "alice"})
                nobody = await boss.call_tool("agent_status", {"name": "zed"})
            assert not alice.is_error, text(alice)
            lines = text(alice).splitlines()
            assert lines[0] == "agent alice (agent, generation 1): given_up"
            assert lines[1] == "restarts: 1 (given up past 5 restarts in 60 s)"
            assert lines[2].startswith("last crash: exit-code 2 (") and "epoch 2" in lines[2]
            assert lines[3] == "last notice: alice given up …"
            assert lines[4:] == ["log tail (2 lines, oldest first):", "  line 1", "  line 2"]
            assert nobody.is_error and "zed" in text(nobody)

        run(scenario)


def test_revive_restarts_a_given_up_agent_through_the_supervisor(tmp_path: Path) -> None:
    with live_hive(tmp_path) as hive:
        async def scenario() -> None:
            async with connect(hive.url, hive.token["boss"]) as boss:
                revived = await boss.call_tool("revive", {"name": "alice"})
                running = await boss.call_tool("revive", {"name": "bob"})
                manager = await boss.call_tool("revive", {"name": "boss"})
            assert not revived.is_error, text(revived)
            assert text(revived) == "alice revived: it is up again, its failures forgotten"
            assert running.is_error
            assert text(running) == ("agent bob is idle: only a given-up, stopped or crashed "
                                     "agent can be revived")
            assert manager.is_error and "only the operator revives the manager" in text(manager)

        run(scenario)
        assert hive.directory.revived == ["alice"]


def test_revive_needing_approval_queues_a_revive_approval_with_its_reason(
    tmp_path: Path,
) -> None:
    with live_hive(tmp_path, revive_needs_approval=True) as hive:
        async def scenario() -> None:
            async with connect(hive.url, hive.token["boss"]) as boss:
                queued = await boss.call_tool("revive", {"name": "alice"})
                twice = await boss.call_tool("revive", {"name": "alice"})
            assert not queued.is_error, text(queued)
            assert "requested (revive of alice): waiting for the operator" in text(queued)
            assert twice.is_error and "already asks for revive of alice" in text(twice)

        run(scenario)
        assert hive.directory.revived == []  # nothing started before the operator decides
        with Store.open(hive.path) as store:
            [approval] = store.approvals.pending()
        assert (approval.kind, approval.agent, approval.requested_by) == (
            ApprovalKind.REVIVE, "alice", "boss")
        assert approval.reason is not None
        assert approval.reason.startswith("boss asks to revive alice (given_up); last crash: "
                                          "exit-code 2")


# -- the revive approval in the store, and the schema step -------------------------------------


def test_a_revive_approval_needs_an_agent_that_is_down(tmp_path: Path) -> None:
    with Store.open(tmp_path / "hive.db") as store:
        store.registry.register("bob", role=Role.AGENT)
        store.registry.spawn("bob")
        store.registry.set_state("bob", AgentState.IDLE)
        with pytest.raises(Conflict, match="cannot request revive of bob: it is idle"):
            store.approvals.request(ApprovalKind.REVIVE, "bob", requested_by="boss")
        with pytest.raises(Conflict, match="cannot request revive of zed: it does not exist"):
            store.approvals.request(ApprovalKind.REVIVE, "zed", requested_by="boss")
        store.registry.set_state("bob", AgentState.STOPPED, reason="operator stop")
        approval = store.approvals.request(ApprovalKind.REVIVE, "bob", requested_by="boss",
                                           reason="it crashed twice")
        assert (approval.kind, approval.reason) == (ApprovalKind.REVIVE, "it crashed twice")
        decided = store.approvals.decide(approval.id, True, "operator")
        assert decided.status == "approved" and decided.reason == "it crashed twice"
        assert store.approvals.outstanding() == [decided]


def test_a_version_4_file_gets_the_revive_kind_and_keeps_its_approvals(tmp_path: Path) -> None:
    path = tmp_path / "hive.db"
    with Store.open(path, migrations=MIGRATIONS[:4]) as old:
        old.registry.register("alice", role=Role.AGENT)
        with old.db.transaction():  # version 4's own columns
            kept = old.db.insert(
                "INSERT INTO approvals (kind, agent, ref, requested_by, requested) "
                "VALUES ('apply_commit', 'alice', 'abc', 'boss', 0)", ())
            gone = old.db.insert(
                "INSERT INTO approvals (kind, agent, requested_by, requested) "
                "VALUES ('spawn', 'carol', 'boss', 0)", ())
            old.db.execute("DELETE FROM approvals WHERE id = ?", (gone,))
    with Store.open(path) as new:
        assert new.db.schema_version == len(MIGRATIONS)
        again = new.approvals.get(kept)
        assert (again.kind, again.ref, again.reason) == (ApprovalKind.APPLY_COMMIT, "abc", None)
        new.registry.spawn("alice")
        new.registry.set_state("alice", AgentState.STOPPED, reason="operator stop")
        revive = new.approvals.request(ApprovalKind.REVIVE, "alice", requested_by="boss",
                                       reason="why not")
        assert revive.id == gone + 1  # ids are never reused, even across the rebuild
        assert [a.id for a in new.approvals.pending()] == [kept, revive.id]


# -- the structured notice and what the model reads --------------------------------------------

RESTART = SupervisionNotice(
    agent="alice", generation=2, event="restarting", result="exit-code", exit_status=1,
    signal=None, reason="exit-code 1", restart=2, restarts_allowed=5, period=60.0,
    next_try_s=4.0, text="alice crashed: exit-code 1; restart 2 of 5 in 60 s; next try in 4 s",
)
GIVEN_UP = SupervisionNotice(
    agent="alice", generation=2, event="given_up", result="stalled", exit_status=None,
    signal=None, reason="stalled (turn alice-2-7 ran past its deadline of 3 s)", restart=None,
    restarts_allowed=5, period=60.0, next_try_s=None, crashes=6, limit_hit="window",
    text="alice given up after 6 crashes in 60 s; last: stalled (…); it stays down until the "
         "operator revives it",
)


def test_a_notice_body_is_structured_and_read_back() -> None:
    for notice in (RESTART, GIVEN_UP):
        assert parse_notice(notice.body()) == notice
        assert notice_text(notice.body()) == notice.text
    assert not RESTART.given_up and GIVEN_UP.given_up
    for other in ("approval 1 was approved", "{not json", '{"hive_notice": "other"}', "[]"):
        assert parse_notice(other) is None and render_message_body(other) == other


def test_a_notice_reads_as_text_in_the_prompt_and_in_recv() -> None:
    assert RESTART.render() == "\n".join([
        "supervision notice: agent alice (generation 2) crashed",
        "result: exit-code (exit status 1)",
        "reason: exit-code 1",
        "restart 2 of 5 in 60 s; next try in 4 s",
        f"notice: {RESTART.text}",
    ])
    given_up = GIVEN_UP.render().splitlines()
    assert given_up[0] == "supervision notice: agent alice (generation 2) stalled"
    assert given_up[3] == ("given up after 6 crashes in 60 s: it stays down until revived "
                           "(mcp__hive__agent_status, mcp__hive__revive)")

    @dataclass
    class Message:
        id: int
        sender: str
        kind: MessageKind
        body: str
        claims: int = 1

    prompt = render_turn_prompt("boss", [Message(7, "hive", MessageKind.SYSTEM, RESTART.body())])
    assert prompt == ("1 new message(s) for boss:\n\n--- message 7 from hive (system)\n"
                      + RESTART.render())
    line = render.message_line(InboxMessage(7, "hive", "system", GIVEN_UP.body()))
    assert line == "from hive (system): " + GIVEN_UP.render()


# -- [supervision] revive_needs_approval -------------------------------------------------------


def test_revive_needs_approval_is_read_and_checked(tmp_path: Path) -> None:
    assert load_config().supervision.revive_needs_approval is False
    path = tmp_path / "hive.toml"
    path.write_text("[supervision]\nrevive_needs_approval = true\n")
    assert load_config(path).supervision.revive_needs_approval is True
    path.write_text("[supervision]\nrevive_needs_approval = 'yes'\n")
    with pytest.raises(ConfigError, match=r"\[supervision\] revive_needs_approval = 'yes' must "
                                          "be true or false"):
        load_config(path)
