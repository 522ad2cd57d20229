"""GatewayActor: the hive's web front, under the root supervisor.

It owns the web thread (:class:`~hive_actors.httpd.server.WebServer`: one asyncio loop, uvicorn
sites on sockets bound with SO_REUSEADDR and bounded retries) and serves:

* the dashboard app on ``[web] host:port``: the JSON API, the live websocket, the static pages,
  the telemetry's routes, and the hive MCP endpoint the agents' claude CLI talks to
  (``/hive/mcp``);
* one page per agent on the agent's own port (:mod:`.pages`), added and removed as agents come
  and go.

The push path is the :class:`~.pump.EventPump`: a thread that follows the hive's bell, reads the
committed events on its own connection and publishes them to the dashboard's fan-out and to the
fan-out of the agent they concern. No actor ever waits for it; it tells this actor when the
registry changed, and the actor brings the agent pages in line.

The gateway is ready once the dashboard is bound; it publishes where it listens through
:class:`Endpoints`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hive_actors.actor import HiveActor, unexpected
from hive_actors.errors import ConfigError, HiveError
from hive_actors.httpd.asgi import ASGIApp
from hive_actors.httpd.fanout import Fanout
from hive_actors.httpd.server import SiteOptions, WebServer
from hive_actors.store import Store
from hive_actors.store.events import EventKind

from .app import GatewayContext, build_agent_app, build_dashboard_app
from .endpoints import OperatorApi
from .ops import OperatorOps
from .pages import AgentPages, site_name
from .pty import PtyEndpoint
from .pump import EventPump
from .reads import HiveReader
from .views import WireEvent

__all__ = ["Endpoints", "GatewayActor", "GatewayMessage", "ServedPages"]

_REGISTRY_KINDS = frozenset(
    str(k) for k in (EventKind.AGENT_REGISTERED, EventKind.AGENT_DESTROYED, EventKind.AGENT_STATE)
)
"""Events after which the agent pages may need a change."""


class Endpoints:
    """Where the gateway listens, once it does (read by agents to reach the MCP endpoint)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._base: str | None = None

    def publish(self, base_url: str | None) -> None:
        """Announce the dashboard's base URL (None: the gateway stopped)."""
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
        """The hive MCP endpoint's URL."""
        return f"{self.base_url(timeout, cancel)}/hive/mcp"


@dataclass(frozen=True)
class ServedPages:
    """Brings the agent pages in line with the registry now, then answers ``{agent: port}`` of
    the pages served: every registry change committed before the ask is reflected."""


@dataclass(frozen=True)
class _Reconcile:
    """The registry changed: bring the agent pages in line."""


@dataclass(frozen=True)
class _PumpFailed:
    """The event pump stopped on an error: the gateway crashes, its supervisor restarts it."""

    error: str


GatewayMessage = ServedPages | _Reconcile | _PumpFailed
"""Every message :class:`GatewayActor` accepts; its ``receive`` matches each one."""


class GatewayActor(HiveActor):
    """Serves the dashboard and the agent pages on its own web thread."""

    ready_on_start = True

    def __init__(
        self,
        ctx: GatewayContext,
        endpoints: Endpoints,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        name: str = "gateway",
    ) -> None:
        super().__init__(name=name)
        if ctx.timeout <= 0:
            raise ConfigError(
                f"[web] action_timeout = {ctx.timeout} must be greater than 0 seconds"
            )
        self._ctx = ctx
        self._endpoints = endpoints
        self._host = host
        self._port = port
        self._web: WebServer | None = None
        self._store: Store | None = None
        self._reader: HiveReader | None = None
        self._pump: EventPump | None = None
        self._metrics: Any = None
        self._pages: AgentPages | None = None
        self._fanout: Fanout | None = None
        self._api: OperatorApi | None = None
        self._reconcile_told = threading.Event()
        self._pump_from = 0
        self._agent_last: dict[str, int] = {}
        """Pump thread only: the last event published about each agent (an agent page's stream
        has no event between it and the next one)."""
        self.port: int | None = None
        """The dashboard's bound port, once started."""

    # -- life ------------------------------------------------------------------------------

    def on_start(self) -> None:
        hive = self._ctx.hive
        try:
            self._store = hive.open_store()
            self._reader = HiveReader(
                hive.open_store,
                lambda name: hive.agent_paths(name).state,
                page_errors=lambda: self._pages.errors if self._pages is not None else {},
                default_model=hive.config.model.default,
            )
            timeout = self._ctx.timeout
            ops = OperatorOps(
                hive, spawn_diff=self._ctx.spawn_diff, timeout=timeout, settle=min(10.0, timeout)
            )
            # The request's deadline outlasts the actor call's: a stuck service is reported
            # by the call itself, naming the service.
            self._api = OperatorApi(
                self._reader, ops, timeout + 5.0, hive.config.store.max_body_bytes
            )
            # Read before any browser can connect: whatever is committed from here on is
            # published (a browser's snapshot may include some of it: the fan-out skips those).
            start_after = self._reader.last_event_id()
            self._pump_from = start_after
            self._fanout = self._new_fanout(None)
            self._web = WebServer(name="hive-web")
            self._web.start(timeout=10.0)
            self.port = self._web.add_site(
                "dashboard",
                self._host,
                self._port,
                build_dashboard_app(self._ctx, self._api, self._fanout),
                options=SiteOptions(lifespan="on", bind_fix="set [web] port in hive.toml"),
            )
            self._pages = AgentPages(
                self._web, hive, self._store, self._agent_site, host=self._host,
                dashboard_port=self.port,
            )
            self._pump = EventPump(
                hive.bell, self._reader.events_since, self._publish,
                after=start_after, on_failure=self._pump_failed,
            )
            self._pump.start()
            self._metrics = self._ctx.metrics_server()
        except BaseException:
            self._shut_down()
            raise
        # A wildcard bind listens on loopback too: the agents (and the CLI) connect there, a
        # Host the MCP endpoint's DNS-rebinding check accepts ("0.0.0.0:PORT" it refuses).
        connect = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(
            self._host, self._host
        )
        host = f"[{connect}]" if ":" in connect else connect
        self._endpoints.publish(f"http://{host}:{self.port}")
        self.log.info("dashboard on http://%s:%d/", host, self.port)
        # The pages are bound after readiness: a busy agent port must not hold up the hive.
        self._tell_reconcile()

    def on_stop(self) -> None:
        self._shut_down()

    def _shut_down(self) -> None:
        self._endpoints.publish(None)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._pump is not None:
            self._pump.stop()
        try:
            if self._web is not None:
                self._web.stop(timeout=10.0)
        finally:
            if self._reader is not None:
                self._reader.close()
            if self._store is not None:
                self._store.close()

    # -- messages --------------------------------------------------------------------------

    def receive(self, message: GatewayMessage) -> Any:
        match message:
            case _Reconcile():
                self._reconcile_told.clear()
                assert self._pages is not None
                self._pages.reconcile()
                return None
            case ServedPages():
                assert self._web is not None and self._pages is not None
                self._pages.reconcile()
                sites = self._web.sites()
                return {
                    name: sites[site_name(name)].port
                    for name in self._pages.fanouts if site_name(name) in sites
                }
            case _PumpFailed(error=error):
                raise HiveError(f"gateway: the live event pump failed: {error}")
            case _:
                unexpected(self, message)

    # -- the pump's side (pump thread) -------------------------------------------------------

    def _publish(self, events: Sequence[WireEvent]) -> None:
        assert self._fanout is not None and self._pages is not None
        pages = self._pages.fanouts
        registry_changed = False
        for event in events:
            self._fanout.publish(event)
            if event.agent is not None:
                page = pages.get(event.agent)
                if page is not None:
                    # Every event after the pump's start is published in order: none about
                    # this agent lies between its last one and this one.
                    page.publish(event, self._agent_last.get(event.agent, self._pump_from))
                self._agent_last[event.agent] = event.id
            registry_changed = registry_changed or event.kind in _REGISTRY_KINDS
        if registry_changed:
            self._tell_reconcile()

    def _tell_reconcile(self) -> None:
        # One pending reconcile is enough: it reads the registry as it is when it runs.
        if not self._reconcile_told.is_set():
            self._reconcile_told.set()
            self.actor_ref.tell(_Reconcile())

    def _pump_failed(self, exc: BaseException) -> None:
        try:
            self.actor_ref.tell(_PumpFailed(repr(exc)))
        except Exception:
            self.log.error("the event pump failed while the gateway stopped: %r", exc)

    # -- sites -----------------------------------------------------------------------------

    def _new_fanout(self, agent: str | None) -> Fanout:
        reader = self._reader
        assert reader is not None
        if agent is None:
            fanout = Fanout(
                reader.snapshot, reader.events_since, last_event_id=reader.last_event_id,
                oldest_event_id=reader.oldest_event_id,
            )
        else:
            # An agent's stream is the log filtered to it: its ids have gaps, which the pump
            # bridges with each event's `after` (see _publish), and a resume is checked
            # against the whole log's oldest id.
            fanout = Fanout(
                lambda: reader.agent_snapshot(agent),
                lambda after, limit: reader.agent_events_since(agent, after, limit),
                last_event_id=reader.last_event_id,
                oldest_event_id=reader.oldest_event_id,
            )
        if self._ctx.board is not None:
            self._ctx.board.add("dashboard" if agent is None else "agent", fanout)
        return fanout

    def _agent_site(self, agent: str) -> tuple[ASGIApp, Fanout]:
        assert self._api is not None
        fanout = self._new_fanout(agent)
        backend = self._ctx.backend
        pty = PtyEndpoint(
            agent, lambda: backend.pty_shell(agent), host=self._host, policy=self._ctx.policy,
            release_shell=lambda pid: backend.release_shell(agent, pid),
        )
        return build_agent_app(self._ctx, self._api, agent, fanout, pty), fanout
