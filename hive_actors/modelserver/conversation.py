"""Pure reading of a Messages API request body as the ``claude`` CLI sends it.

The CLI wraps the person's prompt in meta text blocks (``<system-reminder>``, local-command
caveats, compaction summaries) and sends ``role: "system"`` entries inside ``messages``; these
helpers find what a script needs: the newest user prompt and where it sits, the tools offered,
the tool calls and results after the prompt, and whether the request is a compaction request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Prompt",
    "ToolExchange",
    "block_text",
    "is_compaction_request",
    "iter_blocks",
    "newest_prompt",
    "offered_tools",
    "tool_exchanges_after",
    "user_texts",
]

# Text blocks the CLI adds around a prompt; none of them is something the person typed.
_META_PREFIXES = (
    "<system-reminder>",
    "<local-command-",
    "<command-name>",
    "<command-message>",
    "<command-args>",
    "This session is being continued from a previous conversation",
    "[earlier conversation truncated",
)

# The compaction prompt of CLI 2.1.331 (manual /compact and auto-compaction alike).
_COMPACTION_MARKERS = (
    "Your task is to create a detailed summary of the conversation so far",
    "an <analysis> block followed by a <summary> block",
)


@dataclass(frozen=True)
class Prompt:
    """The newest user prompt of a request and its position in ``messages``."""

    text: str
    """The prompt text as the person (or the harness) wrote it."""
    message_index: int
    """Index of the message holding it in ``messages``."""
    block_index: int
    """Index of the text block inside that message's content (0 for a string content)."""


@dataclass(frozen=True)
class ToolExchange:
    """A tool_use the assistant made after the prompt, and its result once the client sent it."""

    tool_use_id: str
    """The tool_use block's id."""
    name: str
    """The tool's name."""
    result: str | None
    """The tool_result's text, or None while no result came back."""
    is_error: bool
    """The tool_result's ``is_error`` flag (a denied or failed tool)."""


def iter_blocks(message: Mapping[str, Any]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield ``(index, block)`` for a message's content; a string content is one text block."""
    content = message.get("content")
    if isinstance(content, str):
        yield 0, {"type": "text", "text": content}
    elif isinstance(content, list):
        for i, block in enumerate(content):
            if isinstance(block, Mapping):
                yield i, block


def block_text(block: Mapping[str, Any]) -> str:
    """The text of a text or tool_result block (tool_result content may be a list of blocks)."""
    if block.get("type") == "text":
        text = block.get("text")
        return text if isinstance(text, str) else ""
    content = block.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def _messages(request: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    messages = request.get("messages")
    if not isinstance(messages, list):
        return ()
    return [m for m in messages if isinstance(m, Mapping)]


def _is_meta(text: str) -> bool:
    stripped = text.lstrip()
    return not stripped or stripped.startswith(_META_PREFIXES)


def newest_prompt(request: Mapping[str, Any]) -> Prompt | None:
    """The newest text the user typed: the last non-meta text block of a user message.

    tool_result blocks and the CLI's meta blocks are skipped, so a request in the middle of a
    tool loop still finds the prompt that started it.
    """
    messages = _messages(request)
    for mi in range(len(messages) - 1, -1, -1):
        message = messages[mi]
        if message.get("role") != "user":
            continue
        for bi, block in reversed(list(iter_blocks(message))):
            if block.get("type") != "text":
                continue
            text = block_text(block)
            if not _is_meta(text):
                return Prompt(text=text, message_index=mi, block_index=bi)
    return None


def user_texts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every non-meta text block of the user messages, oldest first."""
    return [
        block_text(block)
        for message in messages
        if message.get("role") == "user"
        for _, block in iter_blocks(message)
        if block.get("type") == "text" and not _is_meta(block_text(block))
    ]


def offered_tools(request: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the tools the request offers the model, in request order."""
    tools = request.get("tools")
    if not isinstance(tools, list):
        return ()
    return tuple(
        str(tool["name"]) for tool in tools if isinstance(tool, Mapping) and "name" in tool
    )


def is_compaction_request(request: Mapping[str, Any]) -> bool:
    """True when the newest user text is the CLI's "summarize the conversation" prompt."""
    messages = _messages(request)
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        for _, block in reversed(list(iter_blocks(message))):
            if block.get("type") == "text":
                text = block_text(block)
                return all(marker in text for marker in _COMPACTION_MARKERS)
        # A user message of tool_results only: the compaction prompt is never one.
        return False
    return False


def tool_exchanges_after(request: Mapping[str, Any], prompt: Prompt) -> list[ToolExchange]:
    """The tool calls the assistant made after ``prompt``, paired with their results."""
    messages = _messages(request)
    uses: list[tuple[str, str]] = []
    results: dict[str, tuple[str, bool]] = {}
    for mi in range(prompt.message_index, len(messages)):
        message = messages[mi]
        for bi, block in iter_blocks(message):
            if mi == prompt.message_index and bi <= prompt.block_index:
                continue
            kind = block.get("type")
            if message.get("role") == "assistant" and kind == "tool_use":
                uses.append((str(block.get("id", "")), str(block.get("name", ""))))
            elif message.get("role") == "user" and kind == "tool_result":
                results[str(block.get("tool_use_id", ""))] = (
                    block_text(block),
                    bool(block.get("is_error", False)),
                )
    exchanges = []
    for use_id, name in uses:
        result = results.get(use_id)
        exchanges.append(
            ToolExchange(
                tool_use_id=use_id,
                name=name,
                result=None if result is None else result[0],
                is_error=False if result is None else result[1],
            )
        )
    return exchanges
