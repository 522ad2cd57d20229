"""Running the ``claude`` CLI for one turn: find and check the binary, build its argv and env
(pure), and run it as a subprocess in its own process group with a deadline.

``run_cli`` is thread-safe (no shared state) and never blocks forever: past the deadline (or on
``cancel``) it sends SIGINT to the process group — the CLI then still prints its result line —
then SIGTERM, then SIGKILL, each after a grace period, and gives up waiting after that.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from hive_actors.containers.procgroup import default_signals_argv, stop_signals_ignored
from hive_actors.errors import ConfigError
from hive_actors.harness.events import Outcome, TurnEnd, TurnEvent
from hive_actors.harness.stream import StreamParser

__all__ = [
    "PINNED_CLAUDE_VERSION",
    "ClaudeBinary",
    "TurnRequest",
    "build_argv",
    "build_env",
    "bundled_claude_path",
    "compact_request",
    "find_claude",
    "run_cli",
]

log = logging.getLogger(__name__)

PINNED_CLAUDE_VERSION = "2.1.331"
"""The CLI version whose flags and stream-json events this module was verified against."""
_SDK_PIN = "claude-agent-sdk==0.2.188"

# Host variables a CLI needs to run at all; nothing else of the host's env reaches an agent
# (its API keys, tokens and the operator's settings stay out).
_INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# Linux caps one argv string at 128 KiB (MAX_ARG_STRLEN); stay well below.
_MAX_PROMPT_BYTES = 100_000
_VERSION_RE = re.compile(r"(\d+\.\d+\.\d+)")
_STDERR_LIMIT = 64 * 1024
# Granularity at which an external ``cancel`` event is noticed.
_CANCEL_POLL_S = 0.05


@dataclass(frozen=True)
class ClaudeBinary:
    """A located and version-checked ``claude`` executable."""

    path: Path
    """Absolute path of the executable."""
    version: str
    """The version it reported (equals the pinned one)."""


def bundled_claude_path() -> Path:
    """Where claude-agent-sdk keeps its bundled CLI (the path may not exist)."""
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"claude CLI: the claude_agent_sdk package is not installed; "
            f"pip install {_SDK_PIN} (it bundles claude {PINNED_CLAUDE_VERSION}) "
            f"or set [model] claude_path to a claude {PINNED_CLAUDE_VERSION} binary"
        )
    return Path(spec.origin).parent / "_bundled" / "claude"


def find_claude(
    path: str | os.PathLike[str] | None = None,
    *,
    wanted: str = PINNED_CLAUDE_VERSION,
    timeout_s: float = 30.0,
) -> ClaudeBinary:
    """Locate the CLI (``path``, else the SDK's bundled one) and check its version.

    Raises ConfigError naming the path, the version found, the version wanted and the fix.
    """
    exe = Path(path) if path is not None else bundled_claude_path()
    fix = (
        f"pip install {_SDK_PIN} (it bundles claude {wanted}) "
        f"or set [model] claude_path to a claude {wanted} binary"
    )
    if not exe.is_file():
        raise ConfigError(f"claude CLI not found at '{exe}' (wanted version {wanted}): {fix}")
    if not os.access(exe, os.X_OK):
        raise ConfigError(
            f"claude CLI at '{exe}' is not executable (wanted version {wanted}): "
            f"chmod +x it, or {fix}"
        )
    try:
        proc = subprocess.run(
            [str(exe), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={
                "PATH": os.environ.get("PATH", os.defpath),
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            },
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(
            f"claude CLI at '{exe}': '--version' did not answer within {timeout_s}s: {fix}"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"claude CLI at '{exe}' cannot be run ({exc.strerror}): {fix}") from exc
    match = _VERSION_RE.search(proc.stdout)
    found = match.group(1) if match else None
    if proc.returncode != 0 or found is None:
        output = (proc.stdout + proc.stderr).strip()[:200]
        raise ConfigError(
            f"claude CLI at '{exe}': '--version' failed (exit {proc.returncode}: {output!r}); "
            f"wanted version {wanted}: {fix}"
        )
    if found != wanted:
        raise ConfigError(
            f"claude CLI at '{exe}' is version {found}, but hive_actors needs {wanted}: {fix}"
        )
    return ClaudeBinary(path=exe.resolve(), version=found)


@dataclass(frozen=True)
class TurnRequest:
    """Everything one CLI invocation needs. Validated when built (ConfigError)."""

    prompt: str
    """The prompt (``/compact`` for a compaction)."""
    model: str
    """``--model``: an id or an alias."""
    session_id: str
    """The claude session (a UUID): created by the first turn, resumed by later ones."""
    base_url: str
    """``ANTHROPIC_BASE_URL``: the loopback model server in tests and demos."""
    env: Mapping[str, str]
    """Per-agent environment: CLAUDE_CONFIG_DIR and HOME (required), TMPDIR, XDG_RUNTIME_DIR."""
    resume: bool = False
    """False: ``--session-id`` (first turn); True: ``--resume=<id>``."""
    mcp_config: Mapping[str, Any] = field(default_factory=dict)
    """The ``{"mcpServers": {...}}`` object; written to a private file for ``--mcp-config``."""
    allowed_tools: Sequence[str] = ()
    """``--allowedTools`` rules (``mcp__hive__*``, ``Bash(git *)``)."""
    append_system_prompt: str | None = None
    """``--append-system-prompt``."""
    max_turns: int | None = None
    """``--max-turns``."""
    cwd: str | None = None
    """Working directory of the CLI (None: the caller's)."""
    api_key: str | None = None
    """``ANTHROPIC_API_KEY``."""
    deadline_s: float = 600.0
    """Wall-clock budget of the run; past it the CLI is interrupted."""
    permission_mode: str | None = None
    """``--permission-mode``; ``bypassPermissions`` also sets IS_SANDBOX=1 (it refuses root)."""
    max_retries: int = 2
    """``CLAUDE_CODE_MAX_RETRIES``: API retries inside one run."""
    auto_compact: bool = True
    """False sets DISABLE_AUTO_COMPACT=1: the CLI reports prompt_too_long instead of compacting
    by itself, and the caller's recovery policy compacts."""
    tools: Sequence[str] | None = None
    """``--tools``: restrict the built-in tools (None: all; empty: none)."""

    def __post_init__(self) -> None:
        # Freeze the sequences and mappings a caller may still hold.
        object.__setattr__(self, "allowed_tools", tuple(self.allowed_tools))
        if self.tools is not None:
            object.__setattr__(self, "tools", tuple(self.tools))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        problems = _validate(self)
        if problems:
            raise ConfigError("turn request: " + "; ".join(problems))


def _validate(req: TurnRequest) -> list[str]:
    problems = []
    if not req.prompt.strip():
        problems.append("the prompt is empty: give the agent something to do")
    elif len(req.prompt.encode("utf-8")) > _MAX_PROMPT_BYTES:
        problems.append(
            f"the prompt is {len(req.prompt.encode('utf-8'))} bytes, "
            f"over the {_MAX_PROMPT_BYTES}-byte "
            "argv limit: shorten it or move the bulk into a file the agent reads"
        )
    if not req.model.strip():
        problems.append("model is empty: set the agent's model (e.g. claude-sonnet-4-5)")
    try:
        uuid.UUID(req.session_id)
    except ValueError:
        problems.append(
            f"session_id {req.session_id!r} is not a UUID: the CLI only takes UUIDs (uuid.uuid4())"
        )
    if not req.base_url.startswith(("http://", "https://")):
        problems.append(
            f"base_url {req.base_url!r} is not an http(s) URL: e.g. http://127.0.0.1:PORT"
        )
    missing = [k for k in ("CLAUDE_CONFIG_DIR", "HOME") if not req.env.get(k)]
    if missing:
        problems.append(
            f"env lacks {', '.join(missing)}: "
            "each agent needs its own, or agents share one claude state"
        )
    if not req.deadline_s > 0:
        problems.append(f"deadline_s must be > 0, got {req.deadline_s}")
    if req.max_turns is not None and req.max_turns < 1:
        problems.append(f"max_turns must be >= 1, got {req.max_turns}")
    if req.max_retries < 0:
        problems.append(f"max_retries must be >= 0, got {req.max_retries}")
    return problems


def compact_request(req: TurnRequest) -> TurnRequest:
    """The ``/compact`` run for ``req``'s session (resumed, same model and environment)."""
    return replace(req, prompt="/compact", resume=True, max_turns=None)


def build_argv(
    req: TurnRequest, claude: str | os.PathLike[str], mcp_config_path: str | None
) -> list[str]:
    """The CLI's argv for ``req``. ``mcp_config_path`` is the file holding ``req.mcp_config``
    (a file, not a JSON argument: its headers carry secrets ``ps`` would show)."""
    argv = [os.fspath(claude), "--output-format", "stream-json", "--verbose", "--model", req.model]
    argv.append("--strict-mcp-config")
    if mcp_config_path is not None:
        argv += ["--mcp-config", mcp_config_path]
    argv += [f"--resume={req.session_id}"] if req.resume else ["--session-id", req.session_id]
    if req.allowed_tools:
        argv += ["--allowedTools", ",".join(req.allowed_tools)]
    if req.tools is not None:
        argv += ["--tools", ",".join(req.tools)]
    if req.permission_mode is not None:
        argv += ["--permission-mode", req.permission_mode]
    if req.append_system_prompt:
        argv += ["--append-system-prompt", req.append_system_prompt]
    if req.max_turns is not None:
        argv += ["--max-turns", str(req.max_turns)]
    # "--" ends the options: a prompt starting with "-" stays a prompt.
    argv += ["-p", "--", req.prompt]
    return argv


def build_env(req: TurnRequest, inherited: Mapping[str, str]) -> dict[str, str]:
    """The CLI's environment: a few host variables from ``inherited``, the agent's ``env``
    (with the turn's credentials: an OAuth token, a cloud provider's settings), then the
    switches that keep a headless run offline-safe (which ``env`` cannot override). This
    environment is the turn's CLI's alone (and what the CLI itself starts): the container's
    keeper and the agent's terminal shell do not get it."""
    cloud = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX")
    env = {k: inherited[k] for k in _INHERITED if k in inherited}
    env.setdefault("PATH", os.defpath)
    env.update(req.env)
    env.update(
        {
            "ANTHROPIC_BASE_URL": req.base_url,
            # The only switch that stops every lookup the CLI makes on its own.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # Else MCP tools hide behind a ToolSearch round trip.
            "ENABLE_TOOL_SEARCH": "false",
            # Else the first turn may start before the MCP servers are connected.
            "MCP_CONNECTION_NONBLOCKING": "false",
            "CLAUDE_CODE_MAX_RETRIES": str(req.max_retries),
        }
    )
    if req.api_key is not None:
        env["ANTHROPIC_API_KEY"] = req.api_key
    if any(req.env.get(k) == "1" for k in cloud):
        # A cloud provider's own endpoint (or its ANTHROPIC_BEDROCK/VERTEX_BASE_URL) applies.
        del env["ANTHROPIC_BASE_URL"]
    if req.permission_mode == "bypassPermissions":
        env["IS_SANDBOX"] = "1"
    if not req.auto_compact:
        env["DISABLE_AUTO_COMPACT"] = "1"
    return env


# -- running ---------------------------------------------------------------------------------

_EOF = object()
_EXITED = object()


def _await_exit(proc: subprocess.Popen[bytes], out: queue.Queue[object]) -> None:
    proc.wait()
    out.put(_EXITED)


def _deliver(events: list[TurnEvent], on_event: Callable[[TurnEvent], None] | None) -> None:
    if on_event is None:
        return
    for event in events:
        try:
            on_event(event)
        except Exception:
            log.exception("claude: on_event failed on %r; going on", event)


def _pump_lines(stream: IO[bytes], out: queue.Queue[object]) -> None:
    try:
        for line in stream:
            out.put(line)
    except (OSError, ValueError):
        pass  # the pipe was closed under us: the run is over either way
    finally:
        out.put(_EOF)


def _pump_tail(stream: IO[bytes], tail: deque[bytes], lock: threading.Lock) -> None:
    try:
        # os.read returns what is there; a buffered read(n) would wait for n bytes.
        while chunk := os.read(stream.fileno(), 4096):
            with lock:
                tail.append(chunk)
                # Bounded: keep only the newest _STDERR_LIMIT bytes, roughly.
                while sum(len(c) for c in tail) > _STDERR_LIMIT and len(tail) > 1:
                    tail.popleft()
    except (OSError, ValueError):
        pass


_DRAIN_AFTER_EXIT_S = 2.0
"""Seconds the runner still reads stdout after the CLI exited inside a shared process group."""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # nothing left in the group


Spawn = Callable[[Sequence[str], Mapping[str, str], "str | None"], "subprocess.Popen[bytes]"]
"""Starts the CLI (argv, env, cwd) with stdin /dev/null and stdout/stderr pipes, in its own
process group: a container backend's ``exec`` (the CLI then runs inside the agent's container)."""


def local_spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | None
) -> subprocess.Popen[bytes]:
    """Start the CLI on this host, in its own process group, with SIGINT and SIGTERM at their
    default even when this process ignores them (an ignored disposition survives ``exec``: the
    CLI's interrupt, how a turn stops in order, would not reach it)."""
    args = list(argv)
    ignored = stop_signals_ignored()
    if ignored:
        args = default_signals_argv(
            args, ignored, python=sys.executable, path=env.get("PATH"), cwd=cwd or os.getcwd()
        )
    return subprocess.Popen(
        args,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,  # an open stdin pipe costs the CLI a 3 s wait
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: signals reach its children too
    )


Scratch = tuple["str | os.PathLike[str]", str]
"""Where run_cli writes the files the CLI reads: (the directory on this host, the same directory
as the CLI sees it — inside a container it may have another path)."""


def _write_mcp_config(req: TurnRequest, scratch: Scratch | None) -> tuple[str, str] | None:
    """Write ``req.mcp_config`` to a private file: (its host path, its path for the CLI)."""
    if not req.mcp_config:
        return None
    if scratch is None:
        directory = req.env.get("TMPDIR") or tempfile.gettempdir()
        scratch = (directory, directory)
    host_dir, cli_dir = os.fspath(scratch[0]), scratch[1]
    os.makedirs(host_dir, mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="mcp-", suffix=".json", dir=host_dir)
    with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600, the headers hold secrets
        json.dump(req.mcp_config, f)
    return path, f"{cli_dir.rstrip('/')}/{os.path.basename(path)}"


def _prepare_dirs(req: TurnRequest) -> None:
    for key in ("CLAUDE_CONFIG_DIR", "HOME", "TMPDIR", "XDG_RUNTIME_DIR"):
        value = req.env.get(key)
        if value:
            os.makedirs(value, mode=0o700, exist_ok=True)


def run_cli(
    req: TurnRequest,
    on_event: Callable[[TurnEvent], None] | None = None,
    cancel: threading.Event | None = None,
    *,
    claude: ClaudeBinary | str | os.PathLike[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sigint_grace_s: float = 10.0,
    sigterm_grace_s: float = 5.0,
    spawn: Spawn = local_spawn,
    scratch: Scratch | None = None,
) -> TurnEnd:
    """Run one CLI invocation for ``req`` and return its TurnEnd.

    ``on_event`` is called (in this thread) for each TurnEvent as the stream arrives; an
    exception in it is logged, not raised. Past ``req.deadline_s`` the outcome is ``timeout``;
    after ``cancel`` is set it is ``cancelled``. ``claude`` defaults to ``find_claude()``.
    ``spawn`` starts the CLI (in the agent's container); ``scratch`` is where the private
    ``--mcp-config`` file goes, on this host and as the CLI sees it (default: ``req.env``'s
    TMPDIR, the same for both — right only when the CLI runs on this host's file system).
    """
    exe = claude.path if isinstance(claude, ClaudeBinary) else claude
    if exe is None:
        exe = find_claude().path
    if scratch is None:
        # On this host's file system; a container backend (``scratch`` given) made the
        # agent's directories itself, and req.env's paths are the container's.
        _prepare_dirs(req)
    mcp_file = _write_mcp_config(req, scratch)
    try:
        return _run(
            req, exe, mcp_file[1] if mcp_file else None, on_event, cancel, clock,
            sigint_grace_s, sigterm_grace_s, spawn,
        )
    finally:
        if mcp_file is not None:
            os.unlink(mcp_file[0])


def _run(
    req: TurnRequest,
    exe: str | os.PathLike[str],
    mcp_path: str | None,
    on_event: Callable[[TurnEvent], None] | None,
    cancel: threading.Event | None,
    clock: Callable[[], float],
    sigint_grace_s: float,
    sigterm_grace_s: float,
    spawn: Spawn,
) -> TurnEnd:
    argv = build_argv(req, exe, mcp_path)
    env = build_env(req, os.environ)
    parser = StreamParser()
    started = clock()
    try:
        proc = spawn(argv, env, req.cwd)
    except OSError as exc:
        raise ConfigError(
            f"claude CLI at '{os.fspath(exe)}' cannot be started in '{req.cwd or os.getcwd()}': "
            f"{exc}; check the binary and the agent's working directory"
        ) from exc
    assert proc.stdout is not None and proc.stderr is not None
    pgid = proc.pid
    # A container backend may start the CLI inside the container's own process group; then the
    # group is the container's and only the CLI itself is signalled (its leftovers go with the
    # container). Started by local_spawn, the CLI leads its own group and the group is signalled.
    try:
        own_group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        own_group = True

    def hit(sig: signal.Signals) -> None:
        if own_group:
            _signal_group(pgid, sig)
        else:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
    lines: queue.Queue[object] = queue.Queue()
    tail: deque[bytes] = deque()
    tail_lock = threading.Lock()
    readers = [
        threading.Thread(
            target=_pump_lines, args=(proc.stdout, lines), name=f"claude-out:{pgid}", daemon=True
        ),
        threading.Thread(
            target=_pump_tail,
            args=(proc.stderr, tail, tail_lock),
            name=f"claude-err:{pgid}",
            daemon=True,
        ),
    ]
    for t in readers:
        t.start()
    log.info("claude: started pid %d for session %s (model %s)", pgid, req.session_id, req.model)

    waiter = threading.Thread(
        target=_await_exit, args=(proc, lines), name=f"claude-wait:{pgid}", daemon=True
    )
    waiter.start()

    deadline = started + req.deadline_s
    stop_reason: str | None = None  # "timeout" | "cancelled"
    stage = 0  # 0 running, 1 SIGINT sent, 2 SIGTERM sent, 3 SIGKILL sent
    next_step = deadline
    eof = exited = False
    drain_until: float | None = None  # after exit, how long a leftover may hold stdout open
    while not (eof and exited):
        now = clock()
        if drain_until is not None and now >= drain_until:
            log.warning("claude: pid %d exited but a process it left holds its stdout; "
                        "not waiting for it", pgid)
            break
        if stage == 0 and (now >= deadline or (cancel is not None and cancel.is_set())):
            stop_reason = "timeout" if now >= deadline else "cancelled"
            log.warning("claude: pid %d %s; sending SIGINT", pgid, stop_reason)
            hit(signal.SIGINT)
            stage, next_step = 1, now + sigint_grace_s
        elif stage == 1 and now >= next_step:
            log.warning(
                "claude: pid %d ignored SIGINT for %gs; sending SIGTERM", pgid, sigint_grace_s
            )
            hit(signal.SIGTERM)
            stage, next_step = 2, now + sigterm_grace_s
        elif stage == 2 and now >= next_step:
            log.error(
                "claude: pid %d ignored SIGTERM for %gs; sending SIGKILL", pgid, sigterm_grace_s
            )
            hit(signal.SIGKILL)
            stage, next_step = 3, now + sigterm_grace_s
        elif stage == 3 and now >= next_step:
            log.error(
                "claude: pid %d not gone %gs after SIGKILL; abandoning it", pgid, sigterm_grace_s
            )
            break
        wait = max(0.0, next_step - now)
        if stage == 0 and cancel is not None:
            # A threading.Event cannot wake a queue: notice a cancel within this bound.
            wait = min(wait, _CANCEL_POLL_S)
        try:
            item = lines.get(timeout=wait)
        except queue.Empty:
            continue
        if item is _EOF:
            eof = True
        elif item is _EXITED:
            exited = True
            # Whatever the CLI left in its own group (an MCP server, a background shell) goes
            # with it; that also closes a stdout pipe such a leftover still holds.
            if own_group:
                _signal_group(pgid, signal.SIGKILL)
            else:
                drain_until = clock() + _DRAIN_AFTER_EXIT_S
                next_step = min(next_step, drain_until)
        else:
            assert isinstance(item, bytes)
            _deliver(parser.feed(item), on_event)

    if exited:
        # Both pipes hit EOF and the process is reaped: these end at once.
        for t in (*readers, waiter):
            t.join(timeout=sigterm_grace_s if drain_until is None else 0.1)
        # A reader still blocked on a pipe a leftover holds keeps its stream; it ends with it.
        if not any(t.is_alive() for t in readers):
            for stream in (proc.stdout, proc.stderr):
                stream.close()
    with tail_lock:
        stderr = b"".join(tail).decode("utf-8", errors="replace")[-_STDERR_LIMIT:]
    end = parser.end(duration_s=clock() - started)
    end = replace(end, exit_code=proc.returncode, stderr=stderr)
    if stop_reason is not None:
        how = {1: "SIGINT", 2: "SIGTERM", 3: "SIGKILL"}.get(stage, "SIGINT")
        what = (
            f"past its deadline of {req.deadline_s:g}s" if stop_reason == "timeout" else "cancelled"
        )
        outcome: Outcome = "timeout" if stop_reason == "timeout" else "cancelled"
        end = replace(end, outcome=outcome, is_error=True, error=f"turn {what}; stopped with {how}")
    elif not parser.result_seen:
        last = stderr.strip().splitlines()[-1:] or ["no stderr"]
        end = replace(
            end,
            error=(
                f"the CLI exited with status {proc.returncode} without a result line: "
                f"{last[0][:300]}"
            ),
        )
    log.info(
        "claude: pid %d ended: %s (exit %s, %.1fs, terminal_reason %s)",
        pgid,
        end.outcome,
        proc.returncode,
        end.duration_s,
        end.terminal_reason,
    )
    return end
