"""The HTTP and websocket edge under abuse (issue 17, item 6), on real servers on 127.0.0.1 with
raw sockets: header-read timeout, the connection limit, accept errors at a low file limit,
oversized and malformed websocket handshakes, and log lines nobody can forge or read a secret
from."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from hive_actors.httpd import SecurityMiddleware, SecurityPolicy, WebServer
from hive_actors.httpd.edge import ACCEPT_ERROR_MESSAGE, AcceptErrorLog, EdgeState, safe
from hive_actors.httpd.middleware import CONTENT_SECURITY_POLICY
from hive_actors.httpd.server import SiteOptions
from tests.support.daemon import wait_until
from tests.support.timeout import TIMEOUT
from tests.support.web import http_client, raw_request

TOKEN = "T0ken-" + "y" * 40
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def app() -> Starlette:
    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    return Starlette(
        routes=[Route("/", page), Route("/api/state", page), WebSocketRoute("/ws", ws)]
    )


@contextlib.contextmanager
def site(
    options: SiteOptions | None = None, max_connections: int | None = None
) -> Iterator[tuple[WebServer, int]]:
    web = WebServer(name="edge-web", max_connections=max_connections)
    web.start(timeout=TIMEOUT)
    try:
        policy = SecurityPolicy()
        port = web.add_site(
            "s", "127.0.0.1", 0, SecurityMiddleware(app(), policy), options=options, timeout=TIMEOUT
        )
        yield web, port
    finally:
        web.stop(timeout=TIMEOUT)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (bounded by the socket timeout)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def upgrade(path: str = "/ws", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    return data


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- logged values ---------------------------------------------------------------------------


def test_safe_escapes_control_characters_and_redacts_secrets() -> None:
    assert safe("/a\nINFO forged\r\x1b[31m") == "/a\\nINFO forged\\r\\x1b[31m"
    assert safe("/ws?token=abc&x=1") == "/ws?token=[redacted]&x=1"
    assert safe("/ws?a=1&api_key=s3cret") == "/ws?a=1&api_key=[redacted]"
    assert len(safe("x" * 5000)) < 1100


def test_refused_request_with_newline_in_path_logs_one_unforgeable_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with site() as (_, port):
        status, _, _ = raw_request(
            port, "GET", "/%0AERROR%20forged%20line", {"Host": "evil.example"}
        )
        assert status == 421
        assert raw_request(port, "GET", "/")[0] == 200  # alive
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1, refused
    assert "\n" not in refused[0] and "\\nERROR forged line" in refused[0]


def test_pages_carry_a_content_security_policy() -> None:
    with site() as (_, port), http_client(port) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY


# -- timeouts and the connection limit -------------------------------------------------------


def test_half_open_connections_are_closed_after_the_header_timeout() -> None:
    with site(SiteOptions(header_timeout=0.5)) as (_, port):
        with connect(port) as silent, connect(port) as trickle:
            trickle.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            # The server closes both: no wait beyond the timeout. The one that sent part of a
            # request is told why; the silent one (a browser's preconnect) just closed.
            assert read_all(trickle).startswith(b"HTTP/1.1 408 ")
            assert read_all(silent) == b""
        assert raw_request(port, "GET", "/")[0] == 200


def test_keep_alive_continues_after_the_header_timeout_would_have_fired() -> None:
    # The timer restarts per request: a client that asks promptly is never cut.
    with site(SiteOptions(header_timeout=0.5)) as (_, port), connect(port) as sock:
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < 2:  # "ok"
                body += sock.recv(16)


def test_connections_over_the_limit_get_a_prompt_503_and_are_closed() -> None:
    with site(SiteOptions(header_timeout=30), max_connections=4) as (web, port):
        held = [connect(port) for _ in range(4)]
        try:
            wait_until(lambda: len(web.edge.open) == 4, TIMEOUT, "4 connections counted")
            with connect(port) as extra:
                answer = read_all(extra)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"connection: close" in answer.lower()
            assert web.edge.refused == 1
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: not web.edge.open, TIMEOUT, "held connections released")
        assert raw_request(port, "GET", "/")[0] == 200


def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    handler = AcceptErrorLog(EdgeState(10), interval=60.0, clock=lambda: now[0])
    loop = __import__("asyncio").new_event_loop()
    try:
        context = {"message": ACCEPT_ERROR_MESSAGE, "exception": OSError(24, "Too many open files")}
        with caplog.at_level(logging.INFO):
            for _ in range(500):
                handler(loop, context)
            now[0] = 61.0
            handler(loop, context)
    finally:
        loop.close()
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 2
    assert all(r.exc_info is None for r in lines)
    assert "499 earlier failure(s)" in lines[1].getMessage()


# -- websocket handshakes --------------------------------------------------------------------


@pytest.mark.parametrize("size", [10_000, 20_000], ids=["one-long-line", "head-too-large"])
def test_oversized_websocket_handshake_is_answered_431_and_closed(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with site() as (_, port):
        with connect(port) as sock:
            if size < 16_000:
                extra = f"X-Big: {'a' * size}\r\n"
            else:
                extra = "".join(f"X-H{i}: {'a' * 1000}\r\n" for i in range(size // 1000))
            sock.sendall(upgrade(extra=extra))
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert raw_request(port, "GET", "/")[0] == 200
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "431" in refused[0], refused
    assert errors(caplog) == []


def test_refused_websocket_handshake_is_one_info_line_and_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with site() as (_, port):
        with connect(port) as sock:
            sock.sendall(upgrade(extra="Origin: http://evil.example\r\n"))
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
        refused = [
            r.getMessage()
            for r in caplog.records
            if "WebSocket" in r.getMessage() or "refused" in r.getMessage()
        ]
        assert len(refused) == 1 and "403" in refused[0], refused
        with connect(port) as sock:  # not a websocket handshake at all (no key)
            sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n"
            )
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert raw_request(port, "GET", "/")[0] == 200
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2 and "400" in refused[1], refused
    assert errors(caplog) == []
    assert not [r for r in caplog.records if r.exc_info]


def test_token_in_a_websocket_url_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # uvicorn logs the accepted handshake on "uvicorn.error", whose level any uvicorn server
    # started before in this process may have set (its log_level option).
    caplog.set_level(logging.DEBUG, logger="uvicorn.error")
    with site() as (_, port):
        with connect(port) as sock:
            sock.sendall(upgrade(path=f"/ws?token={TOKEN}"))
            assert read_head(sock).startswith(b"HTTP/1.1 101 ")
            sock.sendall(_masked_close())
        with connect(port) as sock:
            sock.sendall(
                upgrade(path=f"/ws?token={TOKEN}", extra="Origin: http://evil.example\r\n")
            )
            assert read_all(sock).startswith(b"HTTP/1.1 403 ")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/ws?token=[redacted]" in logged
    assert TOKEN not in logged


def _masked_close(code: int = 1000) -> bytes:
    payload = code.to_bytes(2, "big")
    mask = b"\x01\x02\x03\x04"
    return (
        bytes([0x88, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


@pytest.mark.parametrize("same_packet", [False, True], ids=["after-101", "with-handshake"])
def test_protocol_violation_after_the_handshake_closes_1002_without_traceback(
    same_packet: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    unmasked_text = b"\x81\x02hi"  # a client frame must be masked (RFC 6455 5.1)
    with site() as (_, port):
        with connect(port) as sock:
            if same_packet:
                sock.sendall(upgrade() + unmasked_text)
                answer = read_all(sock)
            else:
                sock.sendall(upgrade())
                head = read_head(sock)
                assert head.startswith(b"HTTP/1.1 101 ")
                sock.sendall(unmasked_text)
                answer = head + read_all(sock)
        if not same_packet or answer.startswith(b"HTTP/1.1 101 "):
            close = answer.split(b"\r\n\r\n", 1)[1]
            assert close[:1] == b"\x88", answer
            assert int.from_bytes(close[2:4], "big") == 1002, answer
        assert raw_request(port, "GET", "/")[0] == 200
    assert errors(caplog) == []
    assert not [r for r in caplog.records if r.exc_info]


# -- a low file limit ------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import logging, resource, sys, threading
    resource.setrlimit(resource.RLIMIT_NOFILE, (@LIMIT@, @LIMIT@))
    logging.basicConfig(filename=sys.argv[1], level=logging.INFO,
                        format="%(levelname)s %(name)s %(message)s")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from hive_actors.httpd import SecurityMiddleware, SecurityPolicy, WebServer
    from hive_actors.httpd.server import SiteOptions

    async def state(request):
        return PlainTextResponse("ok")

    web = WebServer(name="lowfd", max_connections=@MAXCONN@)
    web.start(timeout=10)
    app = SecurityMiddleware(Starlette(routes=[Route("/api/state", state)]), SecurityPolicy())
    port = web.add_site("s", "127.0.0.1", 0, app, options=SiteOptions(header_timeout=@HEADER_TIMEOUT@))
    print(port, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    web.stop(timeout=10)
    """
)


@contextlib.contextmanager
def low_fd_server(
    tmp_path: Path, limit: int, max_connections: int, header_timeout: float
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    log_file = tmp_path / "web.log"
    code = (
        _CHILD.replace("@MAXCONN@", str(max_connections))
        .replace("@LIMIT@", str(limit))
        .replace("@HEADER_TIMEOUT@", str(header_timeout))
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(log_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield child, port, log_file
    finally:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()
        try:
            child.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(TIMEOUT)


def _api_ok(port: int) -> bool:
    try:
        with connect(port) as sock:
            sock.settimeout(2.0)
            sock.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return read_head(sock).startswith(b"HTTP/1.1 200 ")
    except (OSError, AssertionError):
        return False


def _open_half_open(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def test_half_open_connections_beyond_the_file_limit_with_the_default_cap(
    tmp_path: Path,
) -> None:
    # 300 silent connections against a file limit of 256 (default cap: 128): the excess is
    # refused with a prompt 503, accept() never runs out of descriptors, the API answers once
    # the silent ones time out, and the log stays a few lines.
    with low_fd_server(tmp_path, 256, 0, 5.0) as (child, port, log_file):
        socks = _open_half_open(port, 300)
        try:
            # Every one is closed: the excess with a 503, the others when their header
            # timeout ends (silently: they sent nothing). How many are refused depends on the
            # kernel: a connect() that found the accept queue full retries its SYN seconds
            # later, and may then take a slot a timed-out one freed.
            answers = [read_all(sock) for sock in socks]
            refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
            assert refused, "no connection over the cap was refused"
            assert all(a == b"" for a in answers if not a.startswith(b"HTTP/1.1 503 "))
            wait_until(lambda: _api_ok(port), TIMEOUT, "the API answering")
        finally:
            for sock in socks:
                sock.close()
        assert child.poll() is None
        text = log_file.read_text()
    assert ACCEPT_ERROR_MESSAGE not in text
    assert "Traceback" not in text
    assert len(text.splitlines()) < 20, text[:3000]


def test_half_open_connections_exhausting_the_file_limit_log_once(tmp_path: Path) -> None:
    # A cap above the file limit: accept() fails with EMFILE. The failures are logged once,
    # without a traceback, and the oldest silent connections are shed so the API answers.
    with low_fd_server(tmp_path, 256, 100_000, 30.0) as (child, port, log_file):
        socks = _open_half_open(port, 400)
        try:
            wait_until(lambda: _api_ok(port), TIMEOUT, "the API answering")
            wait_until(lambda: "cannot accept" in log_file.read_text(), TIMEOUT, "accept error")
        finally:
            for sock in socks:
                sock.close()
        assert child.poll() is None
        text = log_file.read_text()
    assert text.count("cannot accept connections") == 1, text[:3000]
    assert ACCEPT_ERROR_MESSAGE not in text
    assert "Traceback" not in text
    assert len(text.splitlines()) < 20, text[:3000]
