"""Per-agent configuration: the git repository the manager edits and the operator approves
(:mod:`.repo`), ``agent.toml`` (:mod:`.schema`) and the tool surface it grants (:mod:`.tools`)."""

from __future__ import annotations

from hive_actors.agentconfig.repo import AGENT_TOML, ConfigRepo
from hive_actors.agentconfig.schema import (
    RESERVED_SERVER,
    AgentConfig,
    Limits,
    McpServer,
    bash_pattern_problem,
    parse_agent_toml,
    resolve_command,
)
from hive_actors.agentconfig.tools import (
    HIVE_TOOLS,
    allowed_tools,
    extra_servers,
    failed_required,
    mcp_config,
)

__all__ = [
    "AGENT_TOML",
    "HIVE_TOOLS",
    "RESERVED_SERVER",
    "AgentConfig",
    "ConfigRepo",
    "Limits",
    "McpServer",
    "allowed_tools",
    "bash_pattern_problem",
    "extra_servers",
    "failed_required",
    "mcp_config",
    "parse_agent_toml",
    "resolve_command",
]
