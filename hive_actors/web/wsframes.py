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

Loop thread only, like the protocol itself.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

__all__ = ["FRAMES_EXTENSION", "FrameWriter", "HiveWebSocketProtocol", "text_frame"]

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
    """uvicorn's sans-I/O websocket protocol, offering a :class:`FrameWriter` in the scope."""

    async def run_asgi(self) -> None:
        # The scope exists (the handshake request was accepted for upgrade) and the app has
        # not started yet. Shared frames are plain: a connection with a negotiated extension
        # (per-message deflate) must get its own frames.
        if not self.conn.extensions:
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[FRAMES_EXTENSION] = FrameWriter(self)
        await super().run_asgi()
