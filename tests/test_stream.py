"""The stream-json parser, on samples recorded from the real CLI 2.1.331 and on edge cases.

The samples in tests/fixtures/ come from ``tests/fixtures/capture_streams.py`` (the real CLI
against the loopback model server).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
    ToolResult,
    ToolUse,
    TurnEvent,
)
from hive_actors.harness.stream import StreamParser, summarize_input

FIXTURES = Path(__file__).parent / "fixtures"


def parse(name: str) -> tuple[StreamParser, list[TurnEvent]]:
    parser = StreamParser()
    events: list[TurnEvent] = []
    for line in (FIXTURES / f"{name}.jsonl").read_bytes().splitlines():
        events.extend(parser.feed(line))
    return parser, events


def of(events: list[TurnEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def test_plain_turn_reports_session_model_tokens_cost_and_failed_mcp_server() -> None:
    parser, events = parse("plain")
    (init,) = of(events, Init)
    end = parser.end()
    assert init.model == "claude-sonnet-4-5"
    assert init.version == "2.1.331"
    assert McpServerStatus("broken", "failed") in init.mcp_servers
    assert "Bash" in init.tools
    assert [e.text for e in of(events, AssistantText)] == [end.result_text]
    assert end.outcome == "ok" and not end.is_error and end.error is None
    assert end.session_id == init.session_id
    assert end.model == "claude-sonnet-4-5" and end.models == ("claude-sonnet-4-5",)
    assert end.terminal_reason == "completed" and end.num_turns == 1
    assert end.tokens.input > 1000 and end.tokens.output > 0
    assert end.cost_usd > 0 and end.cost_usd == pytest.approx(end.session_cost_usd)
    assert end.mcp_servers == init.mcp_servers
    assert dict(end.tool_calls) == {}
    assert end.duration_s > 0  # from the CLI's duration_ms when the runner gives none


def test_denied_tool_is_counted_and_recorded_with_its_input() -> None:
    parser, events = parse("denied")
    (use,) = of(events, ToolUse)
    (denied,) = of(events, PermissionDenied)
    (result,) = of(events, ToolResult)
    end = parser.end()
    assert use.tool == "Bash" and use.summary == "rm -rf /tmp/nothing-here"
    assert denied.tool == "Bash" and denied.tool_use_id == use.tool_use_id
    assert result.tool == "Bash" and result.is_error
    assert end.permission_denials == (PermissionDenial("Bash", "rm -rf /tmp/nothing-here"),)
    assert dict(end.tool_calls) == {"Bash": 1}
    assert end.outcome == "ok" and end.num_turns == 2


def test_allowed_bash_runs_and_its_result_is_reported() -> None:
    parser, events = parse("bash_allowed")
    (result,) = of(events, ToolResult)
    end = parser.end()
    assert result.tool == "Bash" and not result.is_error and result.summary == "hi-from-bash"
    assert end.permission_denials == ()
    assert end.result_text is not None and "hi-from-bash" in end.result_text
    # On a resumed session total_cost_usd is cumulative; cost_usd is this turn's.
    assert end.session_cost_usd > end.cost_usd > 0


def test_overloaded_api_reports_retry_and_error() -> None:
    parser, events = parse("overloaded")
    (retry,) = of(events, ApiRetry)
    (text,) = of(events, AssistantText)
    end = parser.end()
    assert retry.error_status == 529 and retry.attempt == 1 and retry.max_retries == 1
    assert text.api_error_status == 529 and text.model == "<synthetic>"
    assert end.outcome == "error" and end.is_error and end.api_error_status == 529
    assert end.terminal_reason == "api_error"
    assert end.error is not None and "529" in end.error
    assert end.cost_usd == 0.0  # nothing was answered this turn


def test_prompt_too_long_is_an_error_with_its_terminal_reason() -> None:
    parser, _ = parse("too_long")
    end = parser.end()
    assert end.outcome == "error" and end.terminal_reason == "prompt_too_long"
    assert end.error == "Prompt is too long" and end.api_error_status == 400


def test_compaction_run_reports_boundary_status_and_command_output() -> None:
    parser, events = parse("compact")
    (boundary,) = of(events, CompactBoundary)
    assert boundary.trigger == "manual" and boundary.post_tokens
    assert [s.status for s in of(events, Status)][0] == "compacting"
    assert [c.text for c in of(events, CommandOutput)] == ["Compacted"]
    end = parser.end()
    assert end.compacted and end.outcome == "ok" and end.num_turns == 0


def test_interrupted_run_has_no_result_and_is_an_error() -> None:
    parser, events = parse("interrupted")
    assert of(events, Init)
    assert not parser.result_seen
    end = parser.end(duration_s=2.5)
    assert end.outcome == "error" and end.is_error
    assert end.error == "the CLI ended without a result line"
    assert end.duration_s == 2.5
    assert end.session_id is not None  # still known from system/init


def test_malformed_lines_become_events_and_are_counted() -> None:
    parser = StreamParser()
    assert parser.feed("") == [] and parser.feed("   \n") == []
    (bad,) = parser.feed("{not json")
    assert isinstance(bad, Malformed) and "not JSON" in bad.error
    (arr,) = parser.feed(b"[1, 2]")
    assert isinstance(arr, Malformed) and "list" in arr.error
    (shape,) = parser.feed(json.dumps({"type": "system", "subtype": "init", "mcp_servers": 5}))
    assert isinstance(shape, Malformed) and "unexpected shape" in shape.error
    assert parser.feed(b"\xff\xfe garbage")[0].__class__ is Malformed
    assert parser.end().malformed_lines == 4


def test_unknown_kinds_are_skipped() -> None:
    parser = StreamParser()
    assert parser.feed(json.dumps({"type": "stream_event", "event": {}})) == []
    assert parser.feed(json.dumps({"type": "system", "subtype": "hook_started"})) == []
    assert parser.end().malformed_lines == 0


def test_denials_without_result_come_from_the_events() -> None:
    parser = StreamParser()
    use = {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls /"}}
    parser.feed(json.dumps({"type": "assistant", "message": {"model": "m", "content": [use]}}))
    parser.feed(
        json.dumps(
            {
                "type": "system",
                "subtype": "permission_denied",
                "tool_name": "Bash",
                "tool_use_id": "t1",
            }
        )
    )
    assert parser.end().permission_denials == (PermissionDenial("Bash", "ls /"),)


def test_model_falls_back_to_the_busiest_model_of_model_usage() -> None:
    parser = StreamParser()
    usage = {
        "claude-haiku-4-5": {"outputTokens": 3, "costUSD": 0.01},
        "claude-opus-4-1": {"outputTokens": 300, "costUSD": 0.5},
    }
    parser.feed(
        json.dumps(
            {
                "type": "result",
                "is_error": False,
                "model_usage_since_last_result": usage,
                "total_cost_usd": 2.0,
            }
        )
    )
    end = parser.end()
    assert end.model == "claude-opus-4-1"
    assert set(end.models) == set(usage)
    assert end.cost_usd == pytest.approx(0.51) and end.session_cost_usd == 2.0


@pytest.mark.parametrize(
    ("tool", "tool_input", "expected"),
    [
        ("Bash", {"command": "git status", "description": "x"}, "git status"),
        ("Read", {"file_path": "/state/notes.md"}, "/state/notes.md"),
        ("mcp__hive__send", {"to": "alice", "body": "hi"}, '{"body":"hi","to":"alice"}'),
        ("X", "plain", "plain"),
        ("Bash", {"command": "a\n  b"}, "a b"),
    ],
)
def test_summarize_input(tool: str, tool_input: object, expected: str) -> None:
    assert summarize_input(tool, tool_input) == expected


def test_summaries_are_bounded() -> None:
    assert len(summarize_input("Bash", {"command": "x" * 1000})) == 120


def test_every_event_describes_itself_in_one_line() -> None:
    for name in ("plain", "denied", "bash_allowed", "overloaded", "compact"):
        for event in parse(name)[1]:
            line = event.describe()
            assert line and "\n" not in line
