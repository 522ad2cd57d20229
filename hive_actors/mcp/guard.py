"""The bearer guard: an ASGI middleware that refuses a request without a live hive token.

It answers ``401`` before the MCP layer sees anything, so an unknown caller cannot open a
session, list tools or learn anything but that it is refused. The tools check the token again
(a token may be revoked between the guard and the tool), so the guard is the first of two
locks, not the only one.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from .tokens import TokenBook, bearer_token

__all__ = ["BearerGuard"]

log = logging.getLogger(__name__)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class BearerGuard:
    """Pass HTTP requests whose ``Authorization: Bearer`` token is live; answer 401 else."""

    def __init__(self, app: ASGIApp, tokens: TokenBook, *, realm: str = "hive") -> None:
        self.app = app
        self.tokens = tokens
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # lifespan passes through; websockets are not part of the MCP surface.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        token = bearer_token(_header(scope, b"authorization"))
        if token is not None and self.tokens.who(token) is not None:
            await self.app(scope, receive, send)
            return
        reason = "missing" if token is None else "unknown, revoked or expired"
        client = scope.get("client")
        # Never log the token itself: a guess logged is a guess kept.
        log.warning(
            "mcp: refused %s %s from %s: hive token %s",
            scope.get("method"),
            scope.get("path"),
            f"{client[0]}:{client[1]}" if client else "?",
            reason,
        )
        body = json.dumps(
            {
                "error": "unauthorized",
                "message": (
                    f"hive MCP: the bearer token is {reason}. Each agent's --mcp-config carries "
                    "its own 'Authorization: Bearer' header, written by the host for one turn: "
                    "a token is valid only while the turn it was issued for runs"
                ),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f'Bearer realm="{self.realm}"'.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
