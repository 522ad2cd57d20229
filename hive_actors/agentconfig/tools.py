"""From a validated ``agent.toml`` to the claude CLI's tool surface (pure).

- :func:`allowed_tools`: the ``--allowedTools`` rules: ``mcp__hive__*`` (the hive's own tools,
  always), ``Bash(<pattern>)`` per ``[bash] allow`` pattern, then each extra server's allowed
  tools (``mcp__<name>__*`` or ``mcp__<name>__<tool>``).
- :func:`extra_servers`: the extra servers' ``mcpServers`` entries (command/args/env), and
  :func:`mcp_config` the whole ``--mcp-config`` object with the hive's entry beside them.
- :func:`failed_required`: the required servers that ``system/init`` did not report connected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hive_actors.agentconfig.schema import RESERVED_SERVER, AgentConfig
from hive_actors.errors import ConfigError
from hive_actors.harness.events import McpServerStatus

__all__ = ["HIVE_TOOLS", "allowed_tools", "extra_servers", "failed_required", "mcp_config"]

HIVE_TOOLS = f"mcp__{RESERVED_SERVER}__*"
"""The rule that allows every tool of the hive's own MCP server."""


def allowed_tools(config: AgentConfig) -> list[str]:
    """The ``--allowedTools`` rules for ``config``, without duplicates, hive's first."""
    rules = [HIVE_TOOLS]
    rules += [f"Bash({pattern})" for pattern in config.bash_allow]
    for server in config.mcp:
        for tool in server.allow or ():
            rules.append(f"mcp__{server.name}__{tool}")
    return list(dict.fromkeys(rules))


def extra_servers(config: AgentConfig) -> dict[str, dict[str, Any]]:
    """``mcpServers`` entries of the agent's extra (stdio) servers, keyed by name."""
    return {
        server.name: {
            "command": server.command,
            "args": list(server.args),
            "env": dict(server.env),
        }
        for server in config.mcp
    }


def mcp_config(hive_entry: Mapping[str, Any], config: AgentConfig) -> dict[str, Any]:
    """The ``--mcp-config`` object: the hive's server (``hive_entry``, e.g. ``{"type": "http",
    "url": ..., "headers": ...}``) under ``hive``, then the agent's extra servers."""
    extra = extra_servers(config)
    if RESERVED_SERVER in extra:
        # parse_agent_toml refuses it; an AgentConfig built by hand must not shadow the hive.
        raise ConfigError(
            f"agent.toml: an extra MCP server is named {RESERVED_SERVER!r}, the hive's own: "
            "rename it"
        )
    return {"mcpServers": {RESERVED_SERVER: dict(hive_entry), **extra}}


def failed_required(config: AgentConfig, reported: Iterable[McpServerStatus]) -> list[str]:
    """Names of ``config``'s required servers that ``system/init`` (``Init.mcp_servers``) did
    not report ``connected``, missing ones included."""
    status = {s.name: s.status for s in reported}
    return [s.name for s in config.mcp if s.required and status.get(s.name) != "connected"]
