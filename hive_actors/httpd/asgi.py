"""Small ASGI vocabulary shared by the web modules: types, headers, JSON error responses.

Every error the web layer answers is JSON ``{"error": "<what was wrong and how to fix it>"}``
with a 4xx status, for HTTP requests and for refused websocket handshakes alike (the latter
through the ASGI ``websocket.http.response`` extension, which uvicorn's websockets-sansio
protocol supports; without it the handshake is refused with a plain 403).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = [
    "ASGIApp",
    "Headers",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "header_map",
    "send_json",
    "send_json_error",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = Iterable[tuple[str, str]]

JSON_TYPE = "application/json"


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (the first value of a repeated header wins).

    Names are ASCII; values are decoded as latin-1, as HTTP/1.1 defines them.
    """
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        out.setdefault(name, raw_value.decode("latin-1"))
    return out


async def send_json(
    scope: Scope, send: Send, status: int, body: Any, headers: Headers = ()
) -> None:
    """Answer with a JSON body: an HTTP response, or a refused websocket handshake."""
    data = json.dumps(body).encode("utf-8")
    all_headers = [
        (b"content-type", JSON_TYPE.encode()),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ] + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            # No way to send a body: a bare close before accept is a 403 handshake refusal.
            await send({"type": "websocket.close", "code": 1008})
            return
        prefix = "websocket.http.response"
    else:
        prefix = "http.response"
    await send({"type": f"{prefix}.start", "status": status, "headers": all_headers})
    await send({"type": f"{prefix}.body", "body": data})


async def send_json_error(
    scope: Scope, send: Send, status: int, error: str, headers: Headers = ()
) -> None:
    """Answer ``{"error": error}`` with ``status``."""
    await send_json(scope, send, status, {"error": error}, headers)
