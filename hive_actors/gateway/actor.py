"""GatewayActor: the hive's web front, under the root supervisor.

It owns the web thread (:class:`~hive_actors.web.server.WebServer`: one asyncio loop, uvicorn
sites on sockets bound with SO_REUSEADDR and bounded retries) and serves the dashboard's ASGI
app on ``[web] host:port``: the JSON API, the live websocket, the static pages, ``/metrics``, and
the hive MCP endpoint the agents' claude CLI talks to (``/hive/mcp``). It is ready once the
dashboard is bound, and publishes where it listens through :class:`Endpoints`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hive_actors.actor import HiveActor
from hive_actors.web.asgi import ASGIApp
from hive_actors.web.server import SiteOptions, WebServer

__all__ = ["Endpoints", "GatewayActor"]


class Endpoints:
    """Where the gateway listens, once it does (read by agents to reach the MCP endpoint)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._base: str | None = None

    def publish(self, base_url: str | None) -> None:
        with self._cond:
            self._base = base_url
            self._cond.notify_all()

    def base_url(self, timeout: float = 30.0, cancel: threading.Event | None = None) -> str:
        """``http://host:port`` of the dashboard; waits for the gateway up to ``timeout``, or
        until ``cancel`` is set (checked every quarter second: a stopping agent must not wait
        for a gateway that the same shutdown already stopped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._base is None:
                left = deadline - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()):
                    raise TimeoutError(f"the web gateway is not up (waited {timeout:g} s)")
                self._cond.wait(min(left, 0.25))
            return self._base

    def mcp_url(self, timeout: float = 30.0, cancel: threading.Event | None = None) -> str:
        return f"{self.base_url(timeout, cancel)}/hive/mcp"


class GatewayActor(HiveActor):
    """Serves the dashboard app on its own web thread."""

    ready_on_start = True

    def __init__(
        self,
        build_app: Callable[[], ASGIApp],
        endpoints: Endpoints,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        name: str = "gateway",
    ) -> None:
        super().__init__(name=name)
        self._build_app = build_app
        self._endpoints = endpoints
        self._host = host
        self._port = port
        self._web: WebServer | None = None
        self.port: int | None = None

    def on_start(self) -> None:
        self._web = WebServer(name="hive-web")
        self._web.start(timeout=10.0)
        try:
            self.port = self._web.add_site(
                "dashboard",
                self._host,
                self._port,
                self._build_app(),
                options=SiteOptions(lifespan="on", bind_fix="set [web] port in hive.toml"),
            )
        except BaseException:
            self._web.stop(timeout=10.0)
            raise
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._endpoints.publish(f"http://{host}:{self.port}")
        self.log.info("dashboard on http://%s:%d/", host, self.port)

    def on_stop(self) -> None:
        self._endpoints.publish(None)
        if self._web is not None:
            self._web.stop(timeout=10.0)
