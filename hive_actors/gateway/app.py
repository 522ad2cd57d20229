"""The gateway's ASGI apps: the dashboard and an agent's page, behind the security middleware.

Dashboard (``[web] host:port``)::

    /api/…        the operator's JSON API (see docs/openapi.yaml and :mod:`.endpoints`)
    /api/stats    the telemetry's series, /metrics its Prometheus exposition (``extra_routes``)
    /ws           live events: snapshot, then every committed event (:class:`~hive_actors.httpd.Fanout`)
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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount, NoMatchFound, Route, WebSocketRoute

from hive_actors.hive import Hive
from hive_actors.httpd.asgi import ASGIApp, Receive, Scope, Send
from hive_actors.httpd.fanout import Fanout
from hive_actors.httpd.fanout_board import FanoutBoard
from hive_actors.httpd.middleware import SecurityMiddleware
from hive_actors.httpd.security import SecurityPolicy
from hive_actors.httpd.static import StaticFiles
from hive_actors.mcp.surface import HiveSurface

from .api import http_exception_handler
from .endpoints import OperatorApi
from .pty import PtyEndpoint

__all__ = ["GatewayContext", "build_agent_app", "build_dashboard_app", "default_web_root"]


def default_web_root() -> Path:
    """The operator's pages when ``[web] root`` is empty.

    An installed package (a wheel, the Nix build) carries them in ``hive_actors/webroot/``
    (copied from ``web/`` by setup.py); the source tree and an editable install serve the
    repository's ``web/`` folder, next to the package. Neither: a :class:`ConfigError`.
    """
    from hive_actors.errors import ConfigError

    package = Path(__file__).resolve().parents[1]
    packaged = package / "webroot"
    repository = package.parent / "web"
    for root in (packaged, repository):
        if (root / "index.html").is_file():
            return root
    raise ConfigError(
        f"web: no operator pages: neither the packaged copy '{packaged}' nor the repository's "
        f"'{repository}' has an index.html; set [web] root to a folder of the pages (the "
        "repository's web/), or reinstall the package"
    )


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
    extra_routes: Callable[[], Sequence[BaseRoute]] = list
    """More routes for the dashboard (the telemetry's ``/api/stats`` and ``/metrics``); the
    ``/api/`` ones are served on the agents' pages too."""
    web_root: Path = field(default_factory=default_web_root)
    """The static pages (``[web] root``)."""
    timeout: float = 30.0
    """Deadline of a request's blocking work and of an actor call ([web] action_timeout)."""
    metrics_server: Callable[[], Any] = lambda: None
    """Starts ``/metrics`` on its own port when ``[web] metrics_port`` is set (an object with
    ``close()``), else None; the gateway owns its lifetime."""
    board: FanoutBoard | None = None
    """Where the gateway puts its fan-outs for ``/metrics`` (None: nowhere)."""


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
        _Pages(StaticFiles(ctx.web_root)),
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
        _Pages(StaticFiles(ctx.web_root), index="agent.html"),
    ]
    return _app(routes, ctx.policy)


class _Pages(BaseRoute):
    """The static pages, for every HTTP path outside the API.

    A route of its own rather than a catch-all mount: ``GET /api/model`` must stay a 405 and
    ``/api/nothing`` a JSON 404, which a mount matching every path would turn into "no such
    page". ``index`` is the page ``/`` answers with (an agent's site opens on agent.html).
    """

    _API_PREFIXES = ("/api/", "/hive/", "/ws/")
    _API_PATHS = frozenset({"/api", "/hive", "/ws", "/metrics"})

    def __init__(self, static: StaticFiles, index: str = "index.html") -> None:
        self._static = static
        self._index = index

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and not (
            path in self._API_PATHS or path.startswith(self._API_PREFIXES)
        ):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") in ("/", ""):
            index = f"/{self._index}"
            scope = dict(scope, path=index, raw_path=index.encode())
        await self._static(scope, receive, send)
