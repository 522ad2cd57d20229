"""Sessions survive a turn cut short: the next turn resumes the claude session when the CLI
created it (its file exists), creates it when it did not, and never names a refused session.

The policy over recorded runs first; then the real ``claude`` CLI against the loopback model
(killed with SIGKILL, or cancelled, before and after it wrote its session file); then a whole
hive whose agent's first turn stalls, is restarted by its supervisor and works again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hive_actors.agent.prompt import render_turn_prompt
from hive_actors.harness.claude import ClaudeBinary, TurnRequest, local_spawn, run_cli
from hive_actors.harness.events import TurnEnd
from hive_actors.harness.recovery import handoff_prompt, run_turn, session_refusal
from hive_actors.harness.sessions import project_dir_name, resume_session, session_file
from hive_actors.modelserver import ModelServer, parse_script, script_policy
from hive_actors.modelserver.script import REDELIVERED_MARKER, STALL_S
from hive_actors.store import EventKind, Message, MessageKind, MessageStatus, Role
from tests.support.hive import running_hive, send
from tests.support.timeout import TIMEOUT

MODEL = "claude-sonnet-4-5"
FRESH = "00000000-0000-4000-8000-0000000000f5"


def make_request(root: Path, base_url: str = "http://127.0.0.1:9", **kw: Any) -> TurnRequest:
    env = {
        k: str(root / k.lower()) for k in ("CLAUDE_CONFIG_DIR", "HOME", "TMPDIR", "XDG_RUNTIME_DIR")
    }
    cwd = root / "my_state.dir"
    cwd.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {
        "prompt": "hello",
        "model": MODEL,
        "session_id": str(uuid.uuid4()),
        "base_url": base_url,
        "env": {**env, "HIVE_AGENT": "alice"},
        "api_key": "sk-loopback",
        "cwd": str(cwd),
    }
    fields.update(kw)
    return TurnRequest(**fields)


def config_dir(req: TurnRequest) -> Path:
    return Path(req.env["CLAUDE_CONFIG_DIR"])


# -- where the CLI keeps a session -------------------------------------------------------------


def test_the_project_dir_is_the_cwd_with_every_other_character_a_dash() -> None:
    assert project_dir_name("/state") == "-state"
    assert project_dir_name("/tmp/run_1/my.state-dir") == "-tmp-run-1-my-state-dir"


def test_the_session_file_is_found_under_its_project_or_any_other(tmp_path: Path) -> None:
    sid = str(uuid.uuid4())
    assert session_file(tmp_path, "/state", sid) is None  # no projects dir at all
    other = tmp_path / "projects" / "-elsewhere-cut-and-hashed" / f"{sid}.jsonl"
    other.parent.mkdir(parents=True)
    other.write_text("{}\n")
    assert session_file(tmp_path, "/state", sid) == other
    exact = tmp_path / "projects" / "-state" / f"{sid}.jsonl"
    exact.parent.mkdir(parents=True)
    exact.write_text("{}\n")
    assert session_file(tmp_path, "/state", sid) == exact
    assert session_file(tmp_path, "/state", str(uuid.uuid4())) is None
    with pytest.raises(ValueError, match="not a UUID"):
        session_file(tmp_path, "/state", "*")


def test_resume_is_decided_by_the_file_or_a_turn_that_ended_well(tmp_path: Path) -> None:
    sid = str(uuid.uuid4())
    assert not resume_session(tmp_path, "/state", sid)
    assert resume_session(tmp_path, "/state", sid, known=True)
    path = tmp_path / "projects" / "-state" / f"{sid}.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("{}\n")
    assert resume_session(tmp_path, "/state", sid)


# -- the policy over recorded runs -------------------------------------------------------------


def in_use(sid: str) -> TurnEnd:
    said = f"Error: Session ID {sid} is already in use.\n"
    return TurnEnd(outcome="error", duration_s=0.5, is_error=True, exit_code=1, stderr=said,
                   error=f"the CLI exited with status 1 without a result line: {said.strip()}")


def not_found(sid: str) -> TurnEnd:
    return TurnEnd(outcome="error", duration_s=0.5, is_error=True, exit_code=1, error="error",
                   session_id=sid, stderr=f"No conversation found with session ID: {sid}\n")


def ok(sid: str) -> TurnEnd:
    return TurnEnd(outcome="ok", duration_s=1.0, session_id=sid, terminal_reason="completed")


class Script:
    """A ``run`` answering each request by a function of it; records the requests."""

    def __init__(self, *answers: Callable[[str], TurnEnd]) -> None:
        self.answers = list(answers)
        self.requests: list[TurnRequest] = []

    def __call__(self, req: TurnRequest) -> TurnEnd:
        self.requests.append(req)
        return self.answers.pop(0)(req.session_id)


def test_a_session_already_in_use_is_resumed_once(tmp_path: Path) -> None:
    req = make_request(tmp_path)
    run = Script(in_use, ok)
    result = run_turn(req, run)
    assert [(r.session_id, r.resume) for r in run.requests] == [
        (req.session_id, False), (req.session_id, True)
    ]
    assert (result.outcome, result.attempts, result.session_id) == ("ok", 2, req.session_id)


def test_a_refusal_is_never_retried_twice(tmp_path: Path) -> None:
    run = Script(in_use, in_use)
    result = run_turn(make_request(tmp_path), run)
    assert result.outcome == "error" and len(run.requests) == 2
    # A fresh session that is refused too ends the turn: no loop.
    run = Script(not_found, not_found)
    result = run_turn(make_request(tmp_path, resume=True), run, new_session_id=lambda: FRESH)
    assert result.outcome == "error" and len(run.requests) == 2


def test_a_session_the_cli_cannot_resume_hands_off_to_a_fresh_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    req = make_request(tmp_path, resume=True, prompt="finish the report\n@say done")
    run = Script(not_found, ok)
    result = run_turn(req, run, new_session_id=lambda: FRESH)
    fresh = run.requests[-1]
    assert (fresh.session_id, fresh.resume) == (FRESH, False)
    assert req.session_id in fresh.prompt and "could not be resumed" in fresh.prompt
    assert "> finish the report" in fresh.prompt and "\n@say" not in fresh.prompt
    assert (result.outcome, result.attempts, result.session_id) == ("ok", 2, FRESH)
    (line,) = [r.getMessage() for r in caplog.records if "could not be resumed" in r.getMessage()]
    assert line.startswith("alice: ") and req.session_id in line and FRESH in line


def test_in_use_then_unknown_ends_in_a_fresh_session(tmp_path: Path) -> None:
    req = make_request(tmp_path)
    run = Script(in_use, not_found, ok)
    result = run_turn(req, run, new_session_id=lambda: FRESH)
    assert [(r.session_id, r.resume) for r in run.requests] == [
        (req.session_id, False), (req.session_id, True), (FRESH, False)
    ]
    assert (result.outcome, result.session_id) == ("ok", FRESH)


def test_only_errors_are_refusals(tmp_path: Path) -> None:
    req = make_request(tmp_path)
    stopped = replace(in_use(req.session_id), outcome="timeout")
    assert session_refusal(req, stopped) is None
    assert session_refusal(replace(req, resume=True), in_use(req.session_id)) is None
    assert session_refusal(req, not_found(req.session_id)) is None
    assert session_refusal(req, in_use(req.session_id)) == "in-use"
    assert session_refusal(replace(req, resume=True), not_found(req.session_id)) == "unknown"
    too_long = TurnEnd(outcome="error", duration_s=1.0, terminal_reason="prompt_too_long")
    assert "could not be compacted" in handoff_prompt(req, too_long)


def test_stall_is_a_directive_that_spares_a_redelivered_message() -> None:
    assert parse_script("@stall\nthink").stall
    message = Message(
        id=1, sender="operator", recipient="alice", kind=MessageKind.OPERATOR,
        body="@stall\nthink", generation=1, status=MessageStatus.IN_FLIGHT, turn_id="t",
        claims=2, created=0.0, delivered=None,
    )
    prompt = render_turn_prompt("alice", [message])
    assert REDELIVERED_MARKER in prompt  # the hive's prompt says what @stall spares

    def request(text: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": text}]}

    first = script_policy(request("1 new message(s) for alice:\n\n@stall\nthink"))
    assert (first.kind, first.delay_s) == ("stall", STALL_S)
    assert script_policy(request(prompt)).kind == "default"


# -- the real CLI: a first run cut short -------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Check ``condition`` every 50 ms until it holds; AssertionError after ``timeout`` s."""
    tick = threading.Event()
    for _ in range(int(timeout / 0.05) + 1):
        if condition():
            return
        tick.wait(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


class CutShort:
    """Runs a first turn in a thread and cuts it short: SIGKILL, or the runner's cancel."""

    def __init__(self, claude: ClaudeBinary, req: TurnRequest) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cancel = threading.Event()
        self.ends: list[TurnEnd] = []
        self.started = threading.Event()

        def spawn(
            argv: Sequence[str], env: Mapping[str, str], cwd: str | None
        ) -> subprocess.Popen[bytes]:
            proc = local_spawn(argv, env, cwd)
            self.procs.append(proc)
            self.started.set()
            return proc

        self.thread = threading.Thread(
            target=lambda: self.ends.append(
                run_cli(req, cancel=self.cancel, claude=claude, spawn=spawn)
            ),
            daemon=True,
        )
        self.thread.start()
        assert self.started.wait(TIMEOUT)

    def kill(self) -> None:
        os.killpg(self.procs[0].pid, signal.SIGKILL)

    def end(self) -> TurnEnd:
        self.thread.join(TIMEOUT * 3)
        assert not self.thread.is_alive() and self.ends
        return self.ends[0]


def next_turn(claude: ClaudeBinary, req: TurnRequest, prompt: str) -> TurnEnd:
    """What an agent's next turn does: decide by the CLI's file, then run with the policy."""
    resume = resume_session(config_dir(req), req.cwd, req.session_id)
    return run_turn(replace(req, prompt=prompt, resume=resume),
                    lambda r: run_cli(r, claude=claude))


@pytest.mark.parametrize("how", ["kill", "cancel"])
def test_a_first_turn_cut_short_after_the_cli_wrote_its_session_is_resumed(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path, how: str
) -> None:
    req = make_request(tmp_path, server.url, prompt="@stall\nthe first request")
    first = CutShort(claude, req)
    project = config_dir(req) / "projects" / project_dir_name(req.cwd or "")
    exact = project / f"{req.session_id}.jsonl"
    wait_for(exact.is_file, TIMEOUT * 3, f"the CLI's session file {exact}")
    if how == "kill":
        first.kill()
    else:
        first.cancel.set()
    cut = first.end()
    assert cut.outcome == ("error" if how == "kill" else "cancelled"), cut
    assert session_file(config_dir(req), req.cwd, req.session_id) == exact

    end = next_turn(claude, req, "the second request")
    assert (end.outcome, end.attempts, end.session_id) == ("ok", 1, req.session_id), end.error
    last = server.requests[-1]
    assert (last.session_id, last.prompt) == (req.session_id, "the second request")
    # What the old rule did (``--session-id`` again) is refused, and now recovered at once.
    again = run_turn(replace(req, prompt="the third request", resume=False),
                     lambda r: run_cli(r, claude=claude))
    assert (again.outcome, again.attempts, again.session_id) == ("ok", 2, req.session_id)


def test_a_first_turn_killed_before_the_cli_wrote_its_session_starts_it_afresh(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    req = make_request(tmp_path, server.url, prompt="@stall\nthe first request")
    first = CutShort(claude, req)
    first.kill()  # at once: the CLI has not even started up
    assert first.end().outcome == "error"
    assert session_file(config_dir(req), req.cwd, req.session_id) is None

    end = next_turn(claude, req, "the second request")
    assert (end.outcome, end.attempts, end.session_id) == ("ok", 1, req.session_id), end.error
    assert server.requests[-1].session_id == req.session_id
    assert session_file(config_dir(req), req.cwd, req.session_id) is not None


def test_a_session_file_the_cli_cannot_read_goes_on_in_a_fresh_session(
    claude: ClaudeBinary, server: ModelServer, tmp_path: Path
) -> None:
    req = make_request(tmp_path, server.url, prompt="the first request")
    assert run_cli(req, claude=claude).outcome == "ok"
    path = session_file(config_dir(req), req.cwd, req.session_id)
    assert path is not None
    path.write_text("not a transcript {{{\n")

    end = next_turn(claude, req, "the second request")
    assert end.outcome == "ok" and end.attempts == 2, end.error
    assert end.session_id not in (None, req.session_id)
    last = server.requests[-1]
    assert last.session_id == end.session_id and "> the second request" in (last.prompt or "")


# -- a whole hive ------------------------------------------------------------------------------


def test_an_agent_whose_first_turn_stalls_is_restarted_and_works_again(tmp_path: Path) -> None:
    with running_hive(tmp_path, {"alice": Role.AGENT}, turn_deadline=8.0) as (
        daemon, _root, model, events,
    ):
        send(daemon, "alice", "@stall\nthink for ever")
        stalled = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice")
        assert stalled.payload["outcome"] == "timeout", stalled.payload
        restarting = events.wait_for(
            lambda e: e.kind == EventKind.AGENT_RESTARTING and e.agent == "alice"
        )
        paths = daemon.hive.agent_paths("alice")
        sid = json.loads((paths.state / ".hive-session.json").read_text())["session_id"]
        # The stalled turn had the CLI create the session: the case that used to poison it.
        assert session_file(paths.claude, str(paths.state), sid) is not None
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "alice"
                        and e.payload.get("to") == "idle", after=restarting.id)

        second = send(daemon, "alice", "hello again")
        began = events.wait_for(lambda e: e.kind == EventKind.TURN_STARTED and e.agent == "alice"
                                and second in e.payload["messages"], after=restarting.id)
        ended = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice"
                                and e.payload["turn_id"] == began.payload["turn_id"])
        assert ended.payload["outcome"] == "ok", ended.payload
        assert ended.payload["session_id"] == sid  # resumed, not refused, not replaced
        asked = model.wait_for(lambda r: "hello again" in (r.prompt or ""), TIMEOUT)
        assert asked.session_id == sid
