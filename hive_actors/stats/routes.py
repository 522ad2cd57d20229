"""HTTP surface of the telemetry: Starlette routes for the gateway, and an optional metrics port.

The gateway mounts :func:`stats_routes`::

    routes = stats_routes(reader, registry)   # GET /api/stats, GET /metrics

Both handlers do their blocking work (sqlite reads, asks to the agents supervisor) on a worker
thread, never on the event loop. ``GET /api/stats`` answers 400 ``{"error": ...}`` for a bad
query (:mod:`.query` says what is accepted) and 503 when the store cannot be read.
``GET /metrics`` negotiates the Prometheus text or OpenMetrics format from ``Accept``.

With ``[web] metrics_port`` set, :func:`serve_metrics` serves the same registry on a port of its
own (a threaded WSGI server from the standard library), e.g. for a Prometheus that must not
reach the dashboard.

``GET /metrics`` (on either port) needs ``Authorization: Bearer <token>`` when the hive has
metrics tokens (:meth:`~.service.HiveTelemetry.metrics_tokens`: the one in ``[web]
metrics_token_file``, and the operator token on a non-loopback bind); otherwise 401.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hive_actors.errors import ConfigError, StoreError
from hive_actors.httpd.security import constant_time_equal

from .exposition import encode_text
from .query import BadStatsQuery, answer_json
from .reader import StatsReader

__all__ = [
    "MetricsServer", "metrics_refusal", "metrics_response", "metrics_wsgi_app", "serve_metrics",
    "stats_routes",
]

log = logging.getLogger(__name__)


def metrics_response(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition of ``registry`` in the format ``accept`` asks for, and its content type.

    The classic text format (what Prometheus asks for by default) goes through the fast
    :func:`~.metrics.encode_text`; OpenMetrics and the escaping variants through
    prometheus-client's own encoders.
    """
    encoder, content_type = choose_encoder(accept or "")
    if encoder is generate_latest:
        return encode_text(registry), content_type
    return encoder(registry), content_type


def metrics_refusal(authorization: str | None, tokens: Sequence[str]) -> str | None:
    """Why a scrape with this ``Authorization`` header is refused (None: it may read).

    ``tokens`` are the bearer tokens accepted; none means ``/metrics`` is open (a loopback
    bind without ``[web] metrics_token_file``).
    """
    if not tokens:
        return None
    scheme, _, value = (authorization or "").partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else ""
    if not given:
        return ("/metrics needs 'Authorization: Bearer <token>' (the operator token, or the one "
                "in [web] metrics_token_file; Prometheus: authorization: credentials_file:)")
    if not any(constant_time_equal(given, token) for token in tokens):
        return "wrong bearer token for /metrics; copy it again from the token file"
    return None


def stats_routes(
    reader: StatsReader,
    registry: CollectorRegistry,
    *,
    wall: Callable[[], float] = time.time,
    metrics_tokens: Sequence[str] = (),
    thresholds: Mapping[str, float] | None = None,
) -> list[Route]:
    """``GET /api/stats`` (the series, uPlot-shaped) and ``GET /metrics`` (Prometheus).

    ``metrics_tokens``: the bearer tokens ``/metrics`` accepts (empty: no token needed); a
    scrape without one of them is a 401. ``thresholds``: lines the charts draw, per key
    (``notes.bytes``: the compaction threshold), sent with the answers that ask for the key."""
    tokens = tuple(metrics_tokens)
    marks = dict(thresholds or {})

    async def api_stats(request: Request) -> Response:
        params = dict(request.query_params)
        try:
            body = await run_in_threadpool(
                reader.use, lambda store: answer_json(store, params, wall(), marks)
            )
        except BadStatsQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except StoreError as exc:
            log.error("GET /api/stats: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=503)
        return Response(body, media_type="application/json")

    async def metrics(request: Request) -> Response:
        refusal = metrics_refusal(request.headers.get("authorization"), tokens)
        if refusal is not None:
            return JSONResponse({"error": refusal}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="hive-metrics"'})
        body, content_type = await run_in_threadpool(
            metrics_response, registry, request.headers.get("accept")
        )
        return Response(body, headers={"Content-Type": content_type})

    return [
        Route("/api/stats", api_stats, methods=["GET"], name="stats"),
        Route("/metrics", metrics, methods=["GET"], name="metrics"),
    ]


class MetricsServer:
    """A running metrics-only HTTP server; :meth:`close` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving and join the server thread (idempotent)."""
        if not self._thread.is_alive():
            self._server.server_close()
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("metrics server on port %d did not stop within %g s", self.port, timeout)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: Prometheus scrapes every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def metrics_wsgi_app(
    registry: CollectorRegistry, metrics_tokens: Sequence[str] = ()
) -> Callable[..., Any]:
    """A WSGI app answering ``GET /metrics`` (and ``/``) with :func:`metrics_response`
    (401 without one of ``metrics_tokens`` as a bearer token, when there are any)."""
    tokens = tuple(metrics_tokens)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        refusal = metrics_refusal(environ.get("HTTP_AUTHORIZATION"), tokens)
        if refusal is not None:
            start_response("401 Unauthorized", [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Bearer realm="hive-metrics"'),
            ])
            return [refusal.encode("utf-8") + b"\n"]
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"only /metrics here\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        body, content_type = metrics_response(registry, environ.get("HTTP_ACCEPT"))
        start_response("200 OK", [("Content-Type", content_type),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_metrics(
    registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 0,
    metrics_tokens: Sequence[str] = (),
) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` on a thread of its own.

    ``port`` 0 picks a free port (see :attr:`MetricsServer.port`). Raises ConfigError when the
    address cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise ConfigError(
            f"[web] metrics_port = {port} is out of range: use 0..65535 (0 picks a free port)"
        )
    try:
        server = make_server(
            host, port, metrics_wsgi_app(registry, metrics_tokens), ThreadingWSGIServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise ConfigError(
            f"[web] metrics_port: cannot listen on {host}:{port}: {exc.strerror or exc} — "
            "pick a free port"
        ) from exc
    bound = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, name=f"hive-metrics-{bound}", daemon=True
    )
    thread.start()
    log.info("serving /metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(server, thread)
