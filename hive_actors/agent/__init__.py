"""The agents: AgentActor (one agent, its container and turns), AgentsSupervisor, and the
hive operations behind the MCP tools."""

from __future__ import annotations
