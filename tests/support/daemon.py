"""The whole daemon as a subprocess: ``python3 -m hive_actors serve --config hive.toml``.

What a promise test of the daemon needs, and nothing of the daemon's insides:

* :class:`RecordingModel` — the loopback :class:`~hive_actors.modelserver.ModelServer` with the
  default directive script, which also keeps the FULL newest prompt of every request (the
  server's own log cuts prompts at 500 characters) and the daemon run (``epoch``) it came in.
  What an agent actually received is read from there: a turn's prompt carries its messages'
  bodies (:func:`parse_turn_prompt`).
* :class:`DaemonProcess` — one hive on one state dir, run again and again: ``register`` agents
  in the sqlite file while the daemon is down (``serve`` seeds nothing), ``start`` /
  ``wait_ready`` (the ``dashboard …`` line, then ``GET /api/state`` answering), ``kill9``,
  ``terminate`` (SIGTERM), ``interrupt`` (SIGINT); the operator's JSON API over real HTTP
  (``message``, ``approve``, ``deny``, ``answer``, ``state``, ``approvals``, ``questions``);
  ``wait_until`` (a bounded poll with a deadline); ``close`` (kills whatever is left of the
  processes it started).

The daemon runs in a session of its own (``start_new_session``): every keeper and ``claude``
process it starts is in that session, so ``kill9`` can do what systemd's
``KillMode=control-group`` does after a main process dies — kill what is left — and the test
never leaves a process behind. Only loopback traffic: the dashboard, the model server and the
agents' pages all listen on 127.0.0.1, and the CLI runs with
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``.

Randomness is the caller's (seeded); this module only picks free ports.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from hive_actors.modelserver import ModelServer, script_policy
from hive_actors.modelserver.conversation import newest_prompt
from hive_actors.store import Role, Store
from tests.support.web import bearer, operator_token

__all__ = [
    "ApiAnswer",
    "DaemonProcess",
    "Delivery",
    "PromptRecord",
    "RecordingModel",
    "TurnPrompt",
    "daemon_env",
    "parse_turn_prompt",
    "seed_from_env",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
API_KEY_ENV = "HIVE_DAEMON_TEST_KEY"
MODEL = "claude-sonnet-test"
RESTING = ("idle", "waiting_operator", "waiting_approval")
"""The states of an agent with no turn to run."""
T = TypeVar("T")


def seed_from_env(name: str, default: int) -> int:
    """A test's seed: ``$name`` when set (to replay a failure), else ``default``."""
    return int(os.environ.get(name, str(default)))


def wait_until(probe: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.2, describe: Callable[[], str] | None = None) -> T:
    """Poll ``probe`` until it returns something truthy; AssertionError after ``timeout`` s.

    A bounded poll: at most ``timeout / interval + 1`` probes, each gap a wait on an Event (a
    test waits for a condition, never for a fixed time).
    """
    gap = threading.Event()
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        got = probe()
        if got:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            break
        gap.wait(min(interval, left))
    got = probe()
    if got:
        return got
    extra = f"\n{describe()}" if describe is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")


def daemon_env(api_key_env: str) -> dict[str, str]:
    """The environment a daemon under test runs in: this one's, less any model or CLI setting
    and proxy, plus this checkout on the path, no traffic but loopback, and a loopback key in
    ``$api_key_env``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CLAUDE_")) and "proxy" not in k.lower()}
    env.update({
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        api_key_env: "loopback-test-key",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- what the agents received ------------------------------------------------------------------


@dataclass(frozen=True)
class PromptRecord:
    """One request's newest user prompt, as the model server saw it."""

    index: int
    epoch: int
    """The daemon run (1-based, :attr:`RecordingModel.epoch`) during which it came in."""
    text: str
    system: str


@dataclass(frozen=True)
class Delivery:
    """One message as a turn's prompt carried it."""

    message_id: int
    sender: str
    kind: str
    redelivered: bool
    """The header says so (the product marks a message handed to a turn before)."""
    header: str
    body: str


@dataclass(frozen=True)
class TurnPrompt:
    """A turn's prompt (``N new message(s) for <agent>:`` …), the first time it was seen."""

    first_index: int
    epoch: int
    agent: str
    text: str
    deliveries: tuple[Delivery, ...]


_TURN_HEAD = re.compile(r"\A\s*(\d+) new message\(s\) for ([A-Za-z0-9_.-]+):")
_MSG_HEAD = re.compile(
    r"^--- message (\d+) from (\S+) \(([^)\n]*)\)([^\n]*)$", re.MULTILINE
)


def parse_turn_prompt(text: str) -> tuple[str, list[Delivery]] | None:
    """The agent and the messages of a turn prompt (see ``hive_actors/agent/prompt.py``);
    None when ``text`` is not a turn prompt (a notes compaction, a hand-off…)."""
    head = _TURN_HEAD.match(text)
    if head is None:
        return None
    heads = list(_MSG_HEAD.finditer(text))
    deliveries = []
    for i, match in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[match.end():end].strip("\n")
        rest = match.group(4)
        deliveries.append(Delivery(
            message_id=int(match.group(1)),
            sender=match.group(2),
            kind=match.group(3),
            redelivered="redeliver" in rest.lower(),
            header=match.group(0),
            body=body,
        ))
    return head.group(2), deliveries


class RecordingModel:
    """The loopback model server (directive script), keeping every full prompt."""

    def __init__(self) -> None:
        self.server = ModelServer(script=self._policy)
        self._lock = threading.Lock()
        self._prompts: list[PromptRecord] = []
        self.epoch = 0
        """Set by the DaemonProcess at each start: which run the next prompts belong to."""

    def _policy(self, body: Mapping[str, Any]) -> Any:
        prompt = newest_prompt(body)
        if prompt is not None:
            system = body.get("system")
            if isinstance(system, list):
                system = "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
            with self._lock:
                self._prompts.append(PromptRecord(
                    len(self._prompts), self.epoch, prompt.text, str(system or "")))
        return script_policy(body)

    def start(self) -> RecordingModel:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def prompts(self) -> list[PromptRecord]:
        with self._lock:
            return list(self._prompts)

    def turns(self, agent: str | None = None) -> list[TurnPrompt]:
        """Every distinct turn prompt, in the order first seen (the CLI sends a turn's prompt
        again with each tool round trip and retry: those are one turn)."""
        seen: set[str] = set()
        turns = []
        for record in self.prompts:
            if record.text in seen:
                continue
            parsed = parse_turn_prompt(record.text)
            if parsed is None:
                continue
            seen.add(record.text)
            name, deliveries = parsed
            if agent is None or name == agent:
                turns.append(TurnPrompt(record.index, record.epoch, name, record.text,
                                        tuple(deliveries)))
        return turns

    def received(self, agent: str, needle: str) -> bool:
        """Whether a turn prompt of ``agent`` carried ``needle``."""
        return any(needle in t.text for t in self.turns(agent))


# -- the daemon process ------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiAnswer:
    """One HTTP request to the daemon: its status (0: no answer) and JSON body."""

    status: int
    body: Any
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class DaemonProcess:
    """One hive (state dir, config, port) run as ``hive serve`` any number of times."""

    def __init__(self, root: Path, model: RecordingModel, *,
                 supervision: Mapping[str, Any] | None = None, log_level: str = "info",
                 sections: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """``sections``: more keys for hive.toml, by table (``{"process": {"isolate": "on"}}``;
        a key also set here wins)."""
        self.root = root
        self.model = model
        self.state_dir = root / "hive"
        self.config_path = root / "hive.toml"
        self.log_path = root / "daemon.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.exits: list[tuple[str, int | None]] = []
        """(how it ended, its exit status) per run: ``kill9``, ``sigterm``, ``sigint``…"""
        self._dashboard = threading.Event()
        self._stdout: list[str] = []
        self._reader: threading.Thread | None = None
        sup = {"turn_deadline": 60.0, "heartbeat_timeout": 60.0, "backoff_min": 0.2,
               "backoff_max": 2.0, **(supervision or {})}
        # The agents' pages get ports hashed into [base, base + span): away from the
        # defaults other hives on this machine use.
        base = 20000 + (os.getpid() * 7919 + self.port) % 30000
        tables: dict[str, dict[str, Any]] = {
            "hive": {"state_dir": str(self.state_dir), "backend": "process"},
            "web": {"host": "127.0.0.1", "port": self.port, "agent_port_base": base,
                    "agent_port_span": 900},
            "model": {"base_url": model.url, "api_key_env": API_KEY_ENV, "default": MODEL},
            "supervision": sup,
        }
        for table, keys in (sections or {}).items():
            tables[table] = {**tables.get(table, {}), **keys}
        lines = [
            line
            for table, keys in tables.items()
            for line in (f"[{table}]", *(f"{k} = {json.dumps(v)}" for k, v in keys.items()))
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.db_path = self.state_dir / "hive.db"

    # -- files (only while the daemon is down: the store takes the hive lock) ------------------

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        """The hive's sqlite file, opened as the daemon opens it (the daemon must be down)."""
        assert not self.running, "the daemon holds the hive lock: stop it before opening the store"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        store = Store.open(self.db_path)
        try:
            yield store
        finally:
            store.close()

    def register(self, agents: Mapping[str, Role]) -> None:
        """Register ``agents`` (pending) in the file; the daemon's start resumes them."""
        with self.store() as store:
            for name, role in agents.items():
                store.registry.register(name, role=role)

    # -- the process ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        return daemon_env(API_KEY_ENV)

    def start(self) -> None:
        """Start a run (the previous one must be over); returns at once (see wait_ready)."""
        assert not self.running, "the daemon is already running"
        self.runs += 1
        self.model.epoch = self.runs
        self._dashboard = threading.Event()
        with self.log_path.open("ab") as log:
            log.write(f"\n===== run {self.runs} (t={time.time():.3f}) =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hive_actors", "--log-level", self.log_level,
                 "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=self.root,
                env=self.env(), start_new_session=True,
            )
        self.started_at = time.monotonic()
        self._reader = threading.Thread(
            target=self._read, args=(self.proc, self._dashboard), name="daemon-stdout",
            daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes], dashboard: threading.Event) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._stdout.append(line)
            if line.startswith("dashboard "):
                dashboard.set()
        proc.stdout.close()

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait for the ``dashboard`` line and a 200 from ``GET /api/state``; seconds taken."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        proc = self.proc

        def dashboard() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({proc.returncode}) before it was ready:\n{self.log_tail()}")
            return self._dashboard.is_set()

        wait_until(dashboard, timeout, "the daemon's dashboard line", interval=0.05,
                   describe=self.log_tail)
        expected = f"dashboard {self.base_url}/"
        lines = [line for line in self._stdout if line.startswith("dashboard ")]
        assert lines and lines[-1].startswith(expected), (lines, expected)
        wait_until(lambda: self.get("/api/state").status == 200,
                   max(1.0, deadline - time.monotonic()), "GET /api/state to answer",
                   interval=0.05, describe=self.log_tail)
        return time.monotonic() - self.started_at

    def _reap_session(self) -> None:
        """Kill (SIGKILL) every process left in the daemon's session, by pid."""
        if self.proc is None:
            return
        sid = self.proc.pid
        for _ in range(20):
            left = [pid for pid in _session_members(sid) if pid != sid]
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            threading.Event().wait(0.05)

    def _end(self, how: str, sig: int | None, timeout: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(30)
            how = f"{how} (timed out after {timeout:g} s, killed)"
        self._reap_session()
        if self._reader is not None:
            self._reader.join(10)
        self.exits.append((how, code))
        return code

    def kill9(self) -> None:
        """SIGKILL the daemon, then what is left of its session (as systemd would)."""
        self._end("kill9", signal.SIGKILL, 30)

    def terminate(self, timeout: float = 150.0) -> int | None:
        """SIGTERM and wait for the orderly stop; the exit status."""
        return self._end("sigterm", signal.SIGTERM, timeout)

    def interrupt(self, timeout: float = 150.0) -> int | None:
        """SIGINT (Ctrl-C) and wait for the orderly stop; the exit status."""
        return self._end("sigint", signal.SIGINT, timeout)

    def close(self) -> None:
        """Kill the daemon if it runs and anything left of its session (idempotent)."""
        if self.running:
            self._end("close", signal.SIGKILL, 30)
        else:
            self._reap_session()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    # -- the operator's JSON API ---------------------------------------------------------------

    @property
    def token(self) -> str:
        """The operator token (the hive writes its file at its first start)."""
        return operator_token(self.state_dir)

    def request(self, method: str, path: str, fields: Mapping[str, str] | None = None,
                timeout: float = 15.0, *, headers: Mapping[str, str] | None = None,
                anonymous: bool = False) -> ApiAnswer:
        """One HTTP request (a form for POST) as the operator (its bearer token), or as
        anyone else with ``anonymous``; status 0 when no answer came."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            body = None
            headers = dict(headers or {})
            if not anonymous:
                headers.update(bearer(self.token))
            if method == "POST":
                body = urllib.parse.urlencode(dict(fields or {}))
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return ApiAnswer(0, None, f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return ApiAnswer(response.status, parsed)

    def get(self, path: str, timeout: float = 15.0) -> ApiAnswer:
        return self.request("GET", path, timeout=timeout)

    def events(self) -> list[dict[str, Any]]:
        """The whole events log over ``GET /api/events``, page by page."""
        events: list[dict[str, Any]] = []
        since = 0
        for _ in range(10_000):
            page = self.get(f"/api/events?since={since}&limit=1000")
            assert page.status == 200, page
            events += page.body["events"]
            if not page.body["more"] or not page.body["events"]:
                return events
            since = page.body["last_id"]
        raise AssertionError("the events log did not end within 10,000 pages")

    def post(self, path: str, timeout: float = 15.0, **fields: str) -> ApiAnswer:
        return self.request("POST", path, fields, timeout=timeout)

    def message(self, agent: str, text: str, timeout: float = 15.0) -> ApiAnswer:
        """``POST /api/message``: an operator message; ``ok`` means acknowledged."""
        return self.post("/api/message", timeout=timeout, agent=agent, text=text)

    def approve(self, approval_id: int) -> ApiAnswer:
        return self.post(f"/api/approvals/{approval_id}/approve")

    def deny(self, approval_id: int) -> ApiAnswer:
        return self.post(f"/api/approvals/{approval_id}/deny")

    def answer(self, question_id: int, text: str) -> ApiAnswer:
        return self.post(f"/api/questions/{question_id}/answer", text=text)

    def state(self) -> dict[str, Any] | None:
        """``GET /api/state`` (None when the daemon does not answer)."""
        got = self.get("/api/state")
        return got.body if got.status == 200 else None

    def agents(self) -> dict[str, dict[str, Any]]:
        """Each agent's row of ``/api/state`` by name ({} when the daemon does not answer)."""
        state = self.state()
        return {a["name"]: a for a in state["agents"]} if state else {}

    def approvals(self) -> list[dict[str, Any]]:
        got = self.get("/api/approvals")
        return list(got.body["approvals"]) if got.status == 200 else []

    def questions(self) -> list[dict[str, Any]]:
        got = self.get("/api/questions")
        return list(got.body["questions"]) if got.status == 200 else []

    def describe(self) -> str:
        """What a failed wait shows: the agents' states and the log's tail."""
        agents = {n: (a["state"], a["inbox_depth"]) for n, a in self.agents().items()}
        return f"agents (state, inbox): {agents}\nexits: {self.exits}\nlog tail:\n{self.log_tail()}"

    def wait_settled(self, names: list[str] | None = None, timeout: float = 90.0,
                     resting: tuple[str, ...] = RESTING) -> None:
        """Every agent (or ``names``) at rest (idle, or waiting for the operator) with an empty
        inbox."""

        def settled() -> bool:
            agents = self.agents()
            wanted = names if names is not None else list(agents)
            return bool(agents) and all(
                n in agents and agents[n]["state"] in resting and agents[n]["inbox_depth"] == 0
                for n in wanted)

        wait_until(settled, timeout, f"agents {names or 'all'} at rest with empty inboxes",
                   interval=0.25, describe=self.describe)

    def turns_of(self, name: str) -> int:
        """How many turns ``name`` ended (the dashboard's tally of ``turn.ended`` events)."""
        return int(self.agents().get(name, {}).get("turns", 0))

    def wait_turns(self, name: str, more_than: int, timeout: float = 60.0) -> int:
        """Wait until ``name`` ended more than ``more_than`` turns; the count."""
        def more() -> int | None:
            count = self.turns_of(name)
            return count if count > more_than else None

        return wait_until(more, timeout, f"{name} to end turn {more_than + 1}", interval=0.1,
                          describe=self.describe)

    def session_processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every live process in the daemon's session but itself."""
        if self.proc is None:
            return []
        out = []
        for pid in _session_members(self.proc.pid):
            if pid == self.proc.pid:
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
            except OSError:
                continue
            out.append((pid, cmd.strip()))
        return out


def _session_members(sid: int) -> list[int]:
    """Pids whose session id is ``sid`` (read from /proc; zombies included)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session …; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(entry))
    return members
