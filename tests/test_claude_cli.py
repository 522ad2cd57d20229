"""The CLI runner: pure argv/env building and request validation, binary checks, the
prompt-too-long policy, and the real ``claude`` 2.1.331 against the loopback model server.

Every real run gets its own CLAUDE_CONFIG_DIR/HOME/TMPDIR/XDG_RUNTIME_DIR under tmp_path,
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 and ANTHROPIC_BASE_URL on 127.0.0.1 (build_env).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hive_actors.errors import ConfigError
from hive_actors.harness.claude import (
    PINNED_CLAUDE_VERSION,
    ClaudeBinary,
    TurnRequest,
    build_argv,
    build_env,
    compact_request,
    find_claude,
    local_spawn,
    run_cli,
)
from hive_actors.harness.events import Init, PermissionDenial, ToolResult, TurnEnd, TurnEvent
from hive_actors.harness.recovery import handoff_prompt, run_turn
from hive_actors.modelserver import ModelServer

log = logging.getLogger(__name__)

TIMEOUT = 30.0
MODEL = "claude-sonnet-4-5"


def agent_env(root: Path) -> dict[str, str]:
    return {
        k: str(root / k.lower()) for k in ("CLAUDE_CONFIG_DIR", "HOME", "TMPDIR", "XDG_RUNTIME_DIR")
    }


def make_request(root: Path, base_url: str = "http://127.0.0.1:9", **kw: Any) -> TurnRequest:
    fields: dict[str, Any] = {
        "prompt": "hello",
        "model": MODEL,
        "session_id": str(uuid.uuid4()),
        "base_url": base_url,
        "env": agent_env(root),
        "api_key": "sk-loopback",
        "cwd": str(root),
    }
    fields.update(kw)
    return TurnRequest(**fields)


# -- pure: argv, env, validation ---------------------------------------------------------------


def test_first_turn_argv_creates_the_session_and_ends_options_before_the_prompt(
    tmp_path: Path,
) -> None:
    req = make_request(
        tmp_path,
        prompt="--not-a-flag",
        allowed_tools=["mcp__hive__*", "Bash(git *)"],
        append_system_prompt="be brief",
        max_turns=5,
    )
    argv = build_argv(req, "/bin/claude", "/tmp/mcp.json")
    assert argv[0] == "/bin/claude"
    assert argv[argv.index("--output-format") + 1] == "stream-json" and "--verbose" in argv
    assert "--strict-mcp-config" in argv and argv[argv.index("--mcp-config") + 1] == "/tmp/mcp.json"
    assert argv[argv.index("--session-id") + 1] == req.session_id
    assert not any(a.startswith("--resume") for a in argv)
    assert argv[argv.index("--allowedTools") + 1] == "mcp__hive__*,Bash(git *)"
    assert argv[argv.index("--append-system-prompt") + 1] == "be brief"
    assert argv[argv.index("--max-turns") + 1] == "5"
    assert argv[-3:] == ["-p", "--", "--not-a-flag"]


def test_later_turns_resume_and_optional_flags_stay_out(tmp_path: Path) -> None:
    req = make_request(tmp_path, resume=True)
    argv = build_argv(req, "claude", None)
    assert f"--resume={req.session_id}" in argv and "--session-id" not in argv
    for flag in (
        "--mcp-config",
        "--allowedTools",
        "--append-system-prompt",
        "--max-turns",
        "--tools",
    ):
        assert flag not in argv
    assert "--strict-mcp-config" in argv  # no servers means none, not the user's


def test_compact_request_resumes_the_same_session(tmp_path: Path) -> None:
    req = make_request(tmp_path, max_turns=3)
    compact = compact_request(req)
    assert (compact.prompt, compact.resume, compact.max_turns) == ("/compact", True, None)
    assert compact.session_id == req.session_id and compact.model == req.model


def test_env_is_built_from_the_agent_not_the_host(tmp_path: Path) -> None:
    req = make_request(
        tmp_path,
        max_retries=1,
        env={**agent_env(tmp_path), "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "0"},
    )
    host = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "ANTHROPIC_API_KEY": "host-secret",
        "GITHUB_TOKEN": "x",
    }
    env = build_env(req, host)
    assert env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8"
    assert "GITHUB_TOKEN" not in env and env["ANTHROPIC_API_KEY"] == "sk-loopback"
    assert env["CLAUDE_CONFIG_DIR"] == str(tmp_path / "claude_config_dir")
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"  # the agent cannot turn it off
    assert env["ENABLE_TOOL_SEARCH"] == "false" and env["MCP_CONNECTION_NONBLOCKING"] == "false"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "1" and env["ANTHROPIC_BASE_URL"] == req.base_url
    assert "IS_SANDBOX" not in env and "DISABLE_AUTO_COMPACT" not in env
    sandboxed = build_env(replace(req, permission_mode="bypassPermissions", auto_compact=False), {})
    assert sandboxed["IS_SANDBOX"] == "1" and sandboxed["DISABLE_AUTO_COMPACT"] == "1"
    assert sandboxed["PATH"] == os.defpath


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"prompt": "x" * 100_001}, "argv limit"),
        ({"model": ""}, "model is empty"),
        ({"session_id": "alice-1"}, "not a UUID"),
        ({"base_url": "127.0.0.1:8000"}, "not an http"),
        ({"env": {"HOME": "/h"}}, "lacks CLAUDE_CONFIG_DIR"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"max_turns": 0}, "max_turns"),
    ],
)
def test_bad_requests_are_refused_when_built(
    tmp_path: Path, changes: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        make_request(tmp_path, **changes)


def test_request_is_frozen_against_later_changes_by_the_caller(tmp_path: Path) -> None:
    tools = ["Bash"]
    env = agent_env(tmp_path)
    req = make_request(tmp_path, allowed_tools=tools, env=env)
    tools.append("Write")
    env["HOME"] = "/elsewhere"
    assert req.allowed_tools == ("Bash",) and req.env["HOME"] == str(tmp_path / "home")


# -- locating the binary -----------------------------------------------------------------------


def fake_cli(path: Path, script: str) -> Path:
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_bundled_cli_is_found_with_the_pinned_version() -> None:
    binary = find_claude()
    assert binary.version == PINNED_CLAUDE_VERSION and binary.path.is_file()


def test_missing_binary_is_a_config_error_naming_path_version_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_claude(tmp_path / "nowhere" / "claude")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "claude") in message and PINNED_CLAUDE_VERSION in message
    assert "pip install claude-agent-sdk==0.2.188" in message and "[model] claude_path" in message


def test_wrong_version_is_a_config_error_naming_both_versions(tmp_path: Path) -> None:
    exe = fake_cli(tmp_path / "claude", 'echo "2.1.197 (Claude Code)"')
    with pytest.raises(
        ConfigError, match=r"is version 2\.1\.197, but hive_actors needs 2\.1\.331"
    ) as info:
        find_claude(exe)
    assert str(exe) in str(info.value)


def test_a_missing_working_directory_is_a_config_error(
    claude: ClaudeBinary, tmp_path: Path
) -> None:
    req = make_request(tmp_path, cwd=str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="working directory"):
        run_cli(req, claude=claude)


def test_unusable_binaries_are_config_errors(tmp_path: Path) -> None:
    failing = fake_cli(tmp_path / "failing", "echo broken >&2; exit 3")
    with pytest.raises(ConfigError, match="exit 3"):
        find_claude(failing)
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    with pytest.raises(ConfigError, match="not executable"):
        find_claude(plain)


# -- the prompt-too-long policy, over recorded outcomes ----------------------------------------


def end(outcome: str = "ok", reason: str | None = "completed", **kw: Any) -> TurnEnd:
    return TurnEnd(outcome=outcome, duration_s=1.0, terminal_reason=reason, **kw)  # type: ignore[arg-type]


TOO_LONG = end("error", "prompt_too_long", is_error=True)


class Recorder:
    """A ``run`` that answers from a list and records the requests it got."""

    def __init__(self, *ends: TurnEnd) -> None:
        self.ends = list(ends)
        self.requests: list[TurnRequest] = []

    def __call__(self, req: TurnRequest) -> TurnEnd:
        self.requests.append(req)
        return replace(self.ends.pop(0), session_id=req.session_id)


def test_a_turn_that_fits_runs_once(tmp_path: Path) -> None:
    run = Recorder(end(tool_calls={"Bash": 2}))
    result = run_turn(make_request(tmp_path), run)
    assert result.outcome == "ok" and result.attempts == 1 and len(run.requests) == 1


def test_too_long_compacts_then_retries_in_the_same_session(tmp_path: Path) -> None:
    req = make_request(tmp_path)
    run = Recorder(TOO_LONG, end(reason=None, compacted=True), end(tool_calls={"Bash": 1}))
    result = run_turn(req, run)
    assert [(r.prompt, r.resume) for r in run.requests] == [
        ("hello", False),
        ("/compact", True),
        ("hello", True),
    ]
    assert result.outcome == "compact-retry" and result.attempts == 3
    assert result.session_id == req.session_id and result.compacted
    assert result.duration_s == 3.0 and dict(result.tool_calls) == {"Bash": 1}


def test_still_too_long_hands_off_to_a_fresh_session(tmp_path: Path) -> None:
    req = make_request(tmp_path, prompt="do the big thing\n@too-long")
    run = Recorder(TOO_LONG, end(reason=None), TOO_LONG, end())
    result = run_turn(req, run, new_session_id=lambda: "00000000-0000-4000-8000-000000000001")
    fresh = run.requests[-1]
    assert fresh.session_id == "00000000-0000-4000-8000-000000000001" and not fresh.resume
    assert "> do the big thing" in fresh.prompt and "\n@too-long" not in fresh.prompt
    assert req.session_id in fresh.prompt
    assert result.outcome == "compact-retry" and result.attempts == 4
    assert result.session_id == fresh.session_id


def test_a_failing_hand_off_is_an_error_and_other_failures_are_not_retried(tmp_path: Path) -> None:
    run = Recorder(TOO_LONG, end(reason=None), TOO_LONG, TOO_LONG)
    assert run_turn(make_request(tmp_path), run).outcome == "error"
    api = Recorder(TOO_LONG, end(reason=None), end("error", "api_error", is_error=True))
    result = run_turn(make_request(tmp_path), api)
    assert (result.outcome, result.terminal_reason, result.attempts) == ("error", "api_error", 3)
    stopped = Recorder(TOO_LONG, end("timeout", None))
    assert run_turn(make_request(tmp_path), stopped).outcome == "timeout"


def test_handoff_quotes_a_bounded_part_of_the_request(tmp_path: Path) -> None:
    req = make_request(tmp_path, prompt="y" * 50_000)
    text = handoff_prompt(req, TOO_LONG)
    assert len(text) < 21_000 and "cut" in text


# -- the real CLI against the loopback model ---------------------------------------------------


def live(claude: ClaudeBinary, req: TurnRequest, **kw: Any) -> tuple[TurnEnd, list[TurnEvent]]:
    events: list[TurnEvent] = []
    result = run_cli(req, events.append, claude=claude, **kw)
    log.info("turn: %s in %.2fs", result.outcome, result.duration_s)
    return result, events


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_plain_turn_then_resume_with_another_model(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    req = make_request(tmp_path, server.url)
    started = time.monotonic()
    first, events = live(claude, req)
    elapsed = time.monotonic() - started
    log.info("one real CLI turn took %.2fs", elapsed)
    assert first.outcome == "ok" and first.exit_code == 0, first.error
    assert first.session_id == req.session_id and first.model == MODEL
    assert first.tokens.input > 0 and first.tokens.output > 0 and first.cost_usd > 0
    assert first.result_text is not None and '"hello"' in first.result_text
    assert isinstance(events[0], Init)
    assert server.requests[-1].model == MODEL and server.requests[-1].session_id == req.session_id

    second, _ = live(claude, replace(req, resume=True, model="claude-haiku-4-5", prompt="again"))
    assert second.outcome == "ok", second.error
    assert server.requests[-1].model == "claude-haiku-4-5" and server.requests[-1].prompt == "again"
    assert second.model == "claude-haiku-4-5" and second.session_id == req.session_id
    assert second.session_cost_usd > second.cost_usd  # the session's cost adds up


def test_bash_outside_the_allow_list_is_denied(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    target = tmp_path / "keep-me"
    target.mkdir()
    req = make_request(
        tmp_path,
        server.url,
        prompt=f'@tool Bash {{"command": "rmdir {target}"}}',
        allowed_tools=["Bash(echo *)"],
    )
    result, events = live(claude, req)
    assert result.outcome == "ok", result.error
    assert result.permission_denials == (PermissionDenial("Bash", f"rmdir {target}"),)
    assert dict(result.tool_calls) == {"Bash": 1}
    assert target.is_dir()
    assert server.requests[-1].kind == "final"


def test_allowed_bash_runs(claude: ClaudeBinary, server: ModelServer, tmp_path: Path) -> None:
    req = make_request(
        tmp_path,
        server.url,
        prompt='@tool Bash {"command": "echo ran-$((6*7))"}\n@say done',
        allowed_tools=["Bash(echo *)"],
    )
    result, events = live(claude, req)
    assert result.outcome == "ok" and result.permission_denials == ()
    (tool_result,) = [e for e in events if isinstance(e, ToolResult)]
    assert tool_result.summary == "ran-42" and not tool_result.is_error
    assert result.result_text is not None and "Bash (ok): ran-42" in result.result_text


def test_deadline_interrupts_and_the_process_is_gone(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    req = make_request(tmp_path, server.url, prompt="@sleep 30", deadline_s=3.0)
    started = time.monotonic()
    result, _ = live(claude, req)
    assert result.outcome == "timeout" and result.is_error
    assert "deadline of 3s" in (result.error or "") and "SIGINT" in (result.error or "")
    assert 3.0 <= time.monotonic() - started < 15.0
    assert result.exit_code is not None  # reaped
    assert processes_with(req.session_id) == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("claude-")] == []
    # The model server saw the request and the client leaving.
    assert server.wait_for(lambda r: r.kind == "default:abandoned", TIMEOUT).prompt == "@sleep 30"


def test_cancel_interrupts_a_running_turn(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    cancel = threading.Event()

    def on_event(event: TurnEvent) -> None:
        if isinstance(event, Init):
            cancel.set()

    req = make_request(tmp_path, server.url, prompt="@sleep 30", deadline_s=60.0)
    result = run_cli(req, on_event, cancel, claude=claude)
    assert result.outcome == "cancelled" and result.duration_s < 15.0
    assert processes_with(req.session_id) == []


def test_too_long_compacts_and_the_retry_succeeds(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    # Auto-compaction off: the CLI reports the overflow and the policy's /compact absorbs it.
    req = make_request(tmp_path, server.url, prompt="history first", auto_compact=False)
    assert live(claude, req)[0].outcome == "ok"
    big = replace(req, resume=True, prompt="@too-long\nthe big request")
    runs: list[TurnEnd] = []

    def run(r: TurnRequest) -> TurnEnd:
        runs.append(live(claude, r)[0])
        return runs[-1]

    result = run_turn(big, run)
    assert [r.terminal_reason for r in runs] == ["prompt_too_long", None, "completed"]
    assert runs[1].compacted
    assert result.outcome == "compact-retry" and result.attempts == 3
    assert result.session_id == req.session_id
    assert [r.kind for r in server.requests if r.kind in ("too-long", "summary", "default")][
        -3:
    ] == [
        "too-long",
        "summary",
        "default",
    ]


def test_too_long_with_auto_compaction_ends_in_a_fresh_session(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    req = make_request(tmp_path, server.url, prompt="@too-long\nthe big request")
    result = run_turn(req, lambda r: live(claude, r)[0])
    # /compact has too little to work on, the retry fails, the hand-off quotes the request.
    assert result.outcome == "compact-retry" and result.attempts == 4
    assert result.session_id != req.session_id
    assert server.requests[-1].session_id == result.session_id
    assert "> the big request" in (server.requests[-1].prompt or "")


def test_mcp_server_that_fails_to_start_is_reported(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    mcp = {"mcpServers": {"broken": {"command": str(tmp_path / "no-such-server")}}}
    req = make_request(tmp_path, server.url, mcp_config=mcp)
    result, events = live(claude, req)
    assert result.outcome == "ok"
    assert [(s.name, s.status) for s in result.mcp_servers] == [("broken", "failed")]
    assert list(Path(req.env["TMPDIR"]).glob("mcp-*.json")) == []  # the secret-bearing file is gone


def test_overloaded_model_is_an_error_after_the_retries(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    req = make_request(tmp_path, server.url, prompt="@error overloaded", max_retries=1)
    result, _ = live(claude, req)
    assert result.outcome == "error" and result.api_error_status == 529 and result.exit_code == 1
    assert [r.status for r in server.requests if r.kind == "error-overloaded"] == [529, 529]


def test_the_mcp_config_goes_where_the_container_sees_it(tmp_path: Path) -> None:
    """In a NixOS container the agent's state dir is /state: the private --mcp-config file is
    written under the host's state dir and named by its path inside, then removed."""
    state = tmp_path / "state"
    scratch = state / ".hive-run"
    config = {"mcpServers": {"hive": {"type": "http", "url": "http://127.0.0.1:9/mcp"}}}
    req = make_request(tmp_path, mcp_config=config)
    seen: dict[str, Any] = {}

    def container_spawn(
        argv: Sequence[str], env: Mapping[str, str], cwd: str | None
    ) -> subprocess.Popen[bytes]:
        inside = argv[list(argv).index("--mcp-config") + 1]
        seen["inside"] = inside
        host = scratch / Path(inside).relative_to("/state/.hive-run")
        seen["mode"] = stat.S_IMODE(host.stat().st_mode)
        seen["config"] = json.loads(host.read_text())
        # What runs "in the container": a CLI that dies at once (the file handling is tested).
        return local_spawn([sys.executable, "-c", "raise SystemExit(3)"], env, None)

    end = run_cli(req, claude="/nix/store/claude", spawn=container_spawn,
                  scratch=(scratch, "/state/.hive-run"))
    assert end.outcome == "error"  # the stand-in CLI said nothing and exited 3
    assert seen["inside"].startswith("/state/.hive-run/mcp-") and seen["inside"].endswith(".json")
    assert (seen["mode"], seen["config"]) == (0o600, config)
    assert list(scratch.iterdir()) == []  # removed after the run
