"""The web thread: several uvicorn sites in one loop, added and removed while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import ConnectionClosed

from hive_actors.errors import Conflict, HiveError, NotFound, StartFailure
from hive_actors.httpd import SiteOptions, WebServer
from hive_actors.httpd.ports import is_port_free
from tests.support.timeout import TIMEOUT
from tests.support.web import http_client, ws_connect


def hello_app(label: str) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello from {label}")

    async def post(request: Request) -> JSONResponse:
        form = await request.form()
        return JSONResponse({"model": form.get("model")})

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(text)

    return Starlette(
        routes=[
            Route("/", hello),
            Route("/api/model", post, methods=["POST"]),
            WebSocketRoute("/echo", echo),
        ]
    )


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer(name="test-web")
    server.start(timeout=TIMEOUT)
    try:
        yield server
    finally:
        server.stop(timeout=TIMEOUT)
        assert not server.running


def web_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "test-web"]


def test_sites_share_one_loop_and_come_and_go(web: WebServer) -> None:
    dash = web.add_site("dashboard", "127.0.0.1", 0, hello_app("dashboard"), timeout=TIMEOUT)
    alice = web.add_site("alice", "127.0.0.1", 0, hello_app("alice"), timeout=TIMEOUT)
    assert dash != alice and dash > 0 and alice > 0
    assert set(web.sites()) == {"dashboard", "alice"}
    assert web.sites()["alice"].port == alice
    assert len(web_threads()) == 1
    with http_client(dash) as c:
        assert c.get("/").text == "hello from dashboard"
        # Form-encoded POST, as the agent page's /model command sends it.
        assert c.post("/api/model", data={"model": "opus"}).json() == {"model": "opus"}
    with http_client(alice) as c:
        assert c.get("/").text == "hello from alice"

    web.remove_site("alice", timeout=TIMEOUT)
    assert set(web.sites()) == {"dashboard"}
    assert is_port_free(alice)  # the port is released at once
    with http_client(alice) as c, pytest.raises(httpx.ConnectError):
        c.get("/")
    with http_client(dash) as c:  # the other site did not notice
        assert c.get("/").text == "hello from dashboard"
    # The freed port can be served again right away (TIME_WAIT leftovers and all).
    again = web.add_site("alice", "127.0.0.1", alice, hello_app("alice 2"), timeout=TIMEOUT)
    assert again == alice
    with http_client(alice) as c:
        assert c.get("/").text == "hello from alice 2"


def test_names_are_unique_and_known(web: WebServer) -> None:
    web.add_site("a", "127.0.0.1", 0, hello_app("a"), timeout=TIMEOUT)
    with pytest.raises(Conflict, match="'a'"):
        web.add_site("a", "127.0.0.1", 0, hello_app("a"), timeout=TIMEOUT)
    with pytest.raises(NotFound, match="'b'"):
        web.remove_site("b", timeout=TIMEOUT)


def test_a_held_port_fails_with_the_fix_and_frees_the_name(web: WebServer) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    options = SiteOptions(bind_attempts=2, bind_first_delay=0.01, bind_fix="set [web] port")
    try:
        with pytest.raises(HiveError, match=f"port {port} is held by another live process"):
            web.add_site("dashboard", "127.0.0.1", port, hello_app("x"), options=options)
    finally:
        holder.close()
    assert web.sites() == {}
    assert web.add_site("dashboard", "127.0.0.1", port, hello_app("x"), options=options) == port


def test_a_failing_lifespan_is_a_start_failure_not_an_exit(web: WebServer) -> None:
    @contextlib.asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("cannot open the thing")
        yield

    app = Starlette(lifespan=broken)
    with pytest.raises(StartFailure, match="failed to start"):
        web.add_site("broken", "127.0.0.1", 0, app, options=SiteOptions(lifespan="on"))
    assert web.sites() == {}
    port = web.add_site("fine", "127.0.0.1", 0, hello_app("fine"), timeout=TIMEOUT)
    with http_client(port) as c:
        assert c.get("/").status_code == 200


def test_calls_outside_the_running_state_are_refused() -> None:
    server = WebServer(name="test-web")
    with pytest.raises(HiveError, match="call start"):
        server.add_site("a", "127.0.0.1", 0, hello_app("a"))
    server.start(timeout=TIMEOUT)
    with pytest.raises(HiveError, match="already started"):
        server.start(timeout=TIMEOUT)
    server.stop(timeout=TIMEOUT)
    server.stop(timeout=TIMEOUT)  # idempotent
    with pytest.raises(HiveError, match="stopped"):
        server.add_site("a", "127.0.0.1", 0, hello_app("a"))
    assert web_threads() == []


def test_stop_closes_open_websockets_and_joins_the_thread() -> None:
    server = WebServer(name="test-web")
    server.start(timeout=TIMEOUT)
    port = server.add_site("dash", "127.0.0.1", 0, hello_app("dash"), timeout=TIMEOUT)
    connected = threading.Event()
    outcome: list[object] = []

    async def client() -> None:
        async with ws_connect(port, "/echo") as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
            connected.set()
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            except ConnectionClosed as exc:
                outcome.append(exc.rcvd.code if exc.rcvd else None)

    thread = threading.Thread(target=asyncio.run, args=(client(),))
    thread.start()
    try:
        assert connected.wait(TIMEOUT)
        server.stop(timeout=TIMEOUT)
    finally:
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert outcome == [1001]  # "going away": the browser reconnects (on any close)
    assert web_threads() == []
    assert is_port_free(port)


def test_stop_ends_event_streams_instead_of_cancelling_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An event stream runs until its client leaves: at the stop it is told its client left,
    its response is ended properly, and nothing is cancelled or logged as an error."""
    streaming = threading.Event()

    async def events(request: Request) -> StreamingResponse:
        async def forever() -> AsyncIterator[bytes]:
            yield b"data: hello\n\n"
            await asyncio.Event().wait()  # only a disconnect ends it
            yield b"never"

        return StreamingResponse(forever(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/events", events)])
    server = WebServer(name="test-web")
    server.start(timeout=TIMEOUT)
    port = server.add_site("sse", "127.0.0.1", 0, app, timeout=TIMEOUT)
    chunks: list[bytes] = []
    failures: list[BaseException] = []

    def client() -> None:
        try:
            with http_client(port) as c, c.stream("GET", "/events") as response:
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    streaming.set()
        except httpx.HTTPError as exc:  # an unfinished response: httpx raises
            failures.append(exc)
            streaming.set()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert streaming.wait(TIMEOUT)
        started = time.monotonic()
        with caplog.at_level(logging.INFO):
            server.stop(timeout=TIMEOUT)
        took = time.monotonic() - started
    finally:
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert failures == []  # the stream ended with its last chunk, not a dropped connection
    assert b"".join(chunks) == b"data: hello\n\n"
    assert took < SiteOptions().graceful_timeout  # never waited out the graceful timeout
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []


def test_restart_on_the_same_port_after_serving_traffic() -> None:
    first = WebServer(name="test-web")
    first.start(timeout=TIMEOUT)
    port = first.add_site("dash", "127.0.0.1", 0, hello_app("one"), timeout=TIMEOUT)
    with http_client(port) as c:
        for _ in range(5):
            assert c.get("/").status_code == 200
    first.stop(timeout=TIMEOUT)

    second = WebServer(name="test-web")
    second.start(timeout=TIMEOUT)
    try:
        options = SiteOptions(bind_attempts=1)  # no retry needed: REUSEADDR covers TIME_WAIT
        assert second.add_site("dash", "127.0.0.1", port, hello_app("two"), options=options) == port
        with http_client(port) as c:
            assert c.get("/").text == "hello from two"
    finally:
        second.stop(timeout=TIMEOUT)


def test_calls_from_many_threads_at_once(web: WebServer) -> None:
    barrier = threading.Barrier(6, timeout=TIMEOUT)
    ports: dict[str, int] = {}
    lock = threading.Lock()

    def add(name: str) -> None:
        barrier.wait()
        port = web.add_site(name, "127.0.0.1", 0, hello_app(name), timeout=TIMEOUT)
        with lock:
            ports[name] = port

    threads = [threading.Thread(target=add, args=(f"s{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(set(ports.values())) == 6
    for name, port in ports.items():
        with http_client(port) as c:
            assert c.get("/").text == f"hello from {name}"
