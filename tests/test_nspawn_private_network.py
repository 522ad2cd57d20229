"""``[nspawn] network = "private"``: real unprivileged systemd-nspawn containers with their own
network namespace, where the hive relays exactly its MCP endpoint and the model API (the
loopback URLs it hands the program it execs). A program inside reaches those ports and nothing
else of the host; the relays end with the container; a whole hive takes a real turn with the
real claude CLI through them. Skipped only without root or systemd-nspawn."""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hive_actors.config import NspawnConfig, load_config
from hive_actors.containers.base import ContainerSpec, StopGrace
from hive_actors.containers.nspawn import NspawnBackend
from hive_actors.daemon import Daemon
from hive_actors.errors import ConfigError
from hive_actors.modelserver import ModelServer
from hive_actors.store import EventKind, Role
from tests.support.daemon import wait_until
from tests.support.hive import EventWatch, hive_config, send, start_tree
from tests.support.timeout import TIMEOUT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("systemd-nspawn") is None,
    reason="the nspawn backend needs root and systemd-nspawn (apt-get install systemd-container)",
)

# What a program inside reports for each port: the body it got, or the error's errno.
_PROBE = """
import json, socket, sys, urllib.request
args = sys.argv[1:]
if "--mcp-config" in args:  # as the CLI's argv names it (the probe does not read it)
    at = args.index("--mcp-config")
    del args[at:at + 2]
out = {}
for target in args:
    host, port = target.rsplit(":", 1)
    try:
        if host in ("127.0.0.1", "[::1]"):
            with urllib.request.urlopen(f"http://{target}/", timeout=5) as r:
                out[target] = r.read().decode()
        else:
            socket.create_connection((host, int(port)), timeout=5).close()
            out[target] = "connected"
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        out[target] = getattr(reason, "errno", None) or str(reason)
print(json.dumps(out))
"""


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_server(body: bytes) -> Iterator[int]:
    """A loopback HTTP server on the host answering ``body``; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.body = body  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[NspawnBackend]:
    b = NspawnBackend(tmp_path / "hive", network="private",
                      grace=StopGrace(sigint=TIMEOUT, sigterm=2, sigkill=2))
    try:
        yield b
    finally:
        b.close()


def probe(backend: NspawnBackend, name: str, targets: list[str], env: dict[str, str],
          mcp_config: str | None = None) -> dict[str, Any]:
    """What a program exec'd in the container reaches of ``targets`` (``--mcp-config`` in
    its argv when given, as the CLI's)."""
    extra = ["--mcp-config", mcp_config] if mcp_config else []
    proc = backend.exec(name, [sys.executable, "-I", "-c", _PROBE, *targets, *extra], env)
    out, err = proc.communicate(timeout=TIMEOUT * 2)
    assert proc.returncode == 0, err
    seen: dict[str, Any] = json.loads(out)
    return seen


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("relay:", "netns-listen"))]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def in_container(leader: int, comm: str) -> list[int]:
    """Host pids of the processes named ``comm`` in ``leader``'s pid namespace."""
    ns = os.stat(f"/proc/{leader}/ns/pid").st_ino
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/pid").st_ino == ns \
                    and Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                found.append(int(entry))
        except OSError:
            continue
    return found


# -- the backend alone -------------------------------------------------------------------------


def test_a_private_network_reaches_the_relayed_ports_and_nothing_else(
    backend: NspawnBackend, tmp_path: Path
) -> None:
    with http_server(b"model") as model, http_server(b"mcp") as mcp, \
            http_server(b"secret") as other:
        backend.create("alice", ContainerSpec())
        backend.start("alice")
        leader = backend.status("alice").pid
        assert leader is not None and netns(leader) != netns(os.getpid())
        # The hive hands a program its two loopback URLs: ANTHROPIC_BASE_URL, and the hive
        # server of its --mcp-config (a file in the agent's tmp/, /tmp inside).
        config = tmp_path / "hive" / "agents" / "alice" / "tmp" / "mcp-x.json"
        config.write_text(json.dumps({"mcpServers": {
            "hive": {"type": "http", "url": f"http://127.0.0.1:{mcp}/hive/mcp"},
            "other": {"type": "http", "url": f"http://127.0.0.1:{other}/"},  # not the hive's
        }}))
        env = {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model}"}
        targets = [f"127.0.0.1:{model}", f"127.0.0.1:{mcp}", f"127.0.0.1:{other}",
                   "192.0.2.1:80"]
        # No --mcp-config in its argv: only the model's port is relayed yet.
        seen = probe(backend, "alice", targets, env)
        assert seen[f"127.0.0.1:{model}"] == "model"
        assert seen[f"127.0.0.1:{mcp}"] == errno.ECONNREFUSED
        # Its argv names its config file, as the CLI's does: the hive's MCP endpoint (and only
        # that server of the file) is relayed too.
        seen = probe(backend, "alice", targets, env, mcp_config="/tmp/mcp-x.json")
        assert seen == {
            f"127.0.0.1:{model}": "model",  # the model API, relayed
            f"127.0.0.1:{mcp}": "mcp",  # the hive's MCP endpoint, relayed
            f"127.0.0.1:{other}": errno.ECONNREFUSED,  # another host loopback service: no
            "192.0.2.1:80": errno.ENETUNREACH,  # the world: no route at all
        }, seen

        assert backend.relayed("alice") == sorted([("127.0.0.1", mcp), ("127.0.0.1", model)])

        # http://localhost:PORT: both loopback addresses inside, each to whichever the host's
        # server listens on (this one: 127.0.0.1 only).
        seen = probe(backend, "alice", [f"[::1]:{model}"],
                     {"ANTHROPIC_BASE_URL": f"http://localhost:{model}"})
        assert seen == {f"[::1]:{model}": "model"}
        assert ("::1", model) in backend.relayed("alice")

        # A URL that is not loopback cannot be relayed: a clear error, nothing started.
        with pytest.raises(ConfigError, match=r"container alice: the model API "
                                              r"\(ANTHROPIC_BASE_URL\) 'https://api.example.com'"
                                              r" is not a loopback"):
            backend.exec("alice", ["true"], {"ANTHROPIC_BASE_URL": "https://api.example.com"})

        # A connection open through the relay when the container stops is closed with it.
        held = backend.exec("alice", [sys.executable, "-I", "-c", (
            "import socket, sys\n"
            f"s = socket.create_connection(('127.0.0.1', {model}))\n"
            "print('connected', flush=True)\n"
            "sys.stdin.read()\n")], env)
        assert held.stdout is not None and held.stdout.readline() == b"connected\n"
        backend.stop("alice")
        held.communicate(timeout=TIMEOUT)
        wait_until(lambda: not relay_threads(), TIMEOUT, "the relay's threads to end")


def test_the_relays_end_with_the_container_start_after_start(
    backend: NspawnBackend,
) -> None:
    with http_server(b"model") as model:
        env = {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model}"}
        backend.create("bob", ContainerSpec())
        # One round first: imports, the logging handlers and the loop's first allocations.
        backend.start("bob")
        backend.exec("bob", ["true"], env).communicate(timeout=TIMEOUT)
        backend.stop("bob")
        wait_until(lambda: not relay_threads(), TIMEOUT, "the relay's threads to end")
        fds, threads = open_fds(), threading.active_count()
        for round_ in range(6):
            backend.start("bob")
            leader = backend.status("bob").pid
            assert leader is not None
            seen = probe(backend, "bob", [f"127.0.0.1:{model}"], env)
            assert seen == {f"127.0.0.1:{model}": "model"}
            assert [t.name for t in relay_threads()] == ["relay:bob"]
            if round_ % 2:
                backend.stop("bob")  # the hive's stop
            else:
                os.kill(leader, signal.SIGKILL)  # a crash under the hive
                wait_until(lambda: backend.status("bob").state == "stopped", TIMEOUT,
                           "the crashed container to read stopped")
            wait_until(lambda: not relay_threads(), TIMEOUT, "the relay's threads to end")
            wait_until(lambda: open_fds() == fds and threading.active_count() == threads,
                       TIMEOUT, "the backend's descriptors and threads to be back",
                       describe=lambda: f"fds {open_fds()} vs {fds}, threads "
                                        f"{threading.enumerate()}")


def test_network_is_checked_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"network = 'bridge' is not a network: use \"host\""):
        NspawnBackend(tmp_path / "h", network="bridge")
    toml = tmp_path / "hive.toml"
    toml.write_text('[hive]\nbackend = "nspawn"\n[nspawn]\nnetwork = "bridge"\n')
    with pytest.raises(ConfigError, match=r"hive.toml: \[nspawn\] network = 'bridge'"):
        load_config(toml)
    toml.write_text('[hive]\nbackend = "nspawn"\n[nspawn]\nnetwork = "private"\n')
    with pytest.raises(ConfigError, match=r"needs \[model\] base_url to be a loopback URL"):
        load_config(toml)
    toml.write_text('[hive]\nbackend = "nspawn"\n[model]\nbase_url = "https://api.anthropic.com"'
                    '\n[nspawn]\nnetwork = "private"\n')
    with pytest.raises(ConfigError, match=r"\[model\] base_url 'https://api.anthropic.com' is "
                                          r"not a loopback http\(s\) URL"):
        load_config(toml)
    toml.write_text('[hive]\nbackend = "nspawn"\n[model]\nbase_url = "http://127.0.0.1:9"\n'
                    '[web]\nhost = "0.0.0.0"\n[nspawn]\nnetwork = "private"\n')
    with pytest.raises(ConfigError, match=r"\[web\] host"):
        load_config(toml)
    toml.write_text('[hive]\nbackend = "nspawn"\n[model]\nbase_url = "http://127.0.0.1:9"\n'
                    '[nspawn]\nnetwork = "private"\nmode = "unit"\n')
    with pytest.raises(ConfigError, match=r"child mode only"):
        load_config(toml)
    toml.write_text('[hive]\nbackend = "nspawn"\n[model]\nbase_url = "http://localhost:9"\n'
                    '[nspawn]\nnetwork = "private"\nmode = "child"\n')
    assert load_config(toml).nspawn.network == "private"


# -- a whole hive on a private network ---------------------------------------------------------


def test_a_hive_on_a_private_network_takes_a_real_turn(tmp_path: Path) -> None:
    model = ModelServer()
    model.start()
    config = replace(hive_config(tmp_path, model.url, backoff_min=0.05, backoff_jitter=0.0),
                     backend="nspawn", nspawn=NspawnConfig(network="private", mode="child"))
    daemon = Daemon(config, api_key="loopback-test-key")
    root = None
    try:
        root = start_tree(daemon, {"boss": Role.MANAGER, "alice": Role.AGENT})
        events = EventWatch(daemon.hive.open_store, daemon.hive.bell)
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "alice"
                        and e.payload["to"] == "idle")
        assert daemon.backend is not None
        leader = daemon.backend.status("alice").pid
        assert leader is not None and netns(leader) != netns(os.getpid())

        # The real CLI inside its own network: the model over the relay, and the hive's MCP
        # endpoint (it sends the manager a message).
        body = json.dumps({"to": "boss", "body": "hello from a private network"})
        send(daemon, "alice", f"@sleep 1\n@tool mcp__hive__send {body}")
        clis = wait_until(lambda: in_container(leader, "claude"), TIMEOUT * 3,
                          "the claude CLI to run in alice's container")
        assert all(netns(pid) == netns(leader) for pid in clis)  # in its private network
        ended = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice",
                                timeout=TIMEOUT * 6)
        assert ended.payload["outcome"] == "ok", ended.payload
        assert ended.payload["tool_calls"] == {"mcp__hive__send": 1}
        events.wait_for(lambda e: e.kind == EventKind.MESSAGE_SENT and e.agent == "boss"
                        and e.payload["from"] == "alice")
        # Exactly the two: the model API's port and the dashboard's (the MCP endpoint).
        gateway = daemon.endpoints.base_url()
        assert sorted(daemon.backend.relayed("alice")) == sorted(  # type: ignore[attr-defined]
            [("127.0.0.1", int(model.url.rsplit(":", 1)[1].split("/")[0])),
             ("127.0.0.1", int(gateway.rsplit(":", 1)[1]))])
        assert "relay:alice" in [t.name for t in relay_threads()]
    finally:
        if root is not None:
            root.stop(block=True, timeout=TIMEOUT * 6)
        daemon.close()
        model.stop()
    assert not relay_threads()
