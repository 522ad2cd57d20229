"""An agent's own MCP servers end to end (issue 19, item 5): ``agent.toml`` declares a small real
stdio server (tests/fixtures/echo_mcp_server.py), the real ``claude`` CLI calls its allowed tool
as ``mcp__echo__shout`` in a turn, a tool outside the agent's allowed tools is refused (never
runs), and the agent's page lists the server and its state. A server that speaks nonsense is
said where the operator looks, and the turn still ends honestly."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hive_actors.agent.supervisor import ReviveAgent, StopAgent
from hive_actors.store import AgentState, EventKind, Role
from tests.support.gateway import Hive, agent_port, gateway_hive, wait_state
from tests.support.hive import send
from tests.support.pages import Tab, screenshot
from tests.support.timeout import TIMEOUT

SERVER = Path(__file__).resolve().parent / "fixtures" / "echo_mcp_server.py"


def _tool(tool_name: str, /, **args: object) -> str:
    return f"@tool {tool_name} {json.dumps(args)}"


def _configure(hive: Hive, name: str, toml: str) -> None:
    """Apply ``toml`` as ``name``'s config (the manager's commit, approved) and restart it."""
    repo = hive.daemon.desk.ensure_repo(name)
    sha = repo.commit_files(repo.head("applied"), {"agent.toml": toml}, "boss <boss@hive>",
                            message="an echo server")
    repo.apply(sha)
    mark = hive.last_event_id()
    agents = hive.daemon.hive.directory.get("agents")
    agents.ask(StopAgent(name), timeout=TIMEOUT)
    agents.ask(ReviveAgent(name), timeout=TIMEOUT * 2)
    wait_state(hive, name, AgentState.IDLE, after=mark)


def _turn(hive: Hive, name: str, body: str) -> tuple[Any, list[str]]:
    """Send ``body``; the turn's ``turn.ended`` event and its log lines."""
    mark = hive.last_event_id()
    send(hive.daemon, name, body)
    ended = hive.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == name,
                          after=mark)
    with hive.daemon.hive.open_store() as store:
        lines = [e.payload.get("line", "") for e in store.events.events_since(mark, 10_000)
                 if e.kind == EventKind.TURN_LOG and e.agent == name and e.id <= ended.id]
    return ended, lines


def _servers(hive: Hive, name: str) -> dict[str, Any]:
    with hive.api(agent_port(hive, name)) as page:
        answer = page.get("/api/servers")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body, dict)
    return body


def test_the_real_cli_calls_an_agents_own_server_and_only_its_allowed_tool(
    tmp_path: Path, tab: Tab,
) -> None:
    calls = tmp_path / "calls.txt"
    toml = (f'[mcp.echo]\ncommand = "{sys.executable}"\nargs = ["{SERVER}"]\n'
            f'env = {{ ECHO_MCP_CALLS = "{calls}" }}\nallow = ["shout"]\nrequired = true\n')
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        before = _servers(hive, "alice")
        assert before["servers"] == [] and before["error"] is None
        _configure(hive, "alice", toml)
        listed = _servers(hive, "alice")["servers"]
        assert [(s["name"], s["status"], s["allow"]) for s in listed] == [
            ("echo", "not started yet", ["shout"])]

        ended, lines = _turn(hive, "alice", "\n".join([
            _tool("mcp__echo__shout", text="hello hive"),
            _tool("mcp__echo__secret"),
        ]))
        assert ended.payload["outcome"] == "ok", ended.payload
        assert ended.payload["tool_calls"].get("mcp__echo__shout") == 1, ended.payload
        assert any("HELLO HIVE" in line for line in lines), lines
        # Outside the agent's allowed tools: refused by the CLI, and it never ran.
        denied = ended.payload["permission_denials"]
        assert any(d.startswith("mcp__echo__secret") for d in denied), ended.payload
        assert calls.read_text().split() == ["shout"]

        page = _servers(hive, "alice")
        (echo,) = page["servers"]
        assert echo["status"] == "connected" and echo["tools"] == "mcp__echo__*"
        assert echo["required"] is True and echo["command"] == sys.executable
        assert echo["env"] == ["ECHO_MCP_CALLS"] and str(calls) not in json.dumps(page)
        assert page["last_turn"]["outcome"] == "ok"

        # The agent's page lists it, as the operator sees it.
        browser = tab.page
        browser.goto(hive.login_url())
        browser.goto(f"http://127.0.0.1:{agent_port(hive, 'alice')}/")
        row = browser.locator('#servers tr[data-server="echo"]')
        row.locator(".state", has_text="connected").wait_for()
        assert "shout" in row.inner_text() and "required" in row.inner_text()
        screenshot(browser, "agent-mcp-servers")
        tab.check()


def test_a_server_that_speaks_nonsense_is_said_and_the_turn_ends_honestly(
    tmp_path: Path,
) -> None:
    toml = (f'[mcp.echo]\ncommand = "{sys.executable}"\nargs = ["{SERVER}", "--nonsense"]\n'
            'allow = ["*"]\n')
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        _configure(hive, "alice", toml)
        ended, _ = _turn(hive, "alice", "just say hello")
        # Not required: the turn goes on without it, and the page says the server failed.
        assert ended.payload["outcome"] == "ok", ended.payload
        (echo,) = _servers(hive, "alice")["servers"]
        assert echo["status"] == "failed", echo

        _configure(hive, "alice", toml + "required = true\n")
        ended, _ = _turn(hive, "alice", "say hello again")
        assert ended.payload["outcome"] == "error", ended.payload
        assert "required MCP server(s) failed to start: echo" in ended.payload["error"]
        (echo,) = _servers(hive, "alice")["servers"]
        assert echo["status"] == "failed" and echo["required"] is True
