"""The turn harness: run the ``claude`` CLI headless for one agent turn.

``stream`` parses stream-json into ``events`` (TurnEvent, TurnEnd); ``claude`` locates the CLI,
builds its argv/env and runs it with a deadline; ``recovery`` is the session-refusal and
prompt-too-long policy; ``sessions`` tells from the CLI's files whether a session must be resumed.
"""

from __future__ import annotations

from hive_actors.harness.claude import (
    PINNED_CLAUDE_VERSION,
    ClaudeBinary,
    TurnRequest,
    build_argv,
    build_env,
    bundled_claude_path,
    compact_request,
    find_claude,
    run_cli,
)
from hive_actors.harness.events import (
    ApiRetry,
    AssistantText,
    CommandOutput,
    CompactBoundary,
    Init,
    Malformed,
    McpServerStatus,
    Outcome,
    PermissionDenial,
    PermissionDenied,
    Status,
    Tokens,
    ToolResult,
    ToolUse,
    TurnEnd,
    TurnEvent,
)
from hive_actors.harness.recovery import handoff_prompt, run_turn, session_refusal
from hive_actors.harness.sessions import project_dir_name, resume_session, session_file
from hive_actors.harness.stream import StreamParser, summarize_input

__all__ = [
    "PINNED_CLAUDE_VERSION",
    "ApiRetry",
    "AssistantText",
    "ClaudeBinary",
    "CommandOutput",
    "CompactBoundary",
    "Init",
    "Malformed",
    "McpServerStatus",
    "Outcome",
    "PermissionDenial",
    "PermissionDenied",
    "Status",
    "StreamParser",
    "Tokens",
    "ToolResult",
    "ToolUse",
    "TurnEnd",
    "TurnEvent",
    "TurnRequest",
    "build_argv",
    "build_env",
    "bundled_claude_path",
    "compact_request",
    "find_claude",
    "handoff_prompt",
    "project_dir_name",
    "resume_session",
    "run_cli",
    "run_turn",
    "session_file",
    "session_refusal",
    "summarize_input",
]
