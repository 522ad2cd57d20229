"""The real ``claude`` CLI 2.1.331 calls the hive through the MCP surface.

The model is the loopback model server (``hive_actors.modelserver``): a ``@tool`` directive in
the prompt makes it call that tool. The CLI runs through the harness (``run_cli``), which gives
it its own CLAUDE_CONFIG_DIR/HOME/TMPDIR/XDG_RUNTIME_DIR, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1,
ENABLE_TOOL_SEARCH=false, MCP_CONNECTION_NONBLOCKING=false, ANTHROPIC_BASE_URL on 127.0.0.1,
``--strict-mcp-config``, stream-json and stdin /dev/null. The ``--mcp-config`` is
``mcp_config()``'s, with alice's own token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hive_actors.harness.claude import ClaudeBinary, TurnRequest, run_cli
from hive_actors.harness.events import Init, ToolResult, ToolUse, TurnEnd, TurnEvent
from hive_actors.mcp import HiveSurface, TokenBook, mcp_config
from hive_actors.modelserver import ModelServer
from hive_actors.store import MessageKind, Role
from tests.support.mcp import StoreOps, serve
from tests.support.timeout import TIMEOUT

MODEL = "claude-sonnet-4-5"


@dataclass
class Rig:
    """The model server, a served surface over a real store, and alice's token."""

    model: ModelServer
    ops: StoreOps
    url: str
    alice_token: str


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    ops = StoreOps(tmp_path / "hive.db")
    try:
        tokens = TokenBook()
        for name, role in (("manager", Role.MANAGER), ("alice", Role.AGENT), ("bob", Role.AGENT)):
            ops.start_agent(name, role)
        alice_token = tokens.issue("alice", Role.AGENT)
        surface = HiveSurface(ops, tokens)
        with ModelServer() as model, serve(surface.asgi_app(), TIMEOUT) as base:
            yield Rig(model, ops, f"{base}{surface.path}", alice_token)
    finally:
        ops.close()


def alice_turn(
    claude: ClaudeBinary, rig: Rig, root: Path, prompt: str
) -> tuple[TurnEnd, list[TurnEvent]]:
    """One headless turn of agent alice, with the hive as her only MCP server."""
    env = {
        k: str(root / k.lower()) for k in ("CLAUDE_CONFIG_DIR", "HOME", "TMPDIR", "XDG_RUNTIME_DIR")
    }
    request = TurnRequest(
        prompt=prompt,
        model=MODEL,
        session_id=str(uuid.uuid4()),
        base_url=rig.model.url,
        env=env,
        api_key="sk-loopback",
        cwd=str(root),
        mcp_config=mcp_config("alice", rig.alice_token, rig.url),
        allowed_tools=["mcp__hive__*"],
        deadline_s=6 * TIMEOUT,
    )
    events: list[TurnEvent] = []
    end = run_cli(request, events.append, claude=claude)
    # The secret-bearing config file is gone after the turn.
    assert list(Path(env["TMPDIR"]).glob("mcp-*.json")) == []
    return end, events


def test_alice_sends_to_bob_through_the_cli_and_it_lands_in_bobs_inbox(
    claude: ClaudeBinary, rig: Rig, tmp_path: Path
) -> None:
    end, events = alice_turn(
        claude, rig, tmp_path, '@tool mcp__hive__send {"to": "bob", "body": "hi"}'
    )
    assert end.outcome == "ok", (end.error, end.stderr[-2000:])
    (init,) = [e for e in events if isinstance(e, Init)]
    assert [(s.name, s.status) for s in init.mcp_servers] == [("hive", "connected")]
    assert "mcp__hive__send" in init.tools and "mcp__hive__request_spawn" in init.tools
    assert [e.tool for e in events if isinstance(e, ToolUse)] == ["mcp__hive__send"]
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert not result.is_error and "sent to bob" in result.summary
    with rig.ops.locked() as store:
        inbox = store.messages.undelivered("bob")
    assert [(m.sender, m.kind, m.body) for m in inbox] == [("alice", MessageKind.PEER, "hi")]
    assert rig.ops.calls == [("send", "alice")]


def test_alice_asking_for_a_spawn_through_the_cli_is_refused(
    claude: ClaudeBinary, rig: Rig, tmp_path: Path
) -> None:
    end, events = alice_turn(
        claude, rig, tmp_path, '@tool mcp__hive__request_spawn {"name": "carol"}'
    )
    assert end.outcome == "ok", (end.error, end.stderr[-2000:])
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert result.is_error
    assert "request_spawn is for the manager; ask the manager to do it" in result.summary
    # The model read the refusal: the loopback model quotes each tool result in its answer.
    assert end.result_text is not None and "request_spawn is for the manager" in end.result_text
    assert rig.ops.calls == []
    with rig.ops.locked() as store:
        assert store.approvals.recent() == [] and store.registry.find("carol") is None
    assert json.dumps(end.stderr).count(rig.alice_token) == 0
