"""The operator's web: the GatewayActor, its apps, the JSON API, the live push path, the pages.

Modules, one concept each:

* ``actor``     GatewayActor (owns the web thread, the dashboard, the agent pages) and Endpoints
* ``app``       the dashboard app and an agent page's app, behind the security middleware
* ``endpoints`` the JSON API's routes (documented in docs/openapi.yaml)
* ``api``       what the handlers share: work off the loop with a deadline, errors as JSON
* ``forms``     strict form parsing (pure)
* ``ops``       the operator's decisions carried to the actors (blocking, bounded)
* ``reads``     snapshots and event pages from the store, in read transactions
* ``views``     the JSON views of rows and the per-agent tallies (pure)
* ``pump``      the push path: the hive's bell → the committed events → the fan-outs
* ``pages``     one site per agent on its own port, as agents come and go
* ``pty``       ``/ws/pty``: an xterm.js terminal on a shell in the agent's container
"""

from __future__ import annotations

from .actor import Endpoints, GatewayActor, ServedPages
from .app import GatewayContext, build_agent_app, build_dashboard_app, default_web_root

__all__ = [
    "Endpoints",
    "GatewayActor",
    "GatewayContext",
    "ServedPages",
    "build_agent_app",
    "build_dashboard_app",
    "default_web_root",
]
