"""What every AgentActor of a hive shares: the backend, tokens, the CLI, the model endpoint.

One :class:`AgentRuntime` per hive; the AgentsSupervisor hands it to each AgentActor it starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hive_actors.agent.turnbook import TurnBook
from hive_actors.clock import Clock
from hive_actors.harness import ClaudeBinary
from hive_actors.hive import Hive

if TYPE_CHECKING:
    from hive_actors.containers.base import ContainerBackend

__all__ = ["AgentRuntime", "AgentSettings"]


@dataclass(frozen=True)
class AgentSettings:
    """An agent's applied configuration, as the turn harness needs it."""

    model: str
    allowed_tools: tuple[str, ...] = ("mcp__hive__*",)
    system_prompt: str | None = None
    max_turns: int | None = None
    turn_deadline: float = 600.0
    extra_servers: Mapping[str, Any] = field(default_factory=dict)
    """``mcpServers`` entries of the agent's own MCP servers (command/args/env)."""
    required_servers: frozenset[str] = frozenset({"hive"})
    """Servers whose failure at ``system/init`` fails the turn."""


@dataclass
class AgentRuntime:
    """The services and settings every agent of one hive uses."""

    hive: Hive
    backend: ContainerBackend
    """The container backend (``hive_actors.containers``; the daemon's wraps it so the crash
    watcher hears of the hive's own stops first)."""
    tokens: Any
    """The MCP token book (``hive_actors.mcp.tokens.TokenBook``)."""
    claude: Callable[[], ClaudeBinary]
    """Finds (and version-checks) the CLI; called at each agent start, so a missing or wrong
    CLI is that agent's clear start failure (crashed → given up), not a silent hang."""
    base_url: str
    """ANTHROPIC_BASE_URL for the CLI."""
    mcp_url: Callable[..., str]
    """The hive MCP endpoint the agents' CLI connects to (known once the gateway listens)."""
    settings: Callable[[str], AgentSettings]
    """Reads an agent's applied config (raises ConfigError, naming the file and key)."""
    container_spec: Callable[[str, AgentSettings], Any]
    """What the backend's ``create`` needs for this agent."""
    render_mcp_config: Callable[[str, str, str, Mapping[str, Any]], dict[str, Any]]
    """(agent, token, url, extra servers) → the ``--mcp-config`` object."""
    clock: Clock
    prepare: Callable[[Any], None] = lambda approval: None
    """Carries out an approved spawn/config approval on disk before the agent (re)starts: a
    one-shot spawn gets a default config repo, a commit is applied (``applied/`` moves)."""
    purge: Callable[[str], None] = lambda agent: None
    """Removes a destroyed agent's directories (when its state is not kept)."""
    api_key: str | None = field(default=None, repr=False)
    """``ANTHROPIC_API_KEY`` of each turn (a :class:`~hive_actors.credentials.Secret`)."""
    credential_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The credentials' other variables (an OAuth token, a cloud provider's settings): in each
    turn's environment only (:meth:`agent_env`), never the container's, so the agent's
    terminal shell and the keeper do not see them."""
    turns: TurnBook = field(default_factory=TurnBook)
    on_turn_end: Callable[[Any], None] = lambda record: None
    """Telemetry hook: gets each turn's :class:`~hive_actors.protocol.TurnRecord`."""
    ask_timeout: float = 30.0
    stop_grace: float = 10.0
    """Seconds a stopping agent gives its running turn before it stops the container."""
    grace: Any = None
    """The backend's StopGrace for the container itself (None: the backend's default)."""
    tick_interval: float = 30.0
    heartbeat_timeout: float = 300.0
    max_failed_turns: int = 3
    notes_threshold: int = 16 * 1024
    """notes.md larger than this (bytes) is compacted after a turn."""
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def agent_env(self, agent: str) -> dict[str, str]:
        """The per-agent environment of the CLI for a turn: its own config dir, HOME and TMPDIR,
        as its container sees them (the backend's :meth:`environment` and :meth:`inside`), and
        the credentials' variables."""
        paths = self.hive.agent_paths(agent)
        base = self.backend.environment(agent)
        env = {
            "CLAUDE_CONFIG_DIR": base.get("CLAUDE_CONFIG_DIR", str(paths.claude)),
            "HOME": base.get("HOME", str(paths.home)),
            "TMPDIR": base.get("TMPDIR", str(paths.tmp)),
            "XDG_RUNTIME_DIR": base.get("XDG_RUNTIME_DIR", str(paths.tmp)),
            "HIVE_AGENT": agent,
            "HIVE_STATE_DIR": self.backend.inside(agent, paths.state),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        env.update(self.extra_env)
        env.update(self.credential_env)
        return env

    def mcp_config(
        self, agent: str, token: str, settings: AgentSettings, cancel: Any = None
    ) -> dict[str, Any]:
        """The agent's ``--mcp-config``: the hive server with its token, then its own servers."""
        url = self.mcp_url(timeout=self.ask_timeout, cancel=cancel)
        return self.render_mcp_config(agent, token, url, settings.extra_servers)
