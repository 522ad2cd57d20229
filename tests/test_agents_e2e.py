"""Agents that really run: the real claude CLI in process containers, against the loopback model."""

from __future__ import annotations

import json
from pathlib import Path

from hive_actors.store import EventKind, MessageKind, MessageStatus, Role
from tests.hive_support import running_hive, send, states


def tool(name: str, **args: object) -> str:
    return f"@tool {name} {json.dumps(args)}"


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
