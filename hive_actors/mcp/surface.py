"""The hive MCP surface: one streamable-HTTP endpoint (``/mcp``) that every agent's CLI calls.

::

    tokens = TokenBook()
    surface = HiveSurface(ops, tokens)              # ops: the hive's HiveOps
    app = surface.asgi_app()                        # serve it, or mount it in the gateway
    token = tokens.issue("alice", Role.AGENT)       # as alice's turn starts
    config = mcp_config("alice", token, "http://127.0.0.1:8000/mcp", extra_servers)

Each call is attributed to the agent its bearer token names (read from the HTTP request
through the tool's ``ctx``), never to an argument; the manager tools refuse anyone else; there
is no approve tool. Every ``HiveOps`` call runs in a worker thread, at most
``max_concurrent_calls`` waiting at once, under ``call_timeout_s``: a slow hive answers the
model with a timeout instead of stalling the endpoint (the abandoned call finishes in the
background and no longer counts against the limit).

The endpoint is stateless (no MCP session survives a request) and answers JSON, so a gateway
restart never strands an agent's session and every request is authenticated on its own.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent
from starlette.types import ASGIApp

from hive_actors.errors import ConfigError, Refused

from . import render
from .guard import BearerGuard
from .ops import HiveOps
from .rules import authorize
from .tokens import Caller, TokenBook, bearer_token
from .tools import TOOLS, HiveCall, Tool

__all__ = ["DEFAULT_CALL_TIMEOUT_S", "LOOPBACK_HOSTS", "HiveSurface", "mcp_allowed_hosts"]

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT_S = 30.0
"""How long a tool waits for the hive before it answers the model with a timeout."""

LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1:*", "localhost:*", "[::1]:*")
"""``Host`` headers accepted by default (DNS-rebinding protection)."""

_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def mcp_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """The ``Host`` headers the MCP endpoint accepts for a server bound to ``bind_host``.

    Loopback always (the agents' URL names 127.0.0.1 when the bind is a wildcard, see
    :meth:`~hive_actors.gateway.actor.Endpoints.publish`); a specific address or name
    bound besides, since the agents then connect to it by that name.
    """
    host = bind_host.strip()
    if host in _WILDCARD_BINDS:
        return LOOPBACK_HOSTS
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    extra = f"{host}:*"
    return LOOPBACK_HOSTS if extra in LOOPBACK_HOSTS else (*LOOPBACK_HOSTS, extra)

_T = TypeVar("_T")
_P = ParamSpec("_P")


def _text(*blocks: str, is_error: bool = False) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=block) for block in blocks], is_error=is_error
    )


class _Refusal(Exception):
    """Internal: a tool call ends with this error text for the model."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _HiveCall(HiveCall):
    """The :class:`HiveCall` a handler gets: the surface's deadline-bound call for one caller."""

    __slots__ = ("_caller", "_surface", "_tool")

    def __init__(self, surface: HiveSurface, tool: str, caller: Caller) -> None:
        self._surface = surface
        self._tool = tool
        self._caller = caller

    @property
    def ops(self) -> HiveOps:
        return self._surface._ops

    async def __call__(
        self, fn: Callable[Concatenate[str, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        return await self._surface._call(self._tool, self._caller, fn, *args, **kwargs)


class HiveSurface:
    """The hive's MCP server, its tools, and the guarded streamable-HTTP ASGI app.

    A surface serves one run: the MCP session manager inside it starts once. Build a new
    surface when the gateway restarts (it is cheap; the token book and ops are shared).
    """

    def __init__(
        self,
        ops: HiveOps,
        tokens: TokenBook,
        *,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        max_concurrent_calls: int = 16,
        path: str = "/mcp",
        allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    ) -> None:
        if not call_timeout_s > 0:
            raise ConfigError(f"[mcp] call_timeout_s must be > 0 seconds, got {call_timeout_s!r}")
        if max_concurrent_calls < 1:
            raise ConfigError(
                f"[mcp] max_concurrent_calls must be 1 or more, got {max_concurrent_calls!r}"
            )
        if not path.startswith("/"):
            raise ConfigError(f"[mcp] path must start with '/', e.g. '/mcp'; got {path!r}")
        self._ops = ops
        self._tokens = tokens
        self._timeout = call_timeout_s
        self._max_calls = max_concurrent_calls
        # Created on first use: an anyio limiter belongs to the event loop serving the app.
        self._limiter: anyio.CapacityLimiter | None = None
        self.path = path
        """The endpoint path inside :meth:`asgi_app`."""
        self.server = MCPServer(
            "hive",
            instructions=render.instructions(TOOLS),
        )
        """The underlying ``MCPServer`` (for in-process clients: ``mcp.Client(surface.server)``)."""
        self._register_tools()
        hosts = list(allowed_hosts)
        starlette_app = self.server.streamable_http_app(
            streamable_http_path=path,
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=hosts,
                allowed_origins=[f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts],
            ),
        )
        self._app: ASGIApp = BearerGuard(starlette_app, tokens)

    def asgi_app(self) -> ASGIApp:
        """The guarded ASGI app; it serves :attr:`path` and runs its own lifespan.

        Served directly (uvicorn), its lifespan starts the MCP session manager. Mounted
        inside another Starlette app, whose lifespan does not reach mounts, enter
        :meth:`running` in the parent's lifespan instead (once; not both).
        """
        return self._app

    def running(self) -> AbstractAsyncContextManager[None]:
        """The MCP session manager's run context, for a parent app's lifespan."""
        return self.server.session_manager.run()

    # -- tools -----------------------------------------------------------------------------

    def _register_tools(self) -> None:
        """One MCP tool per entry of the table, in its order."""
        for tool in TOOLS:
            self.server.add_tool(
                self._serve(tool),
                name=tool.name,
                description=render.description(tool),
                structured_output=False,
            )

    def _serve(self, tool: Tool) -> Callable[..., Awaitable[CallToolResult]]:
        """The MCP tool function for ``tool``: its arguments are the handler's (after the
        :class:`HiveCall`), plus the request context the server passes as ``ctx``."""
        arguments = list(inspect.signature(tool.handler, eval_str=True).parameters.values())[1:]

        async def serve(ctx: Context, **kwargs: Any) -> CallToolResult:
            return await self._tool(tool, ctx, kwargs)

        # The server reads the input schema from the signature: the handler's arguments.
        context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
        signature = inspect.Signature([*arguments, context], return_annotation=CallToolResult)
        setattr(serve, "__signature__", signature)  # noqa: B010 - a function's attribute
        serve.__name__ = serve.__qualname__ = tool.name
        return serve

    async def _tool(self, tool: Tool, ctx: Context, arguments: dict[str, Any]) -> CallToolResult:
        """Authenticate and authorize the caller of ``tool``, then run its handler for them."""
        headers = ctx.headers
        token = bearer_token(headers.get("authorization") if headers is not None else None)
        known = self._tokens.who(token)
        try:
            caller = authorize(known, tool.name, token_present=token is not None)
        except Refused as refused:
            who = known.agent if known is not None else "an unauthenticated caller"
            log.warning(
                "mcp: %s of %s refused before reaching the hive: %s", tool.name, who, refused
            )
            return _text(str(refused), is_error=True)
        try:
            result = await tool.handler(_HiveCall(self, tool.name, caller), **arguments)
        except _Refusal as refusal:
            return _text(refusal.text, is_error=True)
        return _text(result) if isinstance(result, str) else _text(*result)

    async def _call(
        self, tool: str, caller: Caller, fn: Callable[..., _T], *args: Any, **kwargs: Any
    ) -> _T:
        """Run ``fn(caller.agent, *args, **kwargs)`` in a worker thread under the call deadline.

        Raises _Refusal with the text for the model: the Refused message intact, a timeout
        notice, or a generic failure (the exception is logged with its traceback).
        """
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_calls)
        call = functools.partial(fn, caller.agent, *args, **kwargs)
        outcome: list[_T] = []
        try:
            # A thread cannot be interrupted: on the deadline the call is abandoned (it
            # finishes in the background, its result dropped) and the model is told the
            # outcome is unknown, so the endpoint never waits on a stuck hive.
            with anyio.move_on_after(self._timeout) as scope:
                outcome.append(
                    await anyio.to_thread.run_sync(
                        call, abandon_on_cancel=True, limiter=self._limiter
                    )
                )
        except Refused as refused:
            log.info("mcp: %s of %s refused by the hive: %s", tool, caller.agent, refused)
            raise _Refusal(str(refused)) from refused
        except Exception:
            log.exception("mcp: %s of %s failed inside the hive", tool, caller.agent)
            raise _Refusal(render.failed(tool)) from None
        if scope.cancelled_caught:
            log.error(
                "mcp: %s of %s got no answer from the hive within %gs; abandoned it",
                tool,
                caller.agent,
                self._timeout,
            )
            raise _Refusal(render.timed_out(tool, self._timeout))
        log.debug("mcp: %s of %s done", tool, caller.agent)
        return outcome[0]
