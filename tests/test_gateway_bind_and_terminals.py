"""Issue 17 (items 4 and 5): a hive bound on 0.0.0.0 (its agents' MCP connection works, its
``/metrics`` needs a bearer token), and the terminals (a burst of connections never exceeds the
per-agent limit; a closed terminal's shell is forgotten, and stop signals only live shells)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from websockets.exceptions import ConnectionClosed

from hive_actors.mcp.surface import LOOPBACK_HOSTS, mcp_allowed_hosts
from hive_actors.stats.routes import metrics_refusal
from hive_actors.store import Role
from tests.support.daemon import wait_until
from tests.support.gateway import agent_port, gateway_hive
from tests.support.timeout import TIMEOUT
from tests.support.web import ws_connect


def _tools_list(url: str, token: str) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return httpx.post(
        url, json=body, timeout=TIMEOUT,
        headers={"Accept": "application/json, text/event-stream",
                 "Authorization": f"Bearer {token}"},
    )


def test_a_wildcard_bind_serves_mcp_to_agents_and_guards_metrics(tmp_path: Path) -> None:
    metrics_file = tmp_path / "metrics-token"
    with gateway_hive(
        tmp_path, {"alice": Role.AGENT},
        web={"host": "0.0.0.0", "metrics_token_file": str(metrics_file)},
    ) as hive:
        daemon = hive.daemon
        assert daemon.token is not None  # a non-loopback bind: the operator token is on
        url = daemon.endpoints.mcp_url(timeout=TIMEOUT)
        assert url.startswith("http://127.0.0.1:"), url  # never "0.0.0.0:PORT"
        agent_token = daemon.tokens.issue("alice", Role.AGENT)
        response = _tools_list(url, agent_token)
        assert response.status_code == 200, response.text
        assert "tools" in response.json()["result"]

        base = hive.base
        assert httpx.get(f"{base}/metrics", timeout=TIMEOUT).status_code == 401
        wrong = httpx.get(f"{base}/metrics", timeout=TIMEOUT,
                          headers={"Authorization": "Bearer " + "x" * 43})
        assert wrong.status_code == 401
        metrics_token = metrics_file.read_text().strip()
        for token in (metrics_token, daemon.token.value):
            ok = httpx.get(f"{base}/metrics", timeout=TIMEOUT,
                           headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and b"hive_" in ok.content, ok.text


def test_mcp_allowed_hosts_follow_the_bind() -> None:
    assert mcp_allowed_hosts("0.0.0.0") == LOOPBACK_HOSTS
    assert mcp_allowed_hosts("::") == LOOPBACK_HOSTS
    assert mcp_allowed_hosts("127.0.0.1") == LOOPBACK_HOSTS
    assert mcp_allowed_hosts("10.1.2.3") == (*LOOPBACK_HOSTS, "10.1.2.3:*")
    assert mcp_allowed_hosts("fd00::1") == (*LOOPBACK_HOSTS, "[fd00::1]:*")


def test_metrics_refusal() -> None:
    assert metrics_refusal(None, ()) is None
    assert metrics_refusal(None, ("t" * 40,)) is not None
    assert metrics_refusal("Basic abc", ("t" * 40,)) is not None
    assert metrics_refusal("Bearer " + "u" * 40, ("t" * 40,)) is not None
    assert metrics_refusal("Bearer " + "t" * 40, ("t" * 40,)) is None


def test_a_loopback_bind_leaves_metrics_open(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        assert httpx.get(f"{hive.base}/metrics", timeout=TIMEOUT).status_code == 200


async def _outcome(
    port: int, token: str, hold: asyncio.Event, opened: asyncio.Queue[None]
) -> str:
    """'open' once a terminal printed something (told on ``opened``, then held until
    ``hold``), else the close code it got."""
    try:
        async with ws_connect(port, "/ws/pty", token=token) as sock:
            await sock.send(b"echo ready\n")
            await asyncio.wait_for(sock.recv(), TIMEOUT)
            opened.put_nowait(None)
            await hold.wait()
            return "open"
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return str(exc.rcvd.code)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_burst_of_terminals_gets_exactly_the_limit_and_closed_ones_are_forgotten(
    tmp_path: Path,
) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        backend = hive.daemon.backend
        run = backend._slot("alice").running
        assert run is not None

        async def burst() -> list[str]:
            hold = asyncio.Event()
            opened: asyncio.Queue[None] = asyncio.Queue()
            tasks = [asyncio.create_task(_outcome(port, hive.token, hold, opened)) for _ in range(7)]

            async def settled() -> None:
                # Every connection has its answer: refused (its task done) or a live terminal.
                live = 0
                while live + sum(t.done() for t in tasks) < len(tasks):
                    pending = [t for t in tasks if not t.done()]
                    getter = asyncio.ensure_future(opened.get())
                    done, _ = await asyncio.wait([getter, *pending],
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        live += 1
                    else:
                        getter.cancel()

            await asyncio.wait_for(settled(), TIMEOUT)
            hold.set()
            return list(await asyncio.gather(*tasks))

        outcomes = asyncio.run(burst())
        assert sorted(outcomes) == ["4429"] * 3 + ["open"] * 4, outcomes

        # Every terminal closed: the backend forgets their shells once they are reaped.
        wait_until(lambda: not run.shells, TIMEOUT, "every closed terminal's shell forgotten",
                   interval=0.05, describe=lambda: f"still tracked: {sorted(run.shells)}")

        # A stranger holding no tie to the container is never signalled by the stop.
        stranger = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
        )
        try:
            with hive.api() as api:
                assert api.post("/api/agents/alice/stop").status_code == 200
            assert _alive(stranger.pid) and stranger.poll() is None
        finally:
            stranger.send_signal(signal.SIGKILL)
            stranger.wait()


def test_release_shell_forgets_and_reaps(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        backend = hive.daemon.backend
        pid, fd = backend.pty_shell("alice")
        os.close(fd)
        run = backend._slot("alice").running
        assert pid in run.shells
        os.kill(pid, signal.SIGKILL)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        backend.release_shell("alice", pid)
        assert pid not in run.shells
        try:
            os.waitpid(pid, os.WNOHANG)
            raise AssertionError("the shell was not reaped")
        except ChildProcessError:
            pass


def test_the_shipped_scrape_config_sends_a_bearer_token_from_a_file() -> None:
    import yaml

    root = Path(__file__).resolve().parent.parent / "deploy"
    config = yaml.safe_load((root / "prometheus" / "hive-scrape.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].startswith("/")
    assert "credentials_file" in (root / "README.md").read_text()
