"""What the model server answers: typed replies, chosen by a policy and encoded by ``wire``.

A policy is a pure callable ``(request_json) -> Reply``. The server only encodes the reply (SSE
or a JSON message, or an error body) and honours its delay; every decision lives in the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ApiError",
    "Block",
    "Policy",
    "Reply",
    "TextBlock",
    "ToolUseBlock",
    "api_error",
    "text_reply",
    "tool_use_reply",
]

StopReason = Literal["end_turn", "tool_use", "max_tokens", "stop_sequence"]


@dataclass(frozen=True)
class TextBlock:
    """A text content block of an assistant message."""

    text: str
    """The text the model "says"."""


@dataclass(frozen=True)
class ToolUseBlock:
    """A tool_use content block: the model asks the client to run a tool."""

    id: str
    """The tool_use id the client echoes back in its tool_result."""
    name: str
    """The tool name as the model sees it (``Bash``, ``mcp__hive__send``)."""
    input: Mapping[str, Any]
    """The tool's arguments (a JSON object)."""


Block = TextBlock | ToolUseBlock


@dataclass(frozen=True)
class ApiError:
    """An error answer in the Messages API's shape: ``{"type": "error", "error": {...}}``."""

    status: int
    """HTTP status (400 invalid request, 529 overloaded, ...)."""
    type: str
    """The API's error type (``invalid_request_error``, ``overloaded_error``, ``api_error``)."""
    message: str
    """The human-readable message; the CLI matches some of them (``prompt is too long: ...``)."""


@dataclass(frozen=True)
class Reply:
    """One answer to one ``POST /v1/messages``: content blocks, or an API error."""

    kind: str
    """A short label for the request log and tests (``text``, ``tool_use``, ``summary``, ...)."""
    content: tuple[Block, ...] = ()
    """The assistant message's content blocks, in order."""
    stop_reason: StopReason = "end_turn"
    """``tool_use`` when the content asks for tools, else ``end_turn``."""
    delay_s: float = 0.0
    """Seconds to wait before answering (a slow model; cut short when the server stops)."""
    error: ApiError | None = None
    """When set, the server answers this error instead of a message."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Free annotations a custom policy wants to see in the request log."""


Policy = Callable[[Mapping[str, Any]], Reply]
"""Decides the reply to one request from the request body alone (never from a counter)."""


def text_reply(text: str, *, kind: str = "text", delay_s: float = 0.0) -> Reply:
    """A plain text answer that ends the turn."""
    return Reply(kind=kind, content=(TextBlock(text),), stop_reason="end_turn", delay_s=delay_s)


def tool_use_reply(block: ToolUseBlock, *, text: str = "", delay_s: float = 0.0) -> Reply:
    """An answer that asks the client to run one tool (optionally after a line of text)."""
    content: tuple[Block, ...] = ((TextBlock(text),) if text else ()) + (block,)
    return Reply(kind="tool_use", content=content, stop_reason="tool_use", delay_s=delay_s)


def api_error(status: int, type_: str, message: str, *, kind: str = "error") -> Reply:
    """An error answer with the given HTTP status and API error type."""
    return Reply(kind=kind, error=ApiError(status=status, type=type_, message=message))
