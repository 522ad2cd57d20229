"""The web plumbing under the GatewayActor: binds, ports, security, the server thread, fan-out.

Modules, one concept each:

* ``ports``      the per-agent web port rule (port file / legacy hash / fresh probe)
* ``binds``      listening sockets: SO_REUSEADDR, bounded retries, a clear error
* ``security``   the policy (the operator token on every bind; Host checked on loopback), the
  one-time login codes and the pure checks
* ``middleware`` the ASGI security middleware (Host, Origin, token, body limit, /login)
* ``static``     static files from ``web/`` that cannot escape it
* ``server``     one asyncio thread serving many uvicorn sites
* ``fanout``     live events to browsers over ``/ws``, resumable, never blocking publishers
* ``fanout_types`` what the fan-out is given (events, snapshots) and its limits
* ``asgi``       ASGI types and JSON error responses

Putting a site together (what the GatewayActor does)::

    policy, token = policy_for_bind(host, token_file)   # the token file: 0600, made once
    print(f"log in: http://{host}:8000/login?code={policy.logins.mint()}")
    app = SecurityMiddleware(Starlette(routes=[..., WebSocketRoute("/ws", fanout),
                                               Mount("/", StaticFiles(web_root))]), policy)
    port = web_server.add_site("dashboard", host, 8000, app)
"""

from __future__ import annotations

from .binds import backoff_delays, bind_listener
from .fanout import Fanout
from .fanout_types import ClientInfo, EventLike, FanoutLimits, Snapshot, event_to_dict
from .middleware import SecurityMiddleware
from .ports import PORT_FILE, agent_web_port, decide_port, port_hash
from .security import (
    OperatorToken,
    Rejection,
    SecurityPolicy,
    check_request,
    is_loopback,
    load_or_create_token,
    policy_for_bind,
)
from .server import SiteInfo, SiteOptions, WebServer
from .static import StaticFiles, resolve_static_path

__all__ = [
    "PORT_FILE",
    "ClientInfo",
    "EventLike",
    "Fanout",
    "FanoutLimits",
    "OperatorToken",
    "Rejection",
    "SecurityMiddleware",
    "SecurityPolicy",
    "SiteInfo",
    "SiteOptions",
    "Snapshot",
    "StaticFiles",
    "WebServer",
    "agent_web_port",
    "backoff_delays",
    "bind_listener",
    "check_request",
    "decide_port",
    "event_to_dict",
    "is_loopback",
    "load_or_create_token",
    "policy_for_bind",
    "port_hash",
    "resolve_static_path",
]
