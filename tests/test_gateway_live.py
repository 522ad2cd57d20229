"""The live websockets of a running hive with the real ``websockets`` client: the dashboard's
and an agent's ``/ws`` (snapshot, live events, resume without gap or duplicate, junk), the
agent's terminal ``/ws/pty``, and a crash with its restart seen live."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hive_actors.gateway.pty import PtyEndpoint
from hive_actors.httpd import SecurityMiddleware, SecurityPolicy, WebServer
from hive_actors.store import AgentState, Role
from tests.support.gateway import (
    Hive,
    agent_port,
    gateway_hive,
    state_of,
    wait_state,
)
from tests.support.timeout import TIMEOUT
from tests.support.web import exited, recv_json, ws_connect, ws_read_until


async def events_until(
    sock: ClientConnection, done: Any, seen: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every event message up to and including the first one ``done`` accepts."""
    out = [] if seen is None else seen
    while True:
        message = await recv_json(sock)
        assert message["type"] in ("event", "resync", "pong"), message
        if message["type"] != "event":
            continue
        out.append(message["event"])
        if done(message["event"]):
            return out


def ended(agent: str) -> Any:
    return lambda e: e["kind"] == "turn.ended" and e["agent"] == agent


def post_message(hive: Hive, agent: str, text: str) -> None:
    with hive.api() as api:
        response = api.post("/api/message", data={"agent": agent, "text": text})
        assert response.status_code == 200, response.text


def test_snapshot_live_events_and_a_resume_without_gap_or_duplicate(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:

        async def first_visit() -> int:
            async with ws_connect(hive.port, token=hive.token) as sock:
                hello = await recv_json(sock)
                assert hello["type"] == "snapshot"
                snap = hello["snapshot"]
                assert {a["name"] for a in snap["agents"]} == {"boss", "alice"}
                assert snap["counts"]["agents"] == 2 and snap["recent"]
                start = hello["last_event_id"]
                await asyncio.to_thread(post_message, hive, "alice", "first")
                seen = await events_until(sock, ended("alice"))
                # Every committed event, in order, none twice; rows travel with them.
                assert [e["id"] for e in seen] == list(range(start + 1, seen[-1]["id"] + 1))
                assert seen[-1]["view"]["agent"]["turns"] == 1
                return int(seen[-1]["id"])

        last = asyncio.run(first_visit())
        # While nobody listens, more happens.
        post_message(hive, "alice", "second")
        hive.wait_for(lambda e: e.kind == "turn.ended" and e.agent == "alice", after=last)
        with hive.api() as api:
            missed = [e["id"] for e in api.get(
                "/api/events", params={"since": last, "limit": 1000}).json()["events"]]

        async def come_back() -> list[dict[str, Any]]:
            async with ws_connect(hive.port, f"/ws?since={last}", token=hive.token) as sock:
                return await events_until(sock, ended("alice"))

        resumed = asyncio.run(come_back())
        ids = [e["id"] for e in resumed]
        assert ids == list(range(last + 1, ids[-1] + 1)) and ids == missed[: len(ids)]
        assert resumed[-1]["view"]["agent"]["turns"] == 2


def test_an_agent_page_streams_its_own_events_only(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")

        async def watch() -> list[dict[str, Any]]:
            async with ws_connect(port, token=hive.token) as sock:
                hello = await recv_json(sock)
                assert hello["type"] == "snapshot"
                assert hello["snapshot"]["agent"]["name"] == "alice"
                assert {e["agent"] for e in hello["snapshot"]["log"]} == {"alice"}
                await asyncio.to_thread(post_message, hive, "boss", "to the boss")
                await asyncio.to_thread(post_message, hive, "alice", "to alice")
                return await events_until(sock, ended("alice"))

        seen = asyncio.run(watch())
        assert {e["agent"] for e in seen} == {"alice"}
        assert any(e["kind"] == "turn.log" for e in seen)
        assert seen == sorted(seen, key=lambda e: e["id"])
        assert seen[-1]["view"]["agent"]["last_turn"]["outcome"] == "ok"

        # The page comes back after a while away: it resumes from its last event, across the
        # gaps other agents' events leave in its stream, without a fresh snapshot.
        last = seen[-1]["id"]
        post_message(hive, "boss", "meanwhile, to the boss")
        post_message(hive, "alice", "meanwhile, to alice")

        async def come_back() -> list[dict[str, Any]]:
            async with ws_connect(port, f"/ws?since={last}", token=hive.token) as sock:
                first = await recv_json(sock)
                assert first["type"] == "event", first
                return await events_until(sock, ended("alice"), [first["event"]])

        resumed = asyncio.run(come_back())
        assert {e["agent"] for e in resumed} == {"alice"}
        with hive.api() as api:
            logged = [e["id"] for e in api.get(
                "/api/events", params={"since": last, "limit": 1000}).json()["events"]
                if e["agent"] == "alice"]
        ids = [e["id"] for e in resumed]
        assert ids == logged[: len(ids)]  # every one of alice's events since, in order


def test_junk_on_a_websocket_closes_only_that_client(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:

        async def closed_by(payload: str | bytes, path: str = "/ws") -> tuple[int, str]:
            async with ws_connect(hive.port, path, token=hive.token) as sock:
                if path == "/ws":
                    assert (await recv_json(sock))["type"] == "snapshot"
                try:
                    if payload:
                        await sock.send(payload)
                    while True:  # whatever was on its way, then the close
                        await asyncio.wait_for(sock.recv(), TIMEOUT)
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    return exc.rcvd.code, exc.rcvd.reason

        async def run() -> None:
            async with ws_connect(hive.port, token=hive.token) as bystander:
                assert (await recv_json(bystander))["type"] == "snapshot"
                assert (await closed_by(b"\x00\x01"))[0] == 1003
                assert (await closed_by("not json"))[0] == 1003
                code, reason = await closed_by(json.dumps({"type": "hack"}))
                assert code == 1008 and "unknown message type" in reason
                assert (await closed_by("x" * 20_000))[0] == 1009
                assert (await closed_by("", "/ws?since=-3"))[0] == 1008
                # The bystander still gets answers and live events.
                await bystander.send(json.dumps({"type": "ping"}))
                assert (await recv_json(bystander))["type"] == "pong"
                await asyncio.to_thread(post_message, hive, "alice", "still here?")
                await events_until(bystander, ended("alice"))
            try:
                async with ws_connect(hive.port, additional_headers={"origin": "http://evil.example"}):
                    raise AssertionError("a cross-origin websocket was accepted")
            except InvalidStatus as exc:
                assert exc.response.status_code == 403

        asyncio.run(run())


def test_the_terminal_round_trip_resize_junk_and_hang_up(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        state_dir = hive.daemon.hive.agent_paths("alice").state

        async def session() -> int:
            async with ws_connect(port, "/ws/pty", token=hive.token) as sock:
                await sock.send(json.dumps({"type": "resize", "cols": 101, "rows": 33}))
                await sock.send(b"echo pid=$$ at $(pwd); stty size\n")
                out = await ws_read_until(sock, b"33 101")
                assert f"at {state_dir}".encode() in out
                pid = int(out.split(b"pid=")[-1].split(b" ")[0])
                await sock.send(json.dumps({"type": "input", "data": "echo über\n"}))
                await ws_read_until(sock, "über".encode())
                await sock.send(json.dumps({"type": "ping"}))
                reply = await asyncio.wait_for(sock.recv(), TIMEOUT)
                while isinstance(reply, bytes):  # the shell's prompt may still come first
                    reply = await asyncio.wait_for(sock.recv(), TIMEOUT)
                assert json.loads(reply) == {"type": "pong"}
                return pid

        pid = asyncio.run(session())
        # Closing the terminal hangs the shell up.
        assert exited(pid, TIMEOUT), f"shell {pid} outlived its terminal"

        async def refused(payload: str | None) -> tuple[int, str]:
            async with ws_connect(port, "/ws/pty", token=hive.token) as sock:
                try:
                    if payload is not None:
                        await sock.send(payload)
                    while True:
                        await asyncio.wait_for(sock.recv(), TIMEOUT)
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    return exc.rcvd.code, exc.rcvd.reason

        assert asyncio.run(refused("ls"))[0] == 1003
        assert asyncio.run(refused(json.dumps({"type": "resize", "cols": 0, "rows": 9})))[0] == 1008
        assert asyncio.run(refused(json.dumps({"type": "exec"})))[0] == 1008

        # A stopped agent has no shell to give.
        with hive.api() as api:
            assert api.post("/api/agents/alice/stop").status_code == 200
        code, reason = asyncio.run(refused(None))
        assert code == 4409 and "not running" in reason


def test_the_terminal_is_refused_on_a_non_loopback_bind_without_a_token() -> None:
    opened: list[bool] = []

    def open_shell() -> tuple[int, int]:
        opened.append(True)
        raise AssertionError("no shell may be opened")

    pty = PtyEndpoint("alice", open_shell, host="0.0.0.0", policy=SecurityPolicy())
    app = SecurityMiddleware(Starlette(routes=[WebSocketRoute("/ws/pty", pty)]), SecurityPolicy())
    web = WebServer(name="test-pty")
    web.start(timeout=TIMEOUT)
    try:
        port = web.add_site("pty", "127.0.0.1", 0, app, timeout=TIMEOUT)

        async def connect() -> int:
            try:
                async with ws_connect(port, "/ws/pty"):
                    return 101
            except InvalidStatus as exc:
                assert b"non-loopback" in exc.response.body
                return exc.response.status_code

        assert asyncio.run(connect()) == 403
        assert opened == []
    finally:
        web.stop(timeout=TIMEOUT)


def test_a_crash_and_its_restart_appear_live(tmp_path: Path) -> None:
    with gateway_hive(
        tmp_path, {"alice": Role.AGENT}, backoff_min=0.05, backoff_max=0.2, backoff_jitter=0.0
    ) as hive:
        port = agent_port(hive, "alice")

        def idle(e: dict[str, Any]) -> bool:
            return bool(e["kind"] == "agent.state" and e["payload"]["to"] == "idle")

        async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with ws_connect(hive.port, token=hive.token) as dashboard, ws_connect(port, token=hive.token) as page:
                assert (await recv_json(dashboard))["type"] == "snapshot"
                assert (await recv_json(page))["type"] == "snapshot"
                keeper = hive.daemon.backend.status("alice").pid
                assert keeper is not None
                os.kill(keeper, signal.SIGKILL)
                return await events_until(dashboard, idle), await events_until(page, idle)

        seen, on_page = asyncio.run(both())
        kinds = [e["kind"] for e in seen if e["agent"] == "alice"]
        assert "agent.restarting" in kinds and "agent.spawned" in kinds
        restarting = next(e for e in seen if e["kind"] == "agent.restarting")
        assert restarting["view"]["agent"]["restarts"] == 1
        assert seen[-1]["view"]["agent"]["state"] == "idle"
        assert [e["id"] for e in on_page if e["kind"] == "agent.restarting"] == [restarting["id"]]
        wait_state(hive, "alice", AgentState.IDLE)
        assert state_of(hive, "alice")["restarts"] == 1


def scrape(hive: Hive) -> dict[str, float]:
    """``/metrics`` of the hive's dashboard: ``name{labels}`` → value, for the web families."""
    with hive.api() as api:
        text = api.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith("hive_web_"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def test_the_websocket_clients_and_their_events_are_in_the_metrics(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"boss": Role.MANAGER, "alice": Role.AGENT}) as hive:
        port = agent_port(hive, "alice")
        before = scrape(hive)
        assert before['hive_web_clients{page="dashboard"}'] == 0
        assert before['hive_web_clients{page="agent"}'] == 0

        async def watch() -> dict[str, float]:
            async with ws_connect(hive.port, token=hive.token) as board, ws_connect(port, token=hive.token) as page:
                for sock in (board, page):
                    assert (await recv_json(sock))["type"] == "snapshot"
                await asyncio.to_thread(post_message, hive, "alice", "hello")
                await events_until(board, ended("alice"))
                await events_until(page, ended("alice"))
                return await asyncio.to_thread(scrape, hive)

        during = asyncio.run(watch())
        assert during['hive_web_clients{page="dashboard"}'] == 1
        assert during['hive_web_clients{page="agent"}'] == 1
        for page in ("dashboard", "agent"):
            sent = f'hive_web_events_sent_total{{page="{page}",path="shared"}}'
            # Idle clients on loopback: the live events went out as shared frames.
            assert during[sent] > before[sent], (page, during)
            assert during[f'hive_web_resyncs_total{{page="{page}"}}'] == 0
        after = scrape(hive)
        for key, value in during.items():
            if key.startswith(("hive_web_events_sent_total", "hive_web_resyncs_total")):
                assert after[key] >= value, key  # counters never go back
