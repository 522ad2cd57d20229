"""Clean stops are clean: the whole daemon as a subprocess, stopped by a signal.

``python3 -m hive_actors serve`` runs a hive of one agent (``alice``) on the process backend,
with the real claude CLI against the project's loopback model server, started here. Open on it:
a dashboard websocket, the agent page's websocket and terminal (``/ws/pty``), an HTTP keep-alive
connection, and a turn of alice that waits on the model (so the CLI's MCP connections are open
too). Then the daemon is stopped:

* by SIGTERM, and by SIGINT (Ctrl-C): exit status 0; nothing on stderr of a traceback, of a
  cancelled task or at ERROR level; every websocket got a close frame with 1001 (going away);
  the keep-alive connection was closed;
* by SIGKILL: after the start-up recovery of the next run the hive's file says what it says
  after a clean stop — the same registry states, the in-flight message back in the queue, no
  agent ``stopped`` by the stop.

And a hive run with SIGINT ignored (as in the background of a script, or by a CI runner) still
stops an agent's turn in order and promptly: its CLI gets SIGINT at its default disposition.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from hive_actors.harness import find_claude
from hive_actors.modelserver import ModelServer
from hive_actors.store import Role, Store
from tests.support.daemon import daemon_env
from tests.support.timeout import TIMEOUT
from tests.support.web import bearer, operator_token

API_KEY_ENV = "HIVE_CLEAN_STOP_KEY"
GOING_AWAY = 1001
SLOW_TURN = "@sleep 120\nTake your time."
"""A message whose turn waits on the model for longer than any of these tests."""

# What a clean stop must not print (uvicorn's cancelled requests, asyncio's lost tasks).
_UNCLEAN = re.compile(
    r"Traceback|\bCancel \d+ running task|Task was destroyed|Task exception was never retrieved"
    r"|Exception in ASGI application| ERROR "
)

# Runs the daemon in-process with SIGINT ignored (as the test suite runs hives in a process
# that may ignore it), stopping on SIGTERM only; prints the dashboard's URL once it is up.
_IGNORING_DAEMON = """
import logging, signal, sys, threading
signal.signal(signal.SIGINT, signal.SIG_IGN)
logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from hive_actors.config import load_config
from hive_actors.daemon import Daemon
from hive_actors.supervisors.root import run_until_stopped, start_root
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
daemon = Daemon(load_config(sys.argv[1]))
try:
    children, flags = daemon.tree()
    root = start_root(children, flags, name="hive", ready_timeout=300.0)
    print(f"dashboard {daemon.endpoints.base_url()}/", flush=True)
    sys.exit(run_until_stopped(root, stop, sys.stderr))
finally:
    daemon.close()
"""

# A claude CLI that stops in order on SIGINT the way a Python program does: only when it was
# started with SIGINT at its default disposition (an ignored one is inherited across exec).
# It runs the real CLI as its child and hands SIGINT on to it.
_PYTHON_LIKE_CLI = """#!{python}
import os, signal, subprocess, sys, threading
REAL = {real!r}
if sys.argv[1:2] == ["--version"]:
    os.execv(REAL, [REAL, *sys.argv[1:]])
interrupted = threading.Event()
if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
child = subprocess.Popen([REAL, *sys.argv[1:]])
while True:
    try:
        sys.exit(child.wait(timeout=0.05))
    except subprocess.TimeoutExpired:
        if interrupted.is_set():
            interrupted.clear()
            child.send_signal(signal.SIGINT)
"""


@dataclass
class Hive:
    """One hive's files and its daemon subprocess."""

    root: Path
    model: ModelServer
    config: Path = field(init=False)
    db: Path = field(init=False)
    stderr: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        state = self.root / "hive"
        state.mkdir(parents=True)
        self.db = state / "hive.db"
        self.stderr = self.root / "daemon.err"
        self.config = self.root / "hive.toml"
        base = 20000 + (os.getpid() * 7919) % 30000
        self.config.write_text("\n".join([
            "[hive]", f'state_dir = "{state}"', 'backend = "process"',
            "[web]", 'host = "127.0.0.1"', "port = 0",
            f"agent_port_base = {base}", "agent_port_span = 900",
            "[model]", f'base_url = "{self.model.url}"', f'api_key_env = "{API_KEY_ENV}"',
            'default = "claude-sonnet-test"',
            "[supervision]", "turn_deadline = 300.0", "heartbeat_timeout = 300.0",
        ]) + "\n")
        with contextlib.closing(Store.open(self.db)) as store:
            store.registry.register("alice", role=Role.AGENT)

    def use_claude(self, path: Path) -> None:
        text = self.config.read_text().replace(
            "[model]\n", f'[model]\nclaude_path = "{path}"\n'
        )
        self.config.write_text(text)

    def start(self, argv: list[str] | None = None) -> None:
        """Start the daemon (``hive serve`` unless ``argv``) and wait for its dashboard."""
        env = daemon_env(API_KEY_ENV)
        cmd = argv or [sys.executable, "-m", "hive_actors", "serve", "--config", str(self.config)]
        with self.stderr.open("wb") as err:
            # A session of its own: a Ctrl-C at the terminal of the test run does not reach
            # it, and whatever it leaves can be found and killed.
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                cwd=self.root, env=env, start_new_session=True,
            )
        self.reader = threading.Thread(target=self._read_stdout, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + TIMEOUT * 12
        while not self.base:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the daemon did not come up:\n{self.log_tail()}") from None
            found = re.match(r"dashboard (http://\S+?)/?(\s|$)", line)
            if found:
                self.base = found.group(1)

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put("")

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    @property
    def auth(self) -> dict[str, str]:
        """The operator's ``Authorization`` header (the token file exists once it started)."""
        return bearer(operator_token(self.root / "hive"))

    def log_tail(self, chars: int = 6000) -> str:
        return self.log()[-chars:]

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.base.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def get(self, path: str, port: int | None = None) -> Any:
        host, dashboard = self.host_port
        conn = http.client.HTTPConnection(host, port or dashboard, timeout=TIMEOUT)
        try:
            conn.request("GET", path, headers=self.auth)
            response = conn.getresponse()
            assert response.status == 200, (path, response.status, response.read())
            return json.loads(response.read())
        finally:
            conn.close()

    def message(self, agent: str, text: str) -> int:
        host, port = self.host_port
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        try:
            body = urllib.parse.urlencode({"agent": agent, "text": text})
            conn.request("POST", "/api/message", body, {
                "Content-Type": "application/x-www-form-urlencoded", "Origin": self.base,
                **self.auth,
            })
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            return int(answer["id"])
        finally:
            conn.close()

    def stop(self, sig: int, timeout: float = TIMEOUT * 9) -> tuple[int, float]:
        """Send ``sig``; the exit status and the seconds it took."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not stop within {timeout} s of {signal.Signals(sig).name}:\n"
                f"{self.log_tail()}"
            ) from None
        return code, time.monotonic() - t0

    def kill_leftovers(self) -> None:
        """SIGKILL what is left of the daemon's session (after a kill -9, as systemd does)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session leader's group
        for pid in _session_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(TIMEOUT)

    def recovered(self, message_id: int) -> tuple[dict[str, str], str]:
        """The registry's states and the message's status after the start-up recovery."""
        with contextlib.closing(Store.open(self.db, recover=True)) as store:
            states = {a.name: str(a.state) for a in store.registry.agents()}
            return states, str(store.messages.get(message_id).status)


def _session_members(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


class Live:
    """The dashboard's websocket, read in a thread: events by kind, and how it ended."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.close_code: int | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self.messages.put(json.loads(self.ws.recv()))
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd is not None else None
        finally:
            self.ended.set()

    def wait_event(self, kind: str, agent: str, timeout: float = TIMEOUT * 6) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind} event of {agent} within {timeout} s") from None
            event = msg.get("event") or {}
            if msg.get("type") == "event" and event.get("kind") == kind and (
                event.get("agent") == agent
            ):
                return event

    def wait_until(self, check: Any, timeout: float = TIMEOUT * 12) -> Any:
        """Re-check ``check()`` at each live message (an event is what changes the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            try:
                self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"not so within {timeout} s") from None


def closing_code(ws: ClientConnection, timeout: float = TIMEOUT * 3) -> int | None:
    """Read ``ws`` until it closes; the code of the server's close frame."""
    try:
        while True:
            ws.recv(timeout=timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    except TimeoutError:
        raise AssertionError(f"the websocket was not closed within {timeout} s") from None


@pytest.fixture
def model() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@contextlib.contextmanager
def running(hive: Hive, argv: list[str] | None = None) -> Iterator[Hive]:
    try:
        hive.start(argv)
        yield hive
    finally:
        if hive.proc is not None and hive.proc.poll() is None:
            hive.proc.kill()
        hive.kill_leftovers()
        if hive.reader is not None:
            hive.reader.join(TIMEOUT)
        if hive.proc is not None and hive.proc.stdout is not None:
            hive.proc.stdout.close()


def _alice_page(hive: Hive) -> int | None:
    state = hive.get("/api/state")
    for agent in state["agents"]:
        if agent["name"] == "alice" and agent["state"] == "idle" and agent.get("web_port"):
            return int(agent["web_port"])
    return None


def _busy_alice(hive: Hive, stack: contextlib.ExitStack) -> tuple[Live, int]:
    """Alice up and in a turn that waits on the model; the live dashboard and the message."""
    host, port = hive.host_port
    live = Live(stack.enter_context(
        connect(f"ws://{host}:{port}/ws", open_timeout=TIMEOUT, additional_headers=hive.auth)
    ))
    live.wait_until(lambda: _alice_page(hive))
    message_id = hive.message("alice", SLOW_TURN)
    live.wait_event("turn.started", "alice")
    # The CLI's first stream line (its init): it is up, its MCP connections are open, and it
    # is about to wait on the model.
    live.wait_event("turn.log", "alice")
    return live, message_id


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_daemon_cleanly(
    tmp_path: Path, model: ModelServer, sig: signal.Signals
) -> None:
    hive = Hive(tmp_path, model)
    with running(hive), contextlib.ExitStack() as stack:
        live, message_id = _busy_alice(hive, stack)
        host, _ = hive.host_port
        page = _alice_page(hive) or int(
            next(a for a in hive.get("/api/state")["agents"] if a["name"] == "alice")["web_port"]
        )
        agent_ws = stack.enter_context(
            connect(f"ws://{host}:{page}/ws", open_timeout=TIMEOUT, additional_headers=hive.auth)
        )
        assert json.loads(agent_ws.recv(timeout=TIMEOUT))["type"] == "snapshot"
        pty = stack.enter_context(connect(
            f"ws://{host}:{page}/ws/pty", open_timeout=TIMEOUT, additional_headers=hive.auth
        ))
        pty.send(json.dumps({"type": "ping"}))
        while pty.recv(timeout=TIMEOUT) != json.dumps({"type": "pong"}):
            pass  # the shell's prompt comes first
        keep_alive = http.client.HTTPConnection(host, page, timeout=TIMEOUT)
        keep_alive.request("GET", "/api/state", headers=hive.auth)
        assert keep_alive.getresponse().read()  # the connection stays open for the next one

        code, _ = hive.stop(sig)
        log = hive.log()
        assert code == 0, log[-6000:]
        assert not _UNCLEAN.findall(log), "\n".join(
            line for line in log.splitlines() if _UNCLEAN.search(line)
        )
        assert live.ended.wait(TIMEOUT) and live.close_code == GOING_AWAY
        assert closing_code(agent_ws) == GOING_AWAY
        assert closing_code(pty) == GOING_AWAY
        assert keep_alive.sock is not None
        keep_alive.sock.settimeout(TIMEOUT)
        assert keep_alive.sock.recv(1) == b""  # closed by the server
        keep_alive.close()
    states, status = hive.recovered(message_id)
    assert states == {"alice": "busy"}  # as the stop found it: the stop wrote no state
    assert status == "queued"  # the turn's message is back in the queue


def test_kill_9_then_recovery_leaves_what_a_clean_stop_leaves(
    tmp_path: Path, model: ModelServer
) -> None:
    hive = Hive(tmp_path, model)
    with running(hive), contextlib.ExitStack() as stack:
        _, message_id = _busy_alice(hive, stack)
        code, _ = hive.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL
        hive.kill_leftovers()
    states, status = hive.recovered(message_id)
    assert states == {"alice": "busy"}
    assert status == "queued"


def test_a_hive_that_ignores_sigint_still_stops_a_turn_in_order(
    tmp_path: Path, model: ModelServer
) -> None:
    """The daemon runs with SIGINT ignored; the agent's CLI is one that stops in order on
    SIGINT only at its default disposition (as a Python program does). The stop's SIGINT must
    reach it: the turn ends at once, never by the SIGTERM after the SIGINT grace (10 s)."""
    cli = tmp_path / "claude"
    cli.write_text(_PYTHON_LIKE_CLI.format(python=sys.executable, real=str(find_claude().path)))
    cli.chmod(0o755)
    hive = Hive(tmp_path, model)
    hive.use_claude(cli)
    script = [sys.executable, "-c", _IGNORING_DAEMON, str(hive.config)]
    with running(hive, script), contextlib.ExitStack() as stack:
        _busy_alice(hive, stack)
        code, took = hive.stop(signal.SIGTERM)
    log = hive.log()
    assert code == 0, log[-6000:]
    assert "ignored SIGINT" not in log, log[-6000:]
    assert re.search(r"claude: pid \d+ ended: cancelled \(exit 0", log), log[-6000:]
    assert took < 8.0, f"the stop took {took:.1f} s:\n{log[-6000:]}"
