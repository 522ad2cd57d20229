"""The HTTP edge under abuse: timeouts, a connection limit, quiet and unforgeable logs.

* **Header-read timeout.** A connection must deliver a request's complete headers within
  ``header_timeout`` seconds of connecting (or of its previous response): a half-open or
  trickling connection (slowloris) is answered ``408`` and closed. Between requests uvicorn's
  keep-alive timeout (``idle_timeout``) closes an idle connection. A connection that sent
  nothing at all is closed without an answer (a browser's unused preconnect must not see an
  unsolicited response).
* **Connection limit.** At most ``max_connections`` connections (HTTP and websocket, all the
  sites of one :class:`~.server.WebServer` together) are open at once. One more is answered
  ``503`` with ``Connection: close`` at once and closed, so its descriptor is freed at once.
  The default stays well below the process's file limit, so ``accept()`` never runs out of
  descriptors because of the web.
* **Accept errors are logged once per interval.** When ``accept()`` fails anyway (EMFILE:
  another part of the daemon holds the descriptors), asyncio reports it to the loop's
  exception handler every time it retries, with a traceback; :class:`AcceptErrorLog` turns that
  into one line per ``interval`` with a count, and sheds the oldest connections still waiting
  for their headers so the API gets a descriptor.
* **Logged values are escaped and secrets redacted.** :func:`safe` escapes control characters
  (a ``%0A`` in a path cannot forge a log line) and hides the value of any query parameter
  named like a secret; :class:`SafeLogFilter` applies it to every argument of uvicorn's and
  websockets' log records.

Loop thread only, except :func:`install_log_filter`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections import OrderedDict
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "ACCEPT_ERROR_MESSAGE",
    "AcceptErrorLog",
    "EdgeState",
    "HiveH11Protocol",
    "SafeLogFilter",
    "default_max_connections",
    "install_log_filter",
    "safe",
]

log = logging.getLogger(__name__)

ACCEPT_ERROR_MESSAGE = "socket.accept() out of system resource"
"""What asyncio's selector loop reports when ``accept()`` fails with EMFILE/ENFILE/ENOBUFS."""

_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[^=&;#\s]*(?:token|secret|password|passwd|key|auth|session|cookie)"
    r"[^=&;#\s]*)=)[^&;#\s]*"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


def safe(value: object, limit: int = 1000) -> str:
    """``value`` as one loggable line: secrets in query parameters redacted, control
    characters escaped (``\\n``, ``\\x1b``…), cut at ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    text = _SECRET_PARAM.sub(r"\1[redacted]", text)
    text = _CONTROL.sub(_escape_char, text)
    if len(text) > limit:
        text = text[:limit] + f"…[{len(text) - limit} more]"
    return text


class SafeLogFilter(logging.Filter):
    """Escapes and redacts every string argument of a record (the message format is ours or
    the library's constant; what varies, and what a client controls, is in the arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _WS_REFUSED:
            return False  # the refusal is logged once, with its reason, by whoever refused
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(safe(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, dict) and args:
            record.args = {k: safe(v) if isinstance(v, str) else v for k, v in args.items()}
        elif not args and isinstance(record.msg, str):
            record.msg = safe(record.msg, limit=4000)
        return True


_WS_REFUSED = '%s - "WebSocket %s" %d'
"""uvicorn's line for a handshake refused with an HTTP response (the security middleware's
401/403/421, which logs its own line with the reason)."""

_FILTERED_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "websockets",
    "websockets.server",
)
_FILTER = SafeLogFilter()


def install_log_filter() -> None:
    """Put :class:`SafeLogFilter` on the loggers the web servers' libraries log to
    (idempotent)."""
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def default_max_connections() -> int:
    """Half the soft file limit (the rest is the daemon's), between 64 and 4096."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, soft // 2))


class EdgeState:
    """What the sites of one web server share: their open connections, and those of them
    still waiting for a request's headers (oldest first)."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open: set[Any] = set()
        self.waiting: OrderedDict[Any, None] = OrderedDict()
        self.refused = 0

    def shed(self, count: int) -> int:
        """Close up to ``count`` of the oldest connections still waiting for headers."""
        shed = 0
        while self.waiting and shed < count:
            protocol, _ = self.waiting.popitem(last=False)
            protocol.header_timed_out(status=503)
            shed += 1
        return shed


def _raw_response(status: int, reason: str, body: str) -> bytes:
    data = body.encode("utf-8")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + data


_BUSY = _raw_response(
    503,
    "Service Unavailable",
    '{"error": "too many open connections to the hive; retry in a few seconds"}',
)
_SLOW = _raw_response(
    408, "Request Timeout", '{"error": "the request headers did not arrive in time"}'
)
_SHED = _raw_response(
    503,
    "Service Unavailable",
    '{"error": "the hive is out of file descriptors; request headers must arrive promptly"}',
)
_TOO_LARGE = (
    "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    "connection: close\r\ncontent-length: 33\r\n\r\nrequest header fields too large\r\n"
).encode("ascii")


class HiveH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header-read timeout, a connection limit shared by the
    server's sites, and 431 (not 400) for oversized request headers.

    The server puts an :class:`EdgeState` on the config as ``hive_edge`` and the timeout as
    ``hive_header_timeout``.
    """

    _header_timer: asyncio.TimerHandle | None = None
    _edge: EdgeState | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        edge: EdgeState | None = getattr(self.config, "hive_edge", None)
        if edge is None:
            return
        if len(edge.open) >= edge.max_connections:
            edge.refused += 1
            self.connections.discard(self)
            transport.write(_BUSY)
            transport.close()
            return
        self._edge = edge
        edge.open.add(self)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        if self._edge is not None:
            self._edge.open.discard(self)
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        timeout: float | None = getattr(self.config, "hive_header_timeout", None)
        if timeout is None or self._edge is None:
            return
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(timeout, self.header_timed_out)
        self._edge.waiting[self] = None

    def _headers_arrived(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._edge is not None:
            self._edge.waiting.pop(self, None)

    def header_timed_out(self, status: int = 408) -> None:
        """The request's headers did not arrive in time (or the server sheds this connection):
        answer and close."""
        self._headers_arrived()
        if self.transport.is_closing():
            return
        if (
            self.conn.their_state is h11.IDLE
            and self.conn.our_state is h11.IDLE
            and self.conn.trailing_data[0]
        ):
            # Part of a request came: answer it. A connection that sent nothing (a browser's
            # preconnect, an idle keep-alive) is closed silently, which every client retries.
            self.transport.write(_SHED if status == 503 else _SLOW)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is not None and self.conn.their_state is h11.IDLE:
            # h11 bounds only an *incomplete* head; a complete one of any size arriving in one
            # read would be accepted (and handed to the websocket protocol). Bound both.
            limit = self.config.h11_max_incomplete_event_size or 16 * 1024
            buffered = self.conn.trailing_data[0] + data
            end = buffered.find(b"\r\n\r\n")
            if (end + 4 if end >= 0 else len(buffered)) > limit:
                self._refuse_too_large()
                return
        super().data_received(data)

    def _refuse_too_large(self) -> None:
        self._headers_arrived()
        log.info(
            "web: refused a request from %s: 431 request header fields too large",
            safe(self.client),
        )
        self.transport.write(_TOO_LARGE)
        self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.ERROR:
            self._headers_arrived()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._headers_arrived()
        if self._edge is not None:
            # The websocket protocol takes the transport over; it leaves the count when it
            # loses the connection (see HiveWebSocketProtocol.connection_lost).
            self._edge.open.discard(self)
        pending, _closed = self.conn.trailing_data  # frames sent right behind the handshake
        super().handle_websocket_upgrade(event)
        if pending and not self.transport.is_closing():
            protocol = self.transport.get_protocol()
            assert isinstance(protocol, asyncio.Protocol)
            protocol.data_received(pending)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()

    def send_400_response(self, msg: str) -> None:
        self._headers_arrived()
        if _headers_too_large(self.conn):
            self._refuse_too_large()
            return
        super().send_400_response(msg)


def _headers_too_large(conn: h11.Connection) -> bool:
    data, _closed = conn.trailing_data
    return conn.their_state is h11.ERROR and len(data) > conn._max_incomplete_event_size


class AcceptErrorLog:
    """The loop's exception handler: ``accept()`` failures logged at most once per
    ``interval`` seconds in one line (never a traceback per retry), with the oldest
    connections still waiting for headers shed so the next accept finds a descriptor.
    Everything else goes to asyncio's default handler."""

    def __init__(
        self,
        edge: EdgeState | None = None,
        interval: float = 60.0,
        shed: int = 16,
        clock: Any = time.monotonic,
    ) -> None:
        self.edge = edge
        self.interval = interval
        self.shed_count = shed
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_ERROR_MESSAGE:
            loop.default_exception_handler(context)
            return
        shed = self.edge.shed(self.shed_count) if self.edge is not None else 0
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return
        exc = context.get("exception")
        log.error(
            "web: cannot accept connections: %s; %d earlier failure(s) not logged, %d waiting "
            "connection(s) shed; too many open files: raise the hive's file limit "
            "(LimitNOFILE=) or find what holds the descriptors (next report in %gs at most)",
            safe(exc if exc is not None else "unknown error"),
            self._suppressed,
            shed,
            self.interval,
        )
        self._last = now
        self._suppressed = 0
