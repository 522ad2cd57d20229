"""``ModelServer``: the loopback Anthropic Messages API the hive's tests and demo talk to.

It serves ``POST /v1/messages`` (SSE or JSON), ``POST /v1/messages/count_tokens`` and
``HEAD /`` on 127.0.0.1, asks a policy what to answer (the directive script by default), and
keeps a log of what it served so a test can assert on it and wait for it.

Threads: one accept loop, one thread per connection (the CLI keeps connections alive). ``stop``
shuts the connections' sockets down, which wakes handlers waiting out a scripted delay, and
joins every thread.
"""

from __future__ import annotations

import json
import logging
import math
import select
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from hive_actors.modelserver.conversation import newest_prompt, offered_tools
from hive_actors.modelserver.replies import Policy, TextBlock
from hive_actors.modelserver.script import script_policy
from hive_actors.modelserver.wire import (
    Usage,
    encode_sse,
    error_body,
    reply_events,
    reply_message,
)

__all__ = ["ModelServer", "RequestRecord"]

log = logging.getLogger(__name__)

# Connections idle this long are dropped; the CLI reconnects when it needs to.
_IDLE_TIMEOUT_S = 60.0
# How long ``stop`` waits for the accept loop and each handler thread.
_JOIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered, as the request log keeps it."""

    index: int
    """0-based order in which the requests were answered."""
    method: str
    """HTTP method."""
    path: str
    """Request path with its query (``/v1/messages?beta=true``)."""
    model: str | None
    """The ``model`` the request asked for (None when the body has none)."""
    tools: tuple[str, ...]
    """Names of the tools the request offered."""
    stream: bool
    """True when the client asked for SSE."""
    kind: str
    """The reply's kind (``text``, ``tool_use``, ``too-long``, ``summary``, ``count_tokens``...)."""
    status: int
    """HTTP status answered."""
    prompt: str | None
    """The newest user prompt (first 500 characters), when there is one."""
    session_id: str | None
    """The CLI's ``X-Claude-Code-Session-Id`` header."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """The reply's free annotations."""


def _estimate_tokens(n_bytes: int) -> int:
    # About four bytes a token: enough for the CLI's cost and context arithmetic.
    return max(1, n_bytes // 4)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT_S
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("modelserver %s: " + format, self.address_string(), *args)

    # -- plumbing ---------------------------------------------------------------------------

    def _send(
        self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _read_json(self) -> Mapping[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self._body_size = len(raw)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            self._send_json(
                400,
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"body is not JSON: {exc.msg}",
                    },
                },
            )
            return None
        if not isinstance(body, Mapping):
            self._send_json(
                400,
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": "body must be a JSON object",
                    },
                },
            )
            return None
        return body

    # -- routes -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._send(200, b"", "text/plain")

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path == "/":
            self._send(200, b"hive loopback model server\n", "text/plain")
            return
        self._send_json(
            404,
            {
                "type": "error",
                "error": {"type": "not_found_error", "message": f"no route {self.path}"},
            },
        )

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        route = self.path.split("?", 1)[0]
        body = self._read_json()
        if body is None:
            return
        if route == "/v1/messages/count_tokens":
            self.server.owner._record(self, body, kind="count_tokens", status=200, extra={})
            self._send_json(200, {"input_tokens": _estimate_tokens(self._body_size)})
            return
        if route != "/v1/messages":
            self._send_json(
                404,
                {
                    "type": "error",
                    "error": {"type": "not_found_error", "message": f"no route {route}"},
                },
            )
            return
        self._answer_messages(body)

    def _answer_messages(self, body: Mapping[str, Any]) -> None:
        # Each answer is logged *before* it is sent: a client that got its response must find
        # it in the log (a test asserting right after its call would race otherwise).
        owner = self.server.owner
        try:
            reply = owner.policy(body)
        except Exception as exc:  # a broken custom policy must not take the server down
            log.exception("modelserver: policy failed on a request")
            message = f"policy failed: {exc!r}"
            owner._record(self, body, kind="policy-error", status=500, extra={})
            self._send_json(
                500, {"type": "error", "error": {"type": "api_error", "message": message}}
            )
            return
        if reply.delay_s > 0 and not self._wait(reply.delay_s):
            log.debug(
                "modelserver: client left or server stopped during a %.1fs delay", reply.delay_s
            )
            self.close_connection = True
            owner._record(self, body, kind=reply.kind + ":abandoned", status=0, extra=reply.extra)
            return
        if reply.error is not None:
            owner._record(self, body, kind=reply.kind, status=reply.error.status, extra=reply.extra)
            self._send_json(reply.error.status, error_body(reply.error))
            return
        model = str(body.get("model") or "claude-loopback")
        out_chars = sum(
            len(b.text) if isinstance(b, TextBlock) else len(json.dumps(dict(b.input)))
            for b in reply.content
        )
        usage = Usage(_estimate_tokens(self._body_size), _estimate_tokens(out_chars))
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        owner._record(self, body, kind=reply.kind, status=200, extra=reply.extra)
        if body.get("stream"):
            payload = encode_sse(
                reply_events(reply, model=model, message_id=message_id, usage=usage)
            )
            self._send(200, payload, "text/event-stream", {"Cache-Control": "no-cache"})
        else:
            self._send_json(
                200, reply_message(reply, model=model, message_id=message_id, usage=usage)
            )

    def _wait(self, seconds: float) -> bool:
        """Wait out a scripted delay; False when the client hung up or the server is stopping."""
        # poll, not select: select cannot watch a descriptor above 1023 (FD_SETSIZE).
        try:
            poller = select.poll()
            poller.register(self.connection, select.POLLIN)
            readable = poller.poll(min(max(0, math.ceil(seconds * 1000)), 2**31 - 1))
        except (OSError, ValueError):
            return False
        if not readable:
            return not self.server.owner._stopping
        # Readable while we owe an answer: the client closed (or stop() shut the socket down).
        return False


class _HTTPServer(ThreadingHTTPServer):
    # SO_REUSEADDR: a restarted server binds again while old connections sit in TIME_WAIT.
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], owner: ModelServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class ModelServer:
    """The loopback model: an HTTP server on its own threads, answering as ``policy`` decides.

    Use as a context manager, or call ``start()`` and ``stop()``. ``url`` is the value for
    ``ANTHROPIC_BASE_URL``; ``requests`` is the log of answered requests.
    """

    def __init__(
        self, script: Policy = script_policy, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.policy: Policy = script
        self._address = (host, port)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._log: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ModelServer:
        """Bind and start serving; returns self. Raises OSError when the address is taken."""
        if self._httpd is not None:
            raise RuntimeError("ModelServer.start(): already started")
        self._stopping = False
        self._httpd = _HTTPServer(self._address, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"modelserver:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("modelserver: listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop accepting, drop every connection, join every thread. Safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping = True
        httpd.shutdown()
        with self._cond:
            connections = list(self._connections)
        for conn in connections:
            # Wakes handlers blocked on a read or a scripted delay; they then end.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT_S)
        log.info("modelserver: stopped")

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the chosen one when started on port 0)."""
        if self._httpd is None:
            raise RuntimeError("ModelServer.port: the server is not started; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the ``ANTHROPIC_BASE_URL`` for the CLI."""
        return f"http://{self._address[0]}:{self.port}"

    # -- request log ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the requests answered so far, in order."""
        with self._cond:
            return list(self._log)

    def wait_for(self, predicate: Callable[[RequestRecord], bool], timeout: float) -> RequestRecord:
        """Block until a logged request matches ``predicate``; TimeoutError after ``timeout`` s."""
        found: list[RequestRecord] = []

        def match() -> bool:
            found[:] = [r for r in self._log if predicate(r)][:1]
            return bool(found)

        with self._cond:
            if not self._cond.wait_for(match, timeout):
                raise TimeoutError(
                    f"modelserver: no matching request within {timeout}s "
                    f"(served {len(self._log)}: {[r.kind for r in self._log]})"
                )
        return found[0]

    def wait_for_request(self, n: int, timeout: float) -> RequestRecord:
        """Block until the ``n``-th request (1-based) was answered and return it."""
        return self.wait_for(lambda r: r.index == n - 1, timeout)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record(
        self,
        handler: _Handler,
        body: Mapping[str, Any],
        *,
        kind: str,
        status: int,
        extra: Mapping[str, Any],
    ) -> None:
        prompt = newest_prompt(body)
        model = body.get("model")
        with self._cond:
            record = RequestRecord(
                index=len(self._log),
                method=handler.command,
                path=handler.path,
                model=str(model) if model is not None else None,
                tools=offered_tools(body),
                stream=bool(body.get("stream")),
                kind=kind,
                status=status,
                prompt=None if prompt is None else prompt.text[:500],
                session_id=handler.headers.get("X-Claude-Code-Session-Id"),
                extra=dict(extra),
            )
            self._log.append(record)
            self._cond.notify_all()
        log.debug(
            "modelserver: #%d %s %s -> %s %d", record.index, record.model, record.path, kind, status
        )
