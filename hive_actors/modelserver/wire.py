"""The Messages API wire format, sans I/O: a Reply to SSE events or a JSON message, and back.

``reply_events`` gives the streaming events (``message_start``, ``content_block_*``,
``message_delta``, ``message_stop``); ``encode_sse`` turns events into bytes; ``SSEDecoder``
parses bytes back into events (used by tests and by anyone reading our stream);
``assemble_message`` folds events into the message they describe, which equals
``reply_message`` for the same reply: the round trip the property tests check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hive_actors.modelserver.replies import ApiError, Reply, TextBlock, ToolUseBlock

__all__ = [
    "SSEDecoder",
    "SSEEvent",
    "Usage",
    "assemble_message",
    "encode_sse",
    "error_body",
    "reply_events",
    "reply_message",
]

# Split long text and JSON into several deltas, as the real API streams them.
_CHUNK = 40


@dataclass(frozen=True)
class SSEEvent:
    """One server-sent event: its ``event:`` name and the JSON object in ``data:``."""

    event: str
    """The event name, equal to ``data["type"]`` for the Messages API."""
    data: Mapping[str, Any]
    """The decoded JSON payload."""


@dataclass(frozen=True)
class Usage:
    """Token counts reported with a reply."""

    input_tokens: int
    """Tokens of the request (an estimate from its size for the loopback model)."""
    output_tokens: int
    """Tokens of the answer (an estimate from its length)."""


def _chunks(text: str) -> list[str]:
    return [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]


def _block_json(block: TextBlock | ToolUseBlock) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input)}


def reply_message(reply: Reply, *, model: str, message_id: str, usage: Usage) -> dict[str, Any]:
    """The non-streaming JSON message for ``reply`` (which must not be an error)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_block_json(b) for b in reply.content],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    }


def reply_events(reply: Reply, *, model: str, message_id: str, usage: Usage) -> list[SSEEvent]:
    """The streaming events for ``reply`` (which must not be an error)."""
    events = [
        SSEEvent(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1},
                },
            },
        )
    ]
    for index, block in enumerate(reply.content):
        if isinstance(block, TextBlock):
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": part} for part in _chunks(block.text)]
        else:
            start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            raw = json.dumps(dict(block.input), separators=(",", ":"))
            deltas = [{"type": "input_json_delta", "partial_json": part} for part in _chunks(raw)]
        events.append(
            SSEEvent(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        events.extend(
            SSEEvent(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}
            )
            for d in deltas
        )
        events.append(
            SSEEvent("content_block_stop", {"type": "content_block_stop", "index": index})
        )
    events.append(
        SSEEvent(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage.output_tokens},
            },
        )
    )
    events.append(SSEEvent("message_stop", {"type": "message_stop"}))
    return events


def error_body(error: ApiError) -> dict[str, Any]:
    """The JSON body of an API error answer."""
    return {"type": "error", "error": {"type": error.type, "message": error.message}}


def encode_sse(events: Iterable[SSEEvent]) -> bytes:
    """Serialize events as ``event: <name>\\ndata: <json>\\n\\n`` records."""
    return b"".join(
        f"event: {e.event}\ndata: {json.dumps(e.data, separators=(',', ':'))}\n\n".encode()
        for e in events
    )


class SSEDecoder:
    """Incremental SSE parser: feed bytes in any split, get whole events out.

    Follows the SSE rules the Messages API needs: ``event:`` and ``data:`` fields (several
    ``data:`` lines joined by newlines), ``:`` comment lines ignored, a blank line ends an event,
    CRLF or LF line ends. A ``data`` that is not JSON raises ValueError naming it.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return the events it completed."""
        self._buffer += chunk
        out: list[SSEEvent] = []
        while b"\n" in self._buffer:
            raw, _, self._buffer = self._buffer.partition(b"\n")
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line:
                event = self._dispatch()
                if event is not None:
                    out.append(event)
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
        return out

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = None
            return None
        raw = "\n".join(self._data)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"SSE data is not JSON: {raw[:200]!r}") from exc
        event = SSEEvent(self._event or str(data.get("type", "message")), data)
        self._event, self._data = None, []
        return event


def assemble_message(events: Iterable[SSEEvent]) -> dict[str, Any]:
    """Fold streaming events into the final message, as an API client does."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for event in events:
        data = event.data
        kind = data.get("type")
        if kind == "message_start":
            message = dict(data["message"])
            message["content"] = []
            message["usage"] = dict(message.get("usage", {}))
        elif kind == "content_block_start":
            message["content"].append(dict(data["content_block"]))
            partial[data["index"]] = ""
        elif kind == "content_block_delta":
            block = message["content"][data["index"]]
            delta = data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                partial[data["index"]] += delta["partial_json"]
        elif kind == "content_block_stop":
            block = message["content"][data["index"]]
            if block["type"] == "tool_use":
                raw = partial.get(data["index"], "")
                block["input"] = json.loads(raw) if raw else {}
        elif kind == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data.get("usage", {}))
    return message
