"""The manager really reacts: a given-up agent's notice starts the manager's turn, whose real
``claude`` CLI calls ``agent_status`` and then ``revive``, and the agent runs again.

The loopback model stands in for the manager's judgement: a policy that, when the newest prompt
carries the rendered give-up notice of the agent, asks for ``mcp__hive__agent_status`` and then
``mcp__hive__revive`` (and otherwise answers as the default script does). The agent's fault —
the command of an extra MCP server in its config is missing, so every start fails — is fixed
once ``agent_status`` has answered, before the ``revive`` is asked for.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hive_actors.agent.notices import parse_notice
from hive_actors.agent.supervisor import SpawnAgent
from hive_actors.agentconfig.repo import ConfigRepo
from hive_actors.modelserver import ModelServer
from hive_actors.modelserver.conversation import (
    is_compaction_request,
    newest_prompt,
    tool_exchanges_after,
)
from hive_actors.modelserver.replies import Reply, ToolUseBlock, text_reply, tool_use_reply
from hive_actors.modelserver.script import script_policy
from hive_actors.store import AgentState, EventKind, MessageKind, Role
from tests.support.hive import running_hive, send

STEPS = (("mcp__hive__agent_status", {"name": "eve"}), ("mcp__hive__revive", {"name": "eve"}))


class ReactingManager:
    """A model policy: the manager answers eve's give-up notice with agent_status, then revive."""

    def __init__(self, fix: Callable[[], None]) -> None:
        self._fix = fix
        self._fixed = threading.Event()
        self.results: dict[str, str] = {}
        """Each step's tool result, as the CLI sent it back."""
        self.reacted_to: str | None = None
        """The prompt the reaction was to."""

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        prompt = newest_prompt(request)
        if (prompt is None or is_compaction_request(request)
                or "supervision notice: agent eve" not in prompt.text
                or "given up after" not in prompt.text):
            return script_policy(request)
        self.reacted_to = prompt.text
        done = tool_exchanges_after(request, prompt)
        for exchange in done:
            if exchange.result is not None:
                self.results[exchange.name] = exchange.result
        if len(done) == 1 and not self._fixed.is_set():
            self._fix()  # what agent_status showed is put right before the revive
            self._fixed.set()
        if len(done) < len(STEPS):
            name, args = STEPS[len(done)]
            seed = f"{prompt.text}:{prompt.message_index}:{len(done)}".encode()
            block = ToolUseBlock(id="toolu_" + hashlib.sha256(seed).hexdigest()[:24], name=name,
                                 input=args)
            return tool_use_reply(block)
        return text_reply("eve looked at and revived", kind="final")


def test_the_manager_revives_a_given_up_agent_through_its_hive_tools(tmp_path: Path) -> None:
    server = tmp_path / "eve-tools"

    def fix() -> None:
        server.write_text("#!/bin/sh\nexit 0\n")
        server.chmod(0o755)

    manager = ReactingManager(fix)
    model = ModelServer(manager).start()
    try:
        with running_hive(tmp_path, {"boss": Role.MANAGER}, model, agent_restarts=100,
                          agent_max_consecutive_failures=2, backoff_min=0.05,
                          backoff_max=0.1) as (daemon, _root, _model, events):
            # eve's config names an extra MCP server whose command is gone: every start fails.
            paths = daemon.hive.agent_paths("eve").create()
            fix()
            ConfigRepo(paths).init(f'[mcp.tools]\ncommand = "{server}"\n', "operator <op@hive>")
            server.unlink()
            with daemon.hive.open_store() as store:
                store.registry.register("eve", role=Role.AGENT)
            daemon.hive.directory.get("agents").tell(SpawnAgent("eve"))

            given_up = events.wait_for(lambda e: e.kind == EventKind.AGENT_GIVEN_UP
                                       and e.agent == "eve")
            # The notice is mail: a structured system message in the manager's inbox …
            told = events.wait_for(lambda e: e.kind == EventKind.MESSAGE_SENT
                                   and e.agent == "boss" and e.payload.get("from") == "hive"
                                   and e.id > given_up.id - 10
                                   and _is_give_up(daemon, e.payload["id"]))
            with daemon.hive.open_store() as store:
                message = store.messages.get(told.payload["id"])
            notice = parse_notice(message.body)
            assert message.kind == MessageKind.SYSTEM and notice is not None
            assert (notice.agent, notice.event, notice.result, notice.given_up) == (
                "eve", "given_up", "failed to start", True)
            assert (notice.generation, notice.crashes, notice.limit_hit) == (1, 2, "consecutive")
            assert notice.text == given_up.payload["notice"]
            # … so it starts the manager's turn, whose prompt shows it as text.
            ended = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED
                                    and e.agent == "boss" and manager.reacted_to is not None
                                    and e.payload.get("tool_calls", {}).get("mcp__hive__revive"),
                                    after=told.id)
            started = events.wait_for(lambda e: e.kind == EventKind.TURN_STARTED
                                      and e.agent == "boss"
                                      and e.payload["turn_id"] == ended.payload["turn_id"])
            assert told.payload["id"] in started.payload["messages"], started.payload
            assert ended.payload["outcome"] == "ok", ended.payload
            assert ended.payload["tool_calls"] == {"mcp__hive__agent_status": 1,
                                                   "mcp__hive__revive": 1}
            assert manager.reacted_to is not None
            assert "--- message" in manager.reacted_to and '"hive_notice"' not in manager.reacted_to
            assert "reason: failed to start" in manager.reacted_to
            status = manager.results["mcp__hive__agent_status"]
            assert "agent eve (agent, generation 1): given_up" in status, status
            assert "last crash: failed to start: crashed in on_start: ConfigError" in status, status
            assert "last notice: eve given up after 2 failures in a row" in status, status
            assert "revived" in manager.results["mcp__hive__revive"], manager.results

            # eve runs again: up, and it takes a turn.
            events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "eve"
                            and e.payload["to"] == "idle", after=given_up.id)
            send(daemon, "eve", "are you back?")
            turn = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "eve")
            assert turn.payload["outcome"] == "ok", turn.payload
            with daemon.hive.open_store() as store:
                assert store.registry.get("eve").state in (AgentState.IDLE, AgentState.BUSY)
    finally:
        model.stop()


def _is_give_up(daemon: Any, message_id: int) -> bool:
    with daemon.hive.open_store() as store:
        notice = parse_notice(store.messages.get(message_id).body)
    return notice is not None and notice.given_up
