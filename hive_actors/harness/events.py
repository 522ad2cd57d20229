"""Typed results of one ``claude`` turn: the live ``TurnEvent``s and the ``TurnEnd`` summary.

All are frozen dataclasses; ``TurnEvent.describe()`` gives one line a person can read in a live
turn log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "ApiRetry",
    "AssistantText",
    "CommandOutput",
    "CompactBoundary",
    "Init",
    "Malformed",
    "McpServerStatus",
    "Outcome",
    "PermissionDenial",
    "PermissionDenied",
    "Status",
    "Tokens",
    "ToolResult",
    "ToolUse",
    "TurnEnd",
    "TurnEvent",
]

Outcome = Literal["ok", "error", "compact-retry", "timeout", "cancelled"]
"""How a turn ended: the parser says ok/error; the runner adds timeout, cancelled, compact-retry."""


@dataclass(frozen=True)
class McpServerStatus:
    """One MCP server as ``system/init`` reports it."""

    name: str
    """The server's key in ``--mcp-config``."""
    status: str
    """``connected``, ``failed``, ``needs-auth``, ``pending``..."""


@dataclass(frozen=True)
class PermissionDenial:
    """A tool call the CLI refused because no allow rule covered it."""

    tool: str
    """The tool's name (``Bash``, ``mcp__x__y``)."""
    summary: str
    """A short summary of the refused input (the command, the path...)."""


@dataclass(frozen=True)
class Tokens:
    """Token counts of one turn."""

    input: int = 0
    """Uncached input tokens."""
    output: int = 0
    """Output tokens."""
    cache_read: int = 0
    """Input tokens read from the prompt cache."""
    cache_creation: int = 0
    """Input tokens written to the prompt cache."""


class TurnEvent:
    """Base of the live events of a turn."""

    def describe(self) -> str:
        """One line for a person reading the live turn log."""
        return type(self).__name__


@dataclass(frozen=True)
class Init(TurnEvent):
    """``system/init``: the session started (or resumed) with this model and these servers."""

    session_id: str | None
    """The claude session id."""
    model: str | None
    """The model that will answer (aliases already resolved by the CLI)."""
    mcp_servers: tuple[McpServerStatus, ...]
    """Every configured MCP server and its status."""
    tools: tuple[str, ...]
    """Tool names the model is offered."""
    permission_mode: str | None
    """``default``, ``acceptEdits``, ``bypassPermissions``..."""
    version: str | None
    """The CLI's version."""

    def describe(self) -> str:
        servers = ", ".join(f"{s.name}:{s.status}" for s in self.mcp_servers) or "none"
        return f"session {self.session_id} · model {self.model} · mcp {servers}"


@dataclass(frozen=True)
class AssistantText(TurnEvent):
    """A text block the model wrote, or the CLI's synthetic API-error message."""

    text: str
    """The text."""
    model: str | None
    """The answering model (``<synthetic>`` for a CLI-made error message)."""
    api_error_status: int | None = None
    """The HTTP status of the API error this message reports, if it is one."""

    def describe(self) -> str:
        prefix = f"API error {self.api_error_status}: " if self.api_error_status else ""
        return prefix + _one_line(self.text)


@dataclass(frozen=True)
class ToolUse(TurnEvent):
    """The model asked for a tool."""

    tool: str
    """The tool's name."""
    tool_use_id: str
    """The tool_use id, echoed by its ToolResult."""
    summary: str
    """A short summary of the input."""

    def describe(self) -> str:
        return f"→ {self.tool} {self.summary}"


@dataclass(frozen=True)
class ToolResult(TurnEvent):
    """A tool's result as sent back to the model."""

    tool_use_id: str
    """The tool_use id this answers."""
    tool: str | None
    """The tool's name, when its ToolUse was seen."""
    is_error: bool
    """True for a failed or refused tool."""
    summary: str
    """The start of the result text."""

    def describe(self) -> str:
        mark = "✗" if self.is_error else "←"
        return f"{mark} {self.tool or self.tool_use_id} {self.summary}"


@dataclass(frozen=True)
class PermissionDenied(TurnEvent):
    """``system/permission_denied``: the CLI refused a tool call (no allow rule matched)."""

    tool: str
    """The tool's name."""
    tool_use_id: str | None
    """The refused tool_use id."""
    message: str
    """The CLI's explanation."""

    def describe(self) -> str:
        return f"denied {self.tool}: {_one_line(self.message)}"


@dataclass(frozen=True)
class ApiRetry(TurnEvent):
    """``system/api_retry``: the CLI retries a failed API request."""

    attempt: int
    """This retry's number (1-based)."""
    max_retries: int
    """The CLI's retry budget."""
    delay_ms: int
    """Wait before the retry."""
    error_status: int | None
    """HTTP status of the failure."""
    error: str
    """The CLI's error label (``overloaded``...)."""

    def describe(self) -> str:
        return f"API retry {self.attempt}/{self.max_retries} after {self.error_status} {self.error}"


@dataclass(frozen=True)
class CompactBoundary(TurnEvent):
    """``system/compact_boundary``: the conversation was compacted."""

    trigger: str | None
    """``auto`` or ``manual``."""
    pre_tokens: int | None
    """Context size before."""
    post_tokens: int | None
    """Context size after."""

    def describe(self) -> str:
        return f"compacted ({self.trigger}): {self.pre_tokens} → {self.post_tokens} tokens"


@dataclass(frozen=True)
class Status(TurnEvent):
    """``system/status``: e.g. ``compacting``, then the compaction's result."""

    status: str | None
    """The new status (None when a status ends)."""
    detail: str | None
    """Extra detail (``compact_result``)."""

    def describe(self) -> str:
        return f"status {self.status or '-'}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class CommandOutput(TurnEvent):
    """Output of a local slash command (``/compact``)."""

    text: str
    """The command's output."""

    def describe(self) -> str:
        return f"command: {_one_line(self.text)}"


@dataclass(frozen=True)
class Malformed(TurnEvent):
    """A stdout line that is not a stream-json object."""

    line: str
    """The start of the line."""
    error: str
    """Why it was not understood."""

    def describe(self) -> str:
        return f"unreadable output line ({self.error}): {self.line}"


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class TurnEnd:
    """The summary of one turn (one or more CLI runs, see ``outcome``)."""

    outcome: Outcome
    """ok / error from the result; timeout, cancelled, compact-retry from the runner."""
    duration_s: float
    """Wall time of the turn, in seconds."""
    tool_calls: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Tool calls the model made, by tool name (refused ones included)."""
    tokens: Tokens = Tokens()
    """Token counts of this turn."""
    cost_usd: float = 0.0
    """Cost of this turn (the CLI's estimate)."""
    session_cost_usd: float = 0.0
    """Cost of the whole session so far (``total_cost_usd`` is cumulative on a resume)."""
    model: str | None = None
    """The model that answered (``system/init``; else the busiest model of ``modelUsage``)."""
    models: tuple[str, ...] = ()
    """Every model that answered a request this turn (side requests included)."""
    permission_denials: tuple[PermissionDenial, ...] = ()
    """Tool calls refused for lack of an allow rule."""
    session_id: str | None = None
    """The claude session the turn ran in."""
    terminal_reason: str | None = None
    """``completed``, ``max_turns``, ``prompt_too_long``, ``api_error``..."""
    num_turns: int = 0
    """Model round trips in the turn."""
    mcp_servers: tuple[McpServerStatus, ...] = ()
    """MCP server statuses from ``system/init``."""
    is_error: bool = False
    """The result's ``is_error`` (or True when there was no result)."""
    error: str | None = None
    """What went wrong, for a person: the error result, or the runner's explanation."""
    result_text: str | None = None
    """The result's text (the model's final answer)."""
    api_error_status: int | None = None
    """HTTP status of the API error that ended the turn."""
    compacted: bool = False
    """A compaction happened during the turn."""
    exit_code: int | None = None
    """The CLI's exit status (negative: killed by that signal); None before it exited."""
    stderr: str = ""
    """The end of the CLI's stderr (bounded)."""
    malformed_lines: int = 0
    """stdout lines that were not stream-json."""
    attempts: int = 1
    """CLI runs behind this TurnEnd (compaction and retries included)."""
