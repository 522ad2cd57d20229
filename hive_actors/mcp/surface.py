"""The hive MCP surface: one streamable-HTTP endpoint (``/mcp``) that every agent's CLI calls.

::

    tokens = TokenBook()
    surface = HiveSurface(ops, tokens)              # ops: the hive's HiveOps
    app = surface.asgi_app()                        # serve it, or mount it in the gateway
    token = tokens.issue("alice", Role.AGENT)       # at alice's spawn
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
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent
from pydantic import Field
from starlette.types import ASGIApp

from hive_actors.errors import ConfigError, Refused

from . import render
from .guard import BearerGuard
from .ops import HiveOps
from .rules import authorize
from .tokens import Caller, TokenBook, bearer_token

__all__ = ["DEFAULT_CALL_TIMEOUT_S", "LOOPBACK_HOSTS", "HiveSurface"]

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT_S = 30.0
"""How long a tool waits for the hive before it answers the model with a timeout."""

LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1:*", "localhost:*", "[::1]:*")
"""``Host`` headers accepted by default (DNS-rebinding protection)."""

_T = TypeVar("_T")

AgentName = Annotated[
    str, Field(description="An agent's name: 1-11 lower-case letters, digits or '-'.")
]
ConfigRef = Annotated[
    str, Field(description="A commit of the agent's config repository (a hash or a ref).")
]


def _text(*blocks: str, is_error: bool = False) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=block) for block in blocks], is_error=is_error
    )


class _Refusal(Exception):
    """Internal: a tool call ends with this error text for the model."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


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
            instructions=(
                "The hive's message bus and the manager's requests to the operator. You are "
                "always identified by your own credentials; send and recv are for every agent, "
                "the request_* tools, apply_commit, ask_operator, agent_status and revive for the "
                "manager only."
            ),
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
        d = render.DESCRIPTIONS

        async def send(
            to: Annotated[str, Field(description="The recipient agent's name.")],
            body: Annotated[str, Field(description="The message text.")],
            ctx: Context,
        ) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                message_id = await self._call("send", caller, self._ops.send, to, body)
                return _text(render.sent(message_id, to))

            return await self._tool("send", ctx, run)

        async def recv(ctx: Context) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                messages = await self._call("recv", caller, self._ops.recv)
                return _text(*render.inbox(messages))

            return await self._tool("recv", ctx, run)

        async def request_spawn(name: AgentName, ctx: Context) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                approval = await self._call("request_spawn", caller, self._ops.request_spawn, name)
                return _text(render.approval_queued(approval, f"spawn of {name}"))

            return await self._tool("request_spawn", ctx, run)

        async def request_spawn_draft(name: AgentName, ctx: Context) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                draft = await self._call(
                    "request_spawn_draft", caller, self._ops.request_spawn_draft, name
                )
                return _text(render.draft_staged(draft))

            return await self._tool("request_spawn_draft", ctx, run)

        async def request_spawn_commit(
            name: AgentName, ref: ConfigRef, ctx: Context
        ) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                approval = await self._call(
                    "request_spawn_commit", caller, self._ops.request_spawn_commit, name, ref
                )
                return _text(render.approval_queued(approval, f"spawn of draft {name} @ {ref}"))

            return await self._tool("request_spawn_commit", ctx, run)

        async def apply_commit(name: AgentName, ref: ConfigRef, ctx: Context) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                approval = await self._call(
                    "apply_commit", caller, self._ops.apply_commit, name, ref
                )
                return _text(render.approval_queued(approval, f"config {ref} for {name}"))

            return await self._tool("apply_commit", ctx, run)

        async def ask_operator(
            question: Annotated[str, Field(description="The question, self-contained.")],
            ctx: Context,
        ) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                question_id = await self._call(
                    "ask_operator", caller, self._ops.ask_operator, question
                )
                return _text(render.question_asked(question_id))

            return await self._tool("ask_operator", ctx, run)

        async def agent_status(name: AgentName, ctx: Context) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                status = await self._call("agent_status", caller, self._ops.agent_status, name)
                return _text(render.agent_status(status))

            return await self._tool("agent_status", ctx, run)

        async def revive(name: AgentName, ctx: Context) -> CallToolResult:
            async def run(caller: Caller) -> CallToolResult:
                revival = await self._call("revive", caller, self._ops.revive, name)
                return _text(render.revived(revival))

            return await self._tool("revive", ctx, run)

        for fn in (
            send,
            recv,
            request_spawn,
            request_spawn_draft,
            request_spawn_commit,
            apply_commit,
            ask_operator,
            agent_status,
            revive,
        ):
            self.server.add_tool(
                fn, name=fn.__name__, description=d[fn.__name__], structured_output=False
            )

    async def _tool(
        self,
        tool: str,
        ctx: Context,
        run: Callable[[Caller], Awaitable[CallToolResult]],
    ) -> CallToolResult:
        """Authenticate and authorize the caller of ``tool``, then ``run`` it for them."""
        headers = ctx.headers
        token = bearer_token(headers.get("authorization") if headers is not None else None)
        known = self._tokens.who(token)
        try:
            caller = authorize(known, tool, token_present=token is not None)
        except Refused as refused:
            who = known.agent if known is not None else "an unauthenticated caller"
            log.warning("mcp: %s of %s refused before reaching the hive: %s", tool, who, refused)
            return _text(str(refused), is_error=True)
        try:
            return await run(caller)
        except _Refusal as refusal:
            return _text(refusal.text, is_error=True)

    async def _call(self, tool: str, caller: Caller, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(caller.agent, *args)`` in a worker thread under the call deadline.

        Raises _Refusal with the text for the model: the Refused message intact, a timeout
        notice, or a generic failure (the exception is logged with its traceback).
        """
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_calls)
        call = functools.partial(fn, caller.agent, *args)
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
