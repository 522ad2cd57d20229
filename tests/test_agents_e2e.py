"""Agents that really run: the real claude CLI in process containers, against the loopback model."""

from __future__ import annotations

import json
from pathlib import Path

from hive_actors.store import EventKind, MessageKind, MessageStatus, Role
from tests.support.hive import running_hive, send, states


def tool(tool_name: str, **args: object) -> str:
    return f"@tool {tool_name} {json.dumps(args)}"


def test_a_message_from_a_reaches_b_and_b_replies(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT, "bob": Role.AGENT}) as (
        daemon, root, model, events,
    ):
        # alice is told (by the operator) to message bob, whose message tells him to answer.
        inner = tool("mcp__hive__send", to="alice", body="thanks alice")
        send(daemon, "alice", tool("mcp__hive__send", to="bob", body=inner))
        ended = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice")
        assert ended.payload["outcome"] == "ok", ended.payload
        assert ended.payload["tool_calls"] == {"mcp__hive__send": 1}
        events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "bob")
        reply = events.wait_for(
            lambda e: e.kind == EventKind.MESSAGE_SENT and e.agent == "alice"
            and e.payload["from"] == "bob"
        )
        with daemon.hive.open_store() as store:
            msg = store.messages.get(reply.payload["id"])
            assert (msg.sender, msg.kind, msg.body) == ("bob", MessageKind.PEER, "thanks alice")
            first = [m for m in store.messages.stale("bob")]
            assert first == []
        events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice",
                        after=reply.id)
        with daemon.hive.open_store() as store:
            assert store.messages.get(reply.payload["id"]).status == MessageStatus.DELIVERED
        assert {m.model for m in model.requests if m.model} == {"claude-sonnet-test"}
        assert states(daemon)["bob"] in ("idle", "busy")


def turn_end(events: object, agent: str, after: int = 0) -> object:
    return events.wait_for(  # type: ignore[attr-defined]
        lambda e: e.kind == EventKind.TURN_ENDED and e.agent == agent, after=after)


def test_model_override_lands_on_the_next_turn(tmp_path: Path) -> None:
    from hive_actors.protocol import SetModel

    with running_hive(tmp_path, {"alice": Role.AGENT}) as (daemon, _root, model, events):
        send(daemon, "alice", "first")
        first = turn_end(events, "alice")
        assert first.payload["model"] == "claude-sonnet-test"
        daemon.hive.directory.get("bus").ask(SetModel("alice", "claude-opus-test"), timeout=10)
        send(daemon, "alice", "second")
        second = turn_end(events, "alice", after=first.id)
        assert second.payload["model"] == "claude-opus-test"
        asked = [r.model for r in model.requests if r.model]
        assert asked[-1] == "claude-opus-test" and "claude-sonnet-test" in asked


def test_a_permission_denial_is_recorded(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"alice": Role.AGENT}) as (daemon, _root, _model, events):
        send(daemon, "alice", tool("Bash", command="rm -rf /tmp/nothing-here"))
        end = turn_end(events, "alice")
        assert end.payload["outcome"] == "ok"
        assert end.payload["permission_denials"] == ["Bash: rm -rf /tmp/nothing-here"]


def test_prompt_too_long_compacts_and_retries(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"alice": Role.AGENT}) as (daemon, _root, _model, events):
        send(daemon, "alice", "warm up the session")
        first = turn_end(events, "alice")
        send(daemon, "alice", "@too-long\nthis one does not fit")
        end = turn_end(events, "alice", after=first.id)
        assert end.payload["outcome"] == "compact-retry", end.payload
        with daemon.hive.open_store() as store:
            assert store.messages.inbox_depth("alice") == 0  # delivered, not released


def test_an_agent_cannot_call_a_manager_tool(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as (
        daemon, _root, model, events,
    ):
        send(daemon, "alice", tool("mcp__hive__request_spawn", name="mallory"))
        end = turn_end(events, "alice")
        assert end.payload["tool_calls"] == {"mcp__hive__request_spawn": 1}
        with daemon.hive.open_store() as store:
            assert store.approvals.pending() == []
        # The refusal came back to the model as the tool's result (the turn's live log shows it).
        events.wait_for(lambda e: e.kind == EventKind.TURN_LOG and e.agent == "alice"
                        and "request_spawn is for the manager" in e.payload["line"])


def test_the_manager_asks_for_a_spawn_and_asks_the_operator(tmp_path: Path) -> None:
    from hive_actors.protocol import AnswerQuestion, Decide

    with running_hive(tmp_path, {"boss": Role.MANAGER}) as (daemon, _root, _model, events):
        send(daemon, "boss", "\n".join([
            tool("mcp__hive__request_spawn", name="carol"),
            tool("mcp__hive__ask_operator", question="May carol work on the docs?"),
        ]))
        turn_end(events, "boss")
        with daemon.hive.open_store() as store:
            (approval,) = store.approvals.pending()
            (question,) = store.questions.pending()
        assert (approval.kind, approval.agent, approval.requested_by) == ("spawn", "carol", "boss")
        assert "+++ b/agent.toml" in approval.diff
        approvals = daemon.hive.directory.get("approvals")
        approvals.ask(Decide(approval.id, True, "operator"), timeout=10)
        approvals.ask(AnswerQuestion(question.id, "yes, the docs", "operator"), timeout=10)
        # carol is spawned by the agents supervisor and the answer wakes the manager.
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "carol"
                        and e.payload.get("to") == "idle")
        answered = turn_end(events, "boss", after=0)
        assert answered is not None
        with daemon.hive.open_store() as store:
            assert store.registry.get("carol").state in ("idle", "busy")


def test_a_turn_past_its_deadline_is_interrupted_and_counted_as_a_timeout(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"alice": Role.AGENT}, turn_deadline=3.0) as (
        daemon, _root, _model, events,
    ):
        send(daemon, "alice", "@sleep 30\nthink for a long time")
        end = turn_end(events, "alice")
        assert end.payload["outcome"] == "timeout"
        assert "SIGINT" in end.payload["error"]
        # A timed-out turn is a stall: the supervisor restarts the agent.
        events.wait_for(lambda e: e.kind == EventKind.AGENT_RESTARTING and e.agent == "alice")
