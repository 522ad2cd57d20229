"""Ending a site's long-lived HTTP streams when its server stops, instead of cancelling them.

uvicorn's graceful shutdown asks every connection to close, waits ``timeout_graceful_shutdown``
for the open requests, then cancels what is left — with an ERROR ("Cancel N running task(s)")
and, for each request, a traceback ("Exception in ASGI application"). An ordinary request ends
within the wait. A stream does not: an event stream (``text/event-stream``: the hive MCP
endpoint's ``subscriptions/listen``, any SSE) runs until its client leaves.

:class:`GoingAway` wraps a site's app. When the server begins to stop (:meth:`GoingAway.begin`,
called on the loop thread before uvicorn's shutdown), every request that is streaming an event
stream is told its client left: its pending ``receive()`` — the one a streaming handler waits
on for ``http.disconnect`` once the request body is read — returns ``http.disconnect``. The
handler returns on its own; if it left its response open, the wrapper ends it (the last, empty
chunk), so the client sees the stream end and the connection closes cleanly. Requests that are
not event streams are left to uvicorn: they finish within the graceful wait.

Other scopes (websockets, the lifespan) pass through untouched; websockets get their 1001 close
from :class:`~.wsframes.HiveWebSocketProtocol`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .asgi import ASGIApp, Receive, Scope, Send

__all__ = ["GoingAway"]

_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}
_EVENT_STREAM = b"text/event-stream"


class _Request:
    """One HTTP request's progress, as the wrapper sees it (loop thread only)."""

    __slots__ = ("abort", "body_read", "complete", "started", "stream")

    def __init__(self) -> None:
        self.body_read = False
        self.started = False
        self.complete = False
        self.stream = False
        """The response is an event stream."""
        self.abort = asyncio.Event()
        """Set when the server stops while this request streams."""


class GoingAway:
    """An ASGI wrapper that ends event streams when :meth:`begin` is called (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._stopping = False
        self._streams: set[_Request] = set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`begin` was called."""
        return self._stopping

    @property
    def open_streams(self) -> int:
        """Event streams being served right now."""
        return len(self._streams)

    def begin(self) -> None:
        """The server is stopping: end every event stream (loop thread; returns at once)."""
        self._stopping = True
        for request in self._streams:
            request.abort.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _Request()

        async def receive_or_stop() -> Any:
            if not request.body_read:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    request.body_read = True
                return message
            # The body is read: a handler waiting here waits for its client to leave.
            if request.abort.is_set():
                return _DISCONNECT
            client = asyncio.ensure_future(receive())
            stop = asyncio.ensure_future(request.abort.wait())
            try:
                await asyncio.wait({client, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not client.done():
                    client.cancel()
            if client.done() and not client.cancelled():
                return client.result()
            return _DISCONNECT

        async def send_tracked(message: Any) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                request.started = True
                request.stream = _is_event_stream(message.get("headers") or ())
                if request.stream:
                    self._streams.add(request)
                    if self._stopping:
                        request.abort.set()
            elif kind == "http.response.body" and not message.get("more_body", False):
                request.complete = True
                self._streams.discard(request)
            await send(message)

        try:
            await self.app(scope, receive_or_stop, send_tracked)
        finally:
            self._streams.discard(request)
        if request.abort.is_set() and request.started and not request.complete:
            # The handler let go of its stream because the server stops: end the response
            # properly (the client sees the stream end, not a dropped connection).
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_event_stream(headers: Any) -> bool:
    for name, value in headers:
        if bytes(name).lower() == b"content-type":
            return bytes(value).split(b";", 1)[0].strip().lower() == _EVENT_STREAM
    return False
