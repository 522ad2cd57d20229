"""The gateway's ASGI apps: the dashboard and an agent's page, behind the security middleware.

Dashboard (``[web] host:port``)::

    /api/…        the operator's JSON API (see docs/openapi.yaml and :mod:`.endpoints`)
    /api/stats    the telemetry's series, /metrics its Prometheus exposition (``extra_routes``)
    /ws           live events: snapshot, then every committed event (:class:`~hive_actors.web.Fanout`)
    /hive/mcp     the hive MCP endpoint the agents' claude CLI talks to
    /             the pages in ``web/`` (index.html is the dashboard)

An agent's page (its own port, see :mod:`.pages`)::

    /api/state, /api/events, /api/model, /api/message    that agent's slice of the API
    /api/stats    its charts' series
    /ws           its own events; /ws/pty its terminal
    /             agent.html
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from hive_actors.hive import Hive
from hive_actors.mcp.surface import HiveSurface
from hive_actors.web.asgi import ASGIApp, Receive, Scope, Send
from hive_actors.web.fanout import Fanout
from hive_actors.web.middleware import SecurityMiddleware
from hive_actors.web.security import SecurityPolicy
from hive_actors.web.static import StaticFiles

from .api import http_exception_handler
from .endpoints import OperatorApi
from .pty import PtyEndpoint

__all__ = ["GatewayContext", "build_agent_app", "build_dashboard_app", "default_web_root"]


def default_web_root() -> Path:
    """The repository's ``web/`` folder, next to the ``hive_actors`` package."""
    return Path(__file__).resolve().parents[2] / "web"


@dataclass
class GatewayContext:
    """What the gateway serves and drives, handed over by the daemon."""

    hive: Hive
    surface_factory: Callable[[], HiveSurface]
    """A new MCP surface per dashboard app (its session manager runs once)."""
    policy: SecurityPolicy
    backend: Any
    """The container backend: ``pty_shell(name)`` for the terminals."""
    spawn_diff: Callable[[str], str]
    """What the operator approves when spawning an agent by name from the dashboard."""
    extra_routes: Callable[[], list[BaseRoute]] = list
    """More routes for the dashboard (the telemetry's ``/api/stats`` and ``/metrics``); the
    ``/api/`` ones are served on the agents' pages too."""
    web_root: Path = field(default_factory=default_web_root)
    """The static pages (``[web] root``)."""
    timeout: float = 30.0
    """Deadline of a request's blocking work and of an actor call ([web] action_timeout)."""


def _app(routes: list[BaseRoute], policy: SecurityPolicy, lifespan: Any = None) -> ASGIApp:
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_exception_handler},
        lifespan=lifespan,
    )
    return SecurityMiddleware(app, policy)


def build_dashboard_app(ctx: GatewayContext, api: OperatorApi, fanout: Fanout) -> ASGIApp:
    """The dashboard: API, live events, the hive MCP endpoint, the static pages."""
    surface = ctx.surface_factory()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A mounted app's lifespan is not run by Starlette: the MCP session manager runs here.
        async with surface.running():
            yield

    routes: list[BaseRoute] = [
        *api.dashboard_routes(),
        *ctx.extra_routes(),
        WebSocketRoute("/ws", fanout),
        Mount("/hive", app=surface.asgi_app()),
        Mount("/", app=StaticFiles(ctx.web_root)),
    ]
    return _app(routes, ctx.policy, lifespan)


def build_agent_app(
    ctx: GatewayContext, api: OperatorApi, agent: str, fanout: Fanout, pty: PtyEndpoint
) -> ASGIApp:
    """One agent's page: its API slice, its events, its terminal, agent.html at ``/``."""
    stats = [
        r for r in ctx.extra_routes() if isinstance(r, Route) and r.path.startswith("/api/")
    ]
    routes: list[BaseRoute] = [
        *api.agent_routes(agent),
        *stats,
        WebSocketRoute("/ws", fanout),
        WebSocketRoute("/ws/pty", pty),
        Mount("/", app=_PageAtRoot(StaticFiles(ctx.web_root), "agent.html")),
    ]
    return _app(routes, ctx.policy)


class _PageAtRoot:
    """Static files, with ``/`` answered by one page (an agent's site opens on agent.html)."""

    def __init__(self, static: StaticFiles, page: str) -> None:
        self._static = static
        self._page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in ("/", ""):
            scope = dict(scope, path=f"/{self._page}", raw_path=f"/{self._page}".encode())
        await self._static(scope, receive, send)
