"""The stream-json parser, sans I/O: lines of ``claude --output-format stream-json`` in, typed
``TurnEvent``s out, and one ``TurnEnd`` summary at the end.

Facts about CLI 2.1.331 it relies on: ``system/init`` (not always the first line) names the
session, model and MCP servers; ``assistant`` events carry one content block each; API errors
arrive as a synthetic assistant message; the ``result`` line's ``usage`` and
``model_usage_since_last_result`` are per turn while ``total_cost_usd`` and ``modelUsage`` add
up over a resumed session. Unknown event kinds are skipped; a line that is not a JSON object
becomes a ``Malformed`` event, never an exception.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hive_actors.harness.events import (
    ApiRetry,
    AssistantText,
    CommandOutput,
    CompactBoundary,
    Init,
    Malformed,
    McpServerStatus,
    PermissionDenial,
    PermissionDenied,
    Status,
    Tokens,
    ToolResult,
    ToolUse,
    TurnEnd,
    TurnEvent,
)

__all__ = ["StreamParser", "summarize_input"]

log = logging.getLogger(__name__)

_SUMMARY_LIMIT = 120
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_COMMAND_STDOUT = re.compile(r"<local-command-stdout>(.*?)</local-command-stdout>", re.DOTALL)
# The input field that says most about a call of these tools.
_KEY_FIELDS = ("command", "file_path", "path", "pattern", "url", "query", "description", "prompt")


def _short(text: str, limit: int = _SUMMARY_LIMIT) -> str:
    flat = " ".join(_REMINDER.sub("", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def summarize_input(tool: str, tool_input: Any) -> str:
    """A short, readable summary of a tool call's input (the command, the path, or JSON)."""
    if isinstance(tool_input, Mapping):
        for key in _KEY_FIELDS:
            value = tool_input.get(key)
            if isinstance(value, str) and value:
                return _short(value)
        try:
            return _short(json.dumps(tool_input, separators=(",", ":"), sort_keys=True))
        except (TypeError, ValueError):
            return _short(repr(tool_input))
    return _short(str(tool_input))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class _State:
    init: Init | None = None
    tool_names: dict[str, str] = field(default_factory=dict)
    tool_summaries: dict[str, str] = field(default_factory=dict)
    tool_calls: Counter[str] = field(default_factory=Counter)
    denials: list[PermissionDenial] = field(default_factory=list)
    result: Mapping[str, Any] | None = None
    compacted: bool = False
    malformed: int = 0
    last_api_error: str | None = None


class StreamParser:
    """Feed it stdout lines with ``feed``; read the summary with ``end``. Not thread-safe: one
    parser belongs to one CLI run and the thread reading its stdout."""

    def __init__(self) -> None:
        self._s = _State()

    @property
    def result_seen(self) -> bool:
        """True once the ``result`` line arrived."""
        return self._s.result is not None

    @property
    def session_id(self) -> str | None:
        """The session id, once ``system/init`` or the result named it."""
        if self._s.result is not None and isinstance(self._s.result.get("session_id"), str):
            return str(self._s.result["session_id"])
        return self._s.init.session_id if self._s.init else None

    def feed(self, line: str | bytes) -> list[TurnEvent]:
        """Parse one line; return the events it carries (often one, sometimes none)."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        text = line.strip()
        if not text:
            return []
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            self._s.malformed += 1
            return [Malformed(line=text[:200], error=f"not JSON: {exc.msg}")]
        if not isinstance(obj, Mapping):
            self._s.malformed += 1
            return [Malformed(line=text[:200], error=f"a JSON {type(obj).__name__}, not an object")]
        try:
            return self._dispatch(obj)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A known kind in an unexpected shape: report it, keep reading.
            self._s.malformed += 1
            return [Malformed(line=text[:200], error=f"unexpected shape: {exc!r}")]

    def _dispatch(self, obj: Mapping[str, Any]) -> list[TurnEvent]:
        kind = obj.get("type")
        if kind == "system":
            return self._system(obj)
        if kind == "assistant":
            return self._assistant(obj)
        if kind == "user":
            return self._user(obj)
        if kind == "result":
            self._s.result = obj
            return []
        log.debug("stream-json: skipping event type %r", kind)
        return []

    def _system(self, obj: Mapping[str, Any]) -> list[TurnEvent]:
        subtype = obj.get("subtype")
        if subtype == "init":
            servers = tuple(
                McpServerStatus(name=str(s.get("name", "")), status=str(s.get("status", "")))
                for s in obj.get("mcp_servers") or ()
                if isinstance(s, Mapping)
            )
            init = Init(
                session_id=_opt_str(obj.get("session_id")),
                model=_opt_str(obj.get("model")),
                mcp_servers=servers,
                tools=tuple(str(t) for t in obj.get("tools") or ()),
                permission_mode=_opt_str(obj.get("permissionMode")),
                version=_opt_str(obj.get("claude_code_version")),
            )
            self._s.init = init
            return [init]
        if subtype == "permission_denied":
            tool = str(obj.get("tool_name", ""))
            use_id = _opt_str(obj.get("tool_use_id"))
            summary = self._s.tool_summaries.get(use_id or "", "")
            self._s.denials.append(PermissionDenial(tool=tool, summary=summary))
            return [
                PermissionDenied(
                    tool=tool,
                    tool_use_id=use_id,
                    message=str(obj.get("message", "")),
                )
            ]
        if subtype == "api_retry":
            return [
                ApiRetry(
                    attempt=_int(obj.get("attempt")),
                    max_retries=_int(obj.get("max_retries")),
                    delay_ms=_int(obj.get("retry_delay_ms")),
                    error_status=_opt_int(obj.get("error_status")),
                    error=str(obj.get("error", "")),
                )
            ]
        if subtype == "compact_boundary":
            self._s.compacted = True
            meta = obj.get("compact_metadata") or {}
            return [
                CompactBoundary(
                    trigger=_opt_str(meta.get("trigger")),
                    pre_tokens=_opt_int(meta.get("pre_tokens")),
                    post_tokens=_opt_int(meta.get("post_tokens")),
                )
            ]
        if subtype == "status":
            detail = obj.get("compact_result")
            return [Status(status=_opt_str(obj.get("status")), detail=_opt_str(detail))]
        log.debug("stream-json: skipping system subtype %r", subtype)
        return []

    def _assistant(self, obj: Mapping[str, Any]) -> list[TurnEvent]:
        message = obj.get("message") or {}
        model = _opt_str(message.get("model"))
        status = _opt_int(obj.get("api_error_status")) if obj.get("is_api_error_message") else None
        events: list[TurnEvent] = []
        for block in message.get("content") or ():
            if not isinstance(block, Mapping):
                continue
            btype = block.get("type")
            if btype == "text":
                text = str(block.get("text", ""))
                if status is not None:
                    self._s.last_api_error = text
                events.append(AssistantText(text=text, model=model, api_error_status=status))
            elif btype == "tool_use":
                tool = str(block.get("name", ""))
                use_id = str(block.get("id", ""))
                self._s.tool_names[use_id] = tool
                self._s.tool_calls[tool] += 1
                summary = summarize_input(tool, block.get("input"))
                self._s.tool_summaries[use_id] = summary
                events.append(ToolUse(tool=tool, tool_use_id=use_id, summary=summary))
        return events

    def _user(self, obj: Mapping[str, Any]) -> list[TurnEvent]:
        message = obj.get("message") or {}
        content = message.get("content")
        events: list[TurnEvent] = []
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or ()
        for block in blocks:
            if not isinstance(block, Mapping):
                continue
            if block.get("type") == "tool_result":
                use_id = str(block.get("tool_use_id", ""))
                events.append(
                    ToolResult(
                        tool_use_id=use_id,
                        tool=self._s.tool_names.get(use_id),
                        is_error=bool(block.get("is_error", False)),
                        summary=_short(_content_text(block.get("content"))),
                    )
                )
            elif block.get("type") == "text":
                match = _COMMAND_STDOUT.search(str(block.get("text", "")))
                if match:
                    events.append(CommandOutput(text=match.group(1).strip()))
        return events

    def end(self, *, duration_s: float | None = None) -> TurnEnd:
        """The summary of what was read so far. Outcome ``ok`` or ``error`` only: the runner
        decides timeout, cancelled and compact-retry. ``duration_s`` (the runner's wall clock)
        wins over the CLI's own ``duration_ms``."""
        s = self._s
        r = s.result or {}
        usage = r.get("usage") or {}
        tokens = Tokens(
            input=_int(usage.get("input_tokens")),
            output=_int(usage.get("output_tokens")),
            cache_read=_int(usage.get("cache_read_input_tokens")),
            cache_creation=_int(usage.get("cache_creation_input_tokens")),
        )
        # Per-turn usage when the CLI gives it; modelUsage adds up over a resumed session.
        turn_usage: Any = r.get("model_usage_since_last_result")
        if not isinstance(turn_usage, Mapping):
            turn_usage = r.get("modelUsage")
        if not isinstance(turn_usage, Mapping):
            turn_usage = {}
        per_model = {str(k): v for k, v in turn_usage.items() if isinstance(v, Mapping)}
        session_cost = float(r.get("total_cost_usd") or 0.0)
        cost = (
            sum(float(v.get("costUSD") or 0.0) for v in per_model.values())
            if "model_usage_since_last_result" in r
            else session_cost
        )
        busiest = max(per_model, key=lambda m: _int(per_model[m].get("outputTokens")), default=None)
        model = (s.init.model if s.init else None) or busiest
        error: str | None
        if s.result is None:
            is_error, error = True, "the CLI ended without a result line"
        else:
            is_error = bool(r.get("is_error", False))
            error = str(r.get("result") or s.last_api_error or "error") if is_error else None
        if s.result is None:
            # No result line (killed): the system/permission_denied events are all we have.
            denials = tuple(s.denials)
        else:
            denials = tuple(
                PermissionDenial(
                    tool=str(d.get("tool_name", "")),
                    summary=summarize_input(str(d.get("tool_name", "")), d.get("tool_input")),
                )
                for d in r.get("permission_denials") or ()
                if isinstance(d, Mapping)
            )
        if duration_s is None:
            duration_s = _int(r.get("duration_ms")) / 1000.0
        return TurnEnd(
            outcome="error" if is_error else "ok",
            duration_s=duration_s,
            tool_calls=MappingProxyType(dict(s.tool_calls)),
            tokens=tokens,
            cost_usd=cost,
            session_cost_usd=session_cost,
            model=model,
            models=tuple(per_model),
            permission_denials=denials,
            session_id=self.session_id,
            terminal_reason=_opt_str(r.get("terminal_reason")),
            num_turns=_int(r.get("num_turns")),
            mcp_servers=s.init.mcp_servers if s.init else (),
            is_error=is_error,
            error=error,
            result_text=_opt_str(r.get("result")),
            api_error_status=_opt_int(r.get("api_error_status")),
            compacted=s.compacted,
            malformed_lines=s.malformed,
        )
