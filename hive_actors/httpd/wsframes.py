"""Frame-once broadcast: one encoded websocket frame written to many connections.

uvicorn's ASGI interface sends one message per connection: ``await send({"type":
"websocket.send", "text": ...})`` encodes the text, builds a frame and writes it, for every
client, every event, each in its own task. With hundreds of dashboards open that is the whole
cost of the fan-out. A server frame is not masked (RFC 6455 §5.1), so the bytes of a text frame
are the same for every connection that negotiated no extension: :func:`text_frame` builds them
once, and each connection's :class:`FrameWriter` hands them to its transport — the same
``transport.write`` the ASGI path ends in, minus the per-client encoding and task switch.

:class:`HiveWebSocketProtocol` is uvicorn's ``websockets-sansio`` protocol with one addition:
the connection's scope carries a :class:`FrameWriter` under ``scope["extensions"]
[FRAMES_EXTENSION]`` when the connection can take shared frames (no per-message deflate). An
app that finds no writer (another server, a compressed connection) sends through ASGI as
usual. The writer refuses (returns False) whenever the ASGI path must be used instead: before
the handshake completed, after a close was sent or the peer left, or while the transport's
buffer is over its high-water mark (uvicorn's ``send`` then waits for it to drain, and so
must the caller: it queues).

When the server stops, :meth:`HiveWebSocketProtocol.shutdown` closes every open websocket with
1001 (going away; uvicorn's own says 1012, service restart) and hands the app a
``websocket.disconnect`` with that code, so a long-lived handler returns rather than being
cancelled; what the app sends after that is refused as for a client that left
(``ClientDisconnected``), never as an error.

Loop thread only, like the protocol itself.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode

from .edge import safe

log = logging.getLogger(__name__)

__all__ = [
    "FRAMES_EXTENSION",
    "GOING_AWAY",
    "FrameWriter",
    "HiveWebSocketProtocol",
    "text_frame",
]

GOING_AWAY = 1001
"""The close code of every websocket open when its site stops (RFC 6455: going away)."""
_GOING_AWAY_REASON = "the hive is stopping"
_GOING_AWAY_WAIT_S = 1.0
"""How long a stopping site waits for a client to answer its close frame before it drops the
connection (below the site's graceful timeout, so the server never cancels the app for it)."""

FRAMES_EXTENSION = "hive.websocket.frames"
"""The scope extension under which a connection offers its :class:`FrameWriter`."""


def text_frame(text: str) -> bytes:
    """The wire bytes of one unmasked, unfragmented text frame carrying ``text``."""
    return Frame(Opcode.TEXT, text.encode("utf-8")).serialize(mask=False, extensions=[])


class FrameWriter:
    """Writes pre-built frames straight to one connection's transport."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def write(self, frame: bytes) -> bool:
        """Write ``frame`` now and return True, or return False and write nothing.

        False means: send this message through ASGI ``send`` (which waits for a full buffer to
        drain, or raises for a closed connection) instead.
        """
        protocol = self._protocol
        if (
            not protocol.handshake_complete
            or protocol.close_sent
            or protocol.disconnected
            or not protocol.writable.is_set()
            or protocol.transport.is_closing()
        ):
            return False
        protocol.transport.write(frame)
        return True


class HiveWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol, offering a :class:`FrameWriter` in the scope and
    closing with 1001 when its server stops."""

    going_away = False
    """True once :meth:`shutdown` sent the going-away close."""

    def shutdown(self) -> None:
        """The server is stopping: close an open websocket with 1001 (going away).

        The close frame goes out at once, the app gets ``websocket.disconnect`` (1001) and
        returns on its own, and the connection ends when the client answers the close (or
        after a second, whichever comes first). A connection not open (handshake pending,
        already closing, gone) is left to uvicorn.
        """
        if (
            self.going_away
            or self.close_sent
            or self.disconnected
            or not self.handshake_complete
            or self.transport.is_closing()
        ):
            super().shutdown()
            return
        self.stop_keepalive()
        try:
            self.conn.send_close(GOING_AWAY, _GOING_AWAY_REASON)
        except InvalidState:  # the client's own close is being answered: nothing to add
            super().shutdown()
            return
        self.going_away = True
        self.close_sent = True
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": GOING_AWAY, "reason": _GOING_AWAY_REASON}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.read_paused:  # the client's close answer must be read
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(_GOING_AWAY_WAIT_S, self.transport.close)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        edge = getattr(self.config, "hive_edge", None)
        if edge is not None:
            edge.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        edge = getattr(self.config, "hive_edge", None)
        if edge is not None:
            edge.open.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.handshake_initiated and not self.close_sent:
            self.conn.receive_data(data)
            if self.conn.handshake_exc is not None:
                # websockets refused the handshake request itself (a header line or the
                # request line too long: 431/414; not HTTP at all: nothing to answer) and
                # queued its answer: send it and close, which uvicorn never does.
                self._refuse_handshake()
                return
            if self.conn.parser_exc is not None:
                self.handle_parser_exception()
                return
            self.handle_events()
            return
        super().data_received(data)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.response.status_code != 101:  # websockets refused it (no key, bad version…)
            log.info(
                "web: refused a websocket handshake from %s: %d %s",
                safe(self.client),
                self.response.status_code,
                safe(self.conn.handshake_exc),
            )

    def _refuse_handshake(self) -> None:
        exc = self.conn.handshake_exc
        output = b"".join(self.conn.data_to_send())
        status = output.split(b" ", 2)[1].decode("ascii", "replace") if output else ""
        log.info(
            "web: refused a websocket handshake from %s: %s%s",
            safe(self.client),
            f"{status} " if status else "",
            safe(exc),
        )
        self.handshake_initiated = True
        self.handshake_complete = True
        self.close_sent = True
        if output and not self.transport.is_closing():
            self.transport.write(output)
        self.transport.close()

    def handle_parser_exception(self) -> None:
        # A protocol violation from the client (an unmasked frame, a bad opcode, an invalid
        # close code, possibly in the same packet as the handshake): close with the code the
        # parser chose (1002/1007/1009), never with a traceback and 1011.
        close = self.conn.close_sent
        code = close.code if close is not None else 1002
        reason = close.reason if close is not None else "protocol error"
        log.info(
            "web: websocket from %s closed: %d %s",
            safe(self.client),
            code,
            safe(self.conn.parser_exc or reason),
        )
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        output = b"".join(self.conn.data_to_send())
        if not self.handshake_complete:
            # No 101 went out yet: the handshake itself is refused; the app, if started,
            # finds the client gone.
            self.handshake_complete = True
            self.disconnected = True  # the app's accept finds the client gone, quietly
            output = b""
        self.close_sent = True
        if output and not self.transport.is_closing():
            self.transport.write(output)
        self.transport.close()

    async def send(self, message: Any) -> None:
        if (
            message.get("type") == "websocket.http.response.body"
            and not message.get("more_body", False)
            and self.initial_response is not None
        ):
            # A handshake refused by the app (the security middleware's 401/403): complete,
            # not an "ASGI callable returned without completing handshake" error.
            await super().send(message)
            self.handshake_complete = True
            return
        if self.going_away and message.get("type") in ("websocket.send", "websocket.close"):
            if message["type"] == "websocket.close":
                return  # the going-away close was sent already
            raise ClientDisconnected()  # as for a client that left: the app stops quietly
        await super().send(message)

    async def run_asgi(self) -> None:
        # The scope exists (the handshake request was accepted for upgrade) and the app has
        # not started yet. Shared frames are plain: a connection with a negotiated extension
        # (per-message deflate) must get its own frames.
        if not self.conn.extensions:
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[FRAMES_EXTENSION] = FrameWriter(self)
        await super().run_asgi()
