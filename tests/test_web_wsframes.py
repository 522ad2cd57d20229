"""Shared websocket frames on a real uvicorn site, read by the real ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from hive_actors.httpd.server import SiteOptions
from hive_actors.httpd.wsframes import FRAMES_EXTENSION, FrameWriter, text_frame
from tests.support.timeout import TIMEOUT
from tests.support.web import serving, ws_connect

Scope = dict[str, Any]


def frame_app(texts: list[str], report: dict[str, Any]) -> Any:
    """An ASGI websocket app: writes ``texts`` as shared frames, then one message via ASGI."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        writer: FrameWriter | None = scope["extensions"].get(FRAMES_EXTENSION)
        report["writer"] = writer is not None
        if writer is not None:
            report["written"] = [writer.write(text_frame(t)) for t in texts]
        await send({"type": "websocket.send", "text": "via asgi"})
        message = await receive()
        report["end"] = message["type"]
        if writer is not None:
            report["after_close"] = writer.write(text_frame("too late"))

    return app


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 300_000])
def test_shared_frames_arrive_intact_and_in_order_with_asgi_sends(size: int) -> None:
    # 125 / 126 / 65536: the three length encodings of a frame header.
    texts = ["é" * (size // 2) + "x" * (size % 2), "second", "{}"]
    report: dict[str, Any] = {}
    with serving(frame_app(texts, report)) as (_, port):

        async def client() -> list[str]:
            async with ws_connect(port, "/", max_size=None) as ws:
                got = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(4)]
            return [g if isinstance(g, str) else g.decode() for g in got]

        assert asyncio.run(client()) == [*texts, "via asgi"]
    assert report["writer"] and report["written"] == [True, True, True]


def test_a_deflate_connection_is_offered_no_shared_frames() -> None:
    report: dict[str, Any] = {}
    options = SiteOptions(ws_per_message_deflate=True)
    with serving(frame_app(["x"], report), options=options) as (_, port):

        async def client() -> str:
            async with ws_connect(port, "/", compression="deflate") as ws:
                got = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert isinstance(got, str)
            return got

        assert asyncio.run(client()) == "via asgi"
    assert report == {"writer": False, "end": "websocket.disconnect"}


def test_the_writer_refuses_after_the_peer_left() -> None:
    report: dict[str, Any] = {}
    with serving(frame_app([], report)) as (_, port):

        async def client() -> None:
            async with ws_connect(port, "/") as ws:
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "via asgi"

        asyncio.run(client())
        # The app's last receive returns the disconnect; the writer then refuses, so a caller
        # falls back to ASGI send, which raises for a closed connection.
    assert report["end"] == "websocket.disconnect"
    assert report["after_close"] is False


def test_the_writer_refuses_while_the_transport_is_paused_then_everything_arrives() -> None:
    """A client that does not read: the writer says no once the buffer passes the high-water
    mark (the caller queues instead), and nothing written before is lost or torn."""
    chunk = json.dumps({"pad": "y" * 60_000})
    accepted: list[bool] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        writer: FrameWriter = scope["extensions"][FRAMES_EXTENSION]
        frame = text_frame(chunk)
        # Bounded: a 4 KiB receive buffer and 64 KiB high-water mark stop this within a few.
        for _ in range(200):
            ok = writer.write(frame)
            accepted.append(ok)
            if not ok:
                break
        await send({"type": "websocket.send", "text": "end"})  # waits for the drain
        await receive()

    with serving(app) as (_, port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)

        async def client() -> list[str]:
            async with ws_connect(port, "/", sock=sock, max_size=None, max_queue=1) as ws:
                got: list[str] = []
                while True:
                    try:
                        message = await asyncio.wait_for(ws.recv(), TIMEOUT)
                    except ConnectionClosed:
                        return got
                    assert isinstance(message, str)
                    got.append(message)
                    if message == "end":
                        return got

        received = asyncio.run(client())
    assert accepted[-1] is False, "the writer never saw the paused transport"
    written = accepted.count(True)
    assert written >= 1
    assert received == [chunk] * written + ["end"]
