"""The security middleware on a real server, with real HTTP and websocket clients."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus

from hive_actors.httpd import SecurityMiddleware, SecurityPolicy
from tests.support.timeout import TIMEOUT
from tests.support.web import http_client, serving, ws_connect

TOKEN = "T0ken-" + "x" * 40
LIMIT = 64 * 1024


def app() -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"length": len(body), "head": body[:16].decode("latin-1")})

    async def state(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("<html>dashboard</html>")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("welcome")
        await websocket.close()

    return Starlette(
        routes=[
            Route("/api/echo", echo, methods=["POST"]),
            Route("/api/state", state),
            Route("/", page),
            WebSocketRoute("/ws", ws),
        ]
    )


@pytest.fixture
def open_site() -> Iterator[int]:
    """Loopback, no token."""
    policy = SecurityPolicy(max_body=LIMIT, drain_limit=4 * LIMIT)
    with serving(SecurityMiddleware(app(), policy)) as (_, port):
        yield port


@pytest.fixture
def token_site() -> Iterator[int]:
    """As on a non-loopback bind: the operator token guards /api and websockets."""
    policy = SecurityPolicy(token=TOKEN, max_body=LIMIT)
    with serving(SecurityMiddleware(app(), policy)) as (_, port):
        yield port


def test_same_origin_and_originless_writes_pass_cross_origin_ones_do_not(open_site: int) -> None:
    port = open_site
    with http_client(port) as c:
        ok = c.post("/api/echo", content=b"hi", headers={"origin": f"http://127.0.0.1:{port}"})
        assert ok.status_code == 200 and ok.json()["length"] == 2
        assert c.post("/api/echo", content=b"hi").status_code == 200  # curl, the CLI
        refused = c.post("/api/echo", content=b"hi", headers={"origin": "http://evil.example"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/json"
        assert "cross-origin POST" in refused.json()["error"]
        # Security headers ride on every response, refusals included.
        for response in (ok, refused):
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "same-origin"
            assert response.headers["x-content-type-options"] == "nosniff"


def test_dns_rebinding_host_is_refused(open_site: int) -> None:
    with http_client(open_site) as c:
        refused = c.get("/api/state", headers={"host": f"evil.example:{open_site}"})
        assert refused.status_code == 421
        assert "evil.example" in refused.json()["error"]
        assert c.get("/api/state", headers={"host": f"localhost:{open_site}"}).status_code == 200


def test_body_limit_with_content_length(open_site: int) -> None:
    with http_client(open_site) as c:
        exact = c.post("/api/echo", content=b"a" * LIMIT)
        assert exact.status_code == 200 and exact.json()["length"] == LIMIT
        over = c.post("/api/echo", content=b"a" * (LIMIT + 1))
        assert over.status_code == 413
        assert over.json()["error"].startswith(f"request body larger than the {LIMIT}-byte limit")
        assert over.headers["connection"] == "close"


def test_body_limit_holds_for_chunked_bodies(open_site: int) -> None:
    def chunks(total: int) -> Iterator[bytes]:
        sent = 0
        while sent < total:
            piece = min(8192, total - sent)
            sent += piece
            yield b"c" * piece

    with http_client(open_site) as c:
        small = c.post("/api/echo", content=chunks(LIMIT - 10))
        assert small.status_code == 200
        assert small.json() == {"length": LIMIT - 10, "head": "c" * 16}
        big = c.post("/api/echo", content=chunks(2 * LIMIT))
        assert big.status_code == 413
        assert "larger than" in big.json()["error"]


def test_chunked_body_past_the_drain_limit_is_cut_off(open_site: int) -> None:
    """A client streaming without end gets a 413 and a closed connection, not a hung server."""
    with socket.create_connection(("127.0.0.1", open_site), timeout=TIMEOUT) as s:
        s.sendall(
            b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (16384, b"z" * 16384)
        received = b""
        try:
            for _ in range(4 * LIMIT // 16384 + 8):  # past drain_limit
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while b"\r\n\r\n" not in received:
                data = s.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            pass
    # The server stopped reading past drain_limit, answered 413 and closed (our unsent
    # chunks may have earned a reset, but the answer was queued before it).
    assert received.startswith(b"HTTP/1.1 413"), received[:100]


def test_token_guards_the_api_not_the_pages(token_site: int) -> None:
    port = token_site
    with http_client(port) as c:
        assert c.get("/").status_code == 200
        missing = c.get("/api/state")
        assert missing.status_code == 401
        assert "Bearer" in missing.headers["www-authenticate"]
        assert "/login" in missing.json()["error"]
        assert c.get("/api/state", headers={"authorization": "Bearer nope"}).status_code == 401
        ok = c.get("/api/state", headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json() == {"ok": True}


def test_login_sets_a_strict_cookie_that_opens_the_api(token_site: int) -> None:
    with http_client(token_site) as c:
        wrong = c.get("/login", params={"token": "y" * 46})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        login = c.get("/login", params={"token": TOKEN})
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert login.headers["cache-control"] == "no-store"
        # httpx keeps the cookie, as a browser would.
        assert c.get("/api/state").status_code == 200
        assert c.put("/login", data={"token": TOKEN}).status_code == 405


def test_the_login_form_takes_the_pasted_token(token_site: int) -> None:
    with http_client(token_site) as c:
        form = c.get("/login")
        assert form.status_code == 200 and form.headers["content-type"].startswith("text/html")
        assert '<form method="post" action="/login">' in form.text and 'name="token"' in form.text
        assert "hive token" in form.text
        wrong = c.post("/login", data={"token": "y" * 46})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert "That is not this hive" in wrong.text
        assert c.get("/api/state").status_code == 401
        login = c.post("/login", data={"token": TOKEN})
        assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
        assert c.get("/api/state").status_code == 200
        # A cross-site form post (a page elsewhere logging this browser in) is refused.
        c.cookies.clear()
        forged = c.post("/login", data={"token": TOKEN}, headers={"origin": "http://evil.example"})
        assert forged.status_code == 403 and "set-cookie" not in forged.headers


def test_a_one_time_login_code_opens_one_session() -> None:
    policy = SecurityPolicy(token=TOKEN)
    code = policy.logins.mint()
    with serving(SecurityMiddleware(app(), policy)) as (_, port):
        with http_client(port) as first:
            login = first.get("/login", params={"code": code})
            assert login.status_code == 303 and login.headers["location"] == "/"
            assert first.get("/api/state").status_code == 200
        with http_client(port) as second:  # the same link again: spent
            again = second.get("/login", params={"code": code})
            assert again.status_code == 401 and "set-cookie" not in again.headers
            assert "already used" in again.text
            assert second.get("/api/state").status_code == 401


def ws_outcome(port: int, **kwargs: Any) -> tuple[str, int, Any]:
    """("open", 101, first message) or ("refused", status, JSON body)."""

    async def run() -> tuple[str, int, Any]:
        try:
            async with ws_connect(port, "/ws", **kwargs) as ws:
                return "open", 101, await asyncio.wait_for(ws.recv(), TIMEOUT)
        except InvalidStatus as exc:
            body = json.loads(exc.response.body or b"{}")
            return "refused", exc.response.status_code, body

    return asyncio.run(run())


def test_websocket_origin_is_checked(open_site: int) -> None:
    port = open_site
    assert ws_outcome(port) == ("open", 101, "welcome")
    assert ws_outcome(port, origin=f"http://127.0.0.1:{port}") == ("open", 101, "welcome")
    kind, status, body = ws_outcome(port, origin="http://evil.example")
    assert (kind, status) == ("refused", 403)
    assert "cross-origin websocket" in body["error"]


def test_websocket_needs_the_token(token_site: int) -> None:
    kind, status, body = ws_outcome(token_site)
    assert (kind, status) == ("refused", 401)
    assert "token" in body["error"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert ws_outcome(token_site, additional_headers=headers) == ("open", 101, "welcome")
    cookie = {"Cookie": f"hive_token={TOKEN}"}
    assert ws_outcome(token_site, additional_headers=cookie) == ("open", 101, "welcome")
