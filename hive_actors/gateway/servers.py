"""An agent's extra MCP servers as the operator sees them on its page (``GET /api/servers``).

What ``agent.toml`` of the applied config declares (``[mcp.<name>]``: command, arguments, the
tools allowed, whether it is required; the *names* of its environment variables, never their
values, which may be secrets), and how each fared at the agent's last turn: the status the
``claude`` CLI reported when it started its servers (``connected``, ``failed``, ``pending``…),
with the turn's outcome, or ``not started yet`` before any turn ran with it. A config that does
not parse is said as it is, with the reason (the agent cannot start with it either).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hive_actors.agentconfig.schema import parse_agent_toml
from hive_actors.errors import ConfigError
from hive_actors.store import EventKind, Store

__all__ = ["agent_servers"]


def agent_servers(store: Store, name: str, agent_toml: Path) -> dict[str, Any]:
    """``{"servers": [...], "error": str | None, "last_turn": {...} | None}`` for ``name``."""
    try:
        text = agent_toml.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"servers": [], "error": None, "last_turn": None}  # never configured: no extras
    except OSError as exc:
        return {"servers": [], "error": f"cannot read {agent_toml}: {exc.strerror}",
                "last_turn": None}
    try:
        # The commands are not looked up here: on some backends they exist only in the
        # container; the agent's own start checks them.
        config = parse_agent_toml(text, source="applied agent.toml", resolve=None)
    except ConfigError as exc:
        return {"servers": [], "error": str(exc), "last_turn": None}
    last = store.events.latest(name, [EventKind.TURN_ENDED], 1)
    seen: dict[str, str] = {}
    last_turn = None
    if last:
        payload = last[0].payload
        last_turn = {"turn_id": payload.get("turn_id"), "outcome": payload.get("outcome"),
                     "ts": last[0].ts}
        for entry in payload.get("mcp_servers") or ():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                seen[entry["name"]] = str(entry.get("status", "unknown"))
    servers = [
        {
            "name": server.name,
            "tools": f"mcp__{server.name}__*",
            "command": server.command,
            "args": list(server.args),
            "env": sorted(server.env),
            "allow": list(server.allow) if server.allow is not None else [],
            "required": server.required,
            "status": seen.get(server.name, "not started yet"),
        }
        for server in config.mcp
    ]
    return {"servers": servers, "error": None, "last_turn": last_turn}
