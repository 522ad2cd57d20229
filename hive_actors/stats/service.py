"""HiveTelemetry: one hive's telemetry, wired — the totals, the stats actor's child spec, the
read connection, the Prometheus registry, the routes and the optional metrics port.

The hive's assembly uses it like this::

    telemetry = HiveTelemetry(hive)
    children.insert(3, telemetry.child_spec())           # after approvals, before agents
    runtime = AgentRuntime(..., on_turn_end=telemetry.on_turn_end)
    routes += telemetry.routes()                         # GET /api/stats, GET /metrics
    metrics_server = telemetry.serve_metrics()           # None unless [web] metrics_port
    # ... the hive runs ...
    telemetry.close()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.routing import Route

from hive_actors.clock import Clock
from hive_actors.hive import Hive
from hive_actors.httpd.fanout_board import FanoutBoard
from hive_actors.supervisors.spec import ChildSpec

from .actor import HeldTurns, StatsActor
from .config import StatsConfig
from .metrics import MetricsSource, build_registry
from .reader import StatsReader
from .routes import MetricsServer, serve_metrics, stats_routes
from .telemetry import Telemetry

__all__ = ["HiveTelemetry"]


class HiveTelemetry:
    """Everything telemetry for one hive (see the module docstring)."""

    def __init__(
        self,
        hive: Hive,
        config: StatsConfig | None = None,
        *,
        clock: Clock | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.hive = hive
        self.config = config or StatsConfig()
        self.clock = clock
        self.wall = wall
        self.telemetry = Telemetry()
        """The running totals; shared by the stats actor (writer) and the collectors."""
        self.held = HeldTurns()
        """Turn records that ended while the stats actor was down, for the next one."""
        self.reader = StatsReader(hive.open_store)
        """The web side's read connection."""
        self.web = FanoutBoard()
        """The gateway's fan-outs, exported as ``hive_web_*``."""
        self.registry: CollectorRegistry = build_registry(
            MetricsSource(
                self.telemetry,
                self.reader,
                hive.directory,
                wall=wall,
                timeout=self.config.scrape_timeout,
                web=self.web,
                notes_path=lambda agent: hive.agent_paths(agent).state / "notes.md",
                notes_threshold=float(self.config.notes_threshold),
            )
        )
        """This hive's Prometheus registry (never the global one)."""
        self.metrics_tokens: tuple[str, ...] = ()
        """Bearer tokens ``GET /metrics`` accepts (empty: open); the hive's assembly sets
        them from its security policy before the gateway starts."""

    def child_spec(self) -> ChildSpec:
        """The ``stats`` child of the root supervisor."""
        return ChildSpec(
            StatsActor.SERVICE,
            lambda: StatsActor.start(
                self.hive, self.telemetry, config=self.config, clock=self.clock, wall=self.wall,
                held=self.held,
            ),
            shutdown=30.0,
        )

    def on_turn_end(self, record: Any) -> None:
        """``AgentRuntime.on_turn_end``: hand a TurnRecord to the stats actor.

        A tell: the agent never waits for telemetry. While the stats actor is down (being
        restarted) the record is held, and the next one counts it at its first sampling tick.
        """
        if not self.hive.directory.tell(StatsActor.SERVICE, record):
            self.held.hold(record)

    def routes(self) -> list[Route]:
        """``GET /api/stats`` and ``GET /metrics`` for the gateway's app."""
        return stats_routes(
            self.reader, self.registry, wall=self.wall, metrics_tokens=self.metrics_tokens,
            thresholds={"notes.bytes": float(self.config.notes_threshold)},
        )

    def serve_metrics(self) -> MetricsServer | None:
        """Serve ``/metrics`` on ``[web] metrics_port`` too, if it is set (else None)."""
        port = self.hive.config.web.metrics_port
        if not port:
            return None
        return serve_metrics(
            self.registry, host=self.hive.config.web.host, port=port,
            metrics_tokens=self.metrics_tokens,
        )

    def close(self) -> None:
        """Close the read connection."""
        self.reader.close()
