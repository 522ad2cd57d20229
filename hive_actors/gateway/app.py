"""The dashboard's ASGI app: JSON API, the hive MCP endpoint, behind the security middleware."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from hive_actors.hive import Hive
from hive_actors.mcp.surface import HiveSurface
from hive_actors.store import Store
from hive_actors.web.asgi import ASGIApp
from hive_actors.web.middleware import SecurityMiddleware
from hive_actors.web.security import SecurityPolicy

__all__ = ["GatewayContext", "build_app"]


@dataclass
class GatewayContext:
    """What the web app reads and drives."""

    hive: Hive
    surface_factory: Callable[[], HiveSurface]
    """A new MCP surface per app (its session manager runs once)."""
    policy: SecurityPolicy


def _state(store: Store) -> dict[str, Any]:
    inbox = store.messages.inbox_stats()
    agents = []
    for agent in store.registry.agents():
        stats = inbox.get(agent.name)
        agents.append({
            "name": agent.name,
            "role": str(agent.role),
            "state": str(agent.state),
            "generation": agent.generation,
            "model": agent.model,
            "web_port": agent.web_port,
            "kept_state": agent.kept_state,
            "inbox_depth": stats.depth if stats else 0,
            "inbox_oldest_age": stats.oldest_age if stats else 0.0,
        })
    return {"agents": agents, "last_event_id": store.events.last_event_id()}


def build_app(ctx: GatewayContext) -> ASGIApp:
    surface = ctx.surface_factory()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with surface.running():
            yield

    def read(fn: Callable[[Store], Any]) -> Any:
        with ctx.hive.open_store() as store:
            return fn(store)

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(await anyio.to_thread.run_sync(read, _state))

    app = Starlette(
        routes=[
            Route("/api/state", state),
            Mount("/hive", app=surface.asgi_app()),
        ],
        lifespan=lifespan,
    )
    return SecurityMiddleware(app, ctx.policy)
