"""The hive's MCP surface: the tools every agent's ``claude`` calls, over one HTTP endpoint.

Modules: ``tools`` (the one table of tools: name, description, handler, manager-only),
``tokens`` (per-agent bearer tokens, the caller they name, and the ``--mcp-config``
that carries them), ``rules`` (who may call which tool; pure), ``render`` (what the model
reads; pure), ``ops`` (the :class:`HiveOps` protocol the tools call), ``guard`` (the 401 in
front of the endpoint) and ``surface`` (the ``MCPServer``, its tools and the ASGI app).
"""

from __future__ import annotations

from .guard import BearerGuard
from .ops import AgentStatus, Draft, HiveOps, InboxMessage, Revival
from .rules import authorize
from .surface import DEFAULT_CALL_TIMEOUT_S, LOOPBACK_HOSTS, HiveSurface
from .tokens import HIVE_SERVER, Caller, StdioServer, TokenBook, bearer_token, mcp_config
from .tools import AGENT_TOOLS, DESCRIPTIONS, MANAGER_TOOLS, TOOL_NAMES, TOOLS, HiveCall, Tool

__all__ = [
    "AGENT_TOOLS",
    "DEFAULT_CALL_TIMEOUT_S",
    "DESCRIPTIONS",
    "HIVE_SERVER",
    "LOOPBACK_HOSTS",
    "MANAGER_TOOLS",
    "TOOLS",
    "TOOL_NAMES",
    "AgentStatus",
    "BearerGuard",
    "Caller",
    "Draft",
    "HiveCall",
    "HiveOps",
    "HiveSurface",
    "InboxMessage",
    "Revival",
    "StdioServer",
    "TokenBook",
    "Tool",
    "authorize",
    "bearer_token",
    "mcp_config",
]
