"""Telemetry: stats rows in sqlite, the stats API, Prometheus ``/metrics``.

Modules: ``keys`` (the series vocabulary), ``series`` (pure: turn → rows, sampling → rows),
``retention`` (pure downsampling plan), ``telemetry`` (the running totals ``/metrics`` reads),
``storage`` (the stats actor's sqlite I/O), ``actor`` (StatsActor, the ``stats`` service; its
docstring lists every series), ``query`` (the stats API's validation and uPlot-shaped answer),
``reader`` (the web side's read connection), ``metrics`` (collectors, a registry per hive),
``exposition`` (a fast text encoder equal to prometheus-client's), ``routes`` (Starlette
routes, a separate metrics port), ``service`` (HiveTelemetry: all of it wired for one hive).
"""

from __future__ import annotations

from .actor import FlushStats, RetainNow, RetentionReport, SampleNow, StatsActor
from .config import StatsConfig
from .exposition import encode_text
from .keys import HIVE_AGENT
from .metrics import HiveCollector, MetricsSource, build_registry
from .query import BadStatsQuery, StatsQuery, answer, answer_json, parse_query, run_query
from .reader import StatsReader
from .retention import RetentionPolicy
from .routes import MetricsServer, metrics_response, serve_metrics, stats_routes
from .series import Row
from .service import HiveTelemetry
from .telemetry import Telemetry, TelemetrySnapshot

__all__ = [
    "HIVE_AGENT",
    "BadStatsQuery",
    "FlushStats",
    "HiveCollector",
    "HiveTelemetry",
    "MetricsServer",
    "MetricsSource",
    "RetainNow",
    "RetentionPolicy",
    "RetentionReport",
    "Row",
    "SampleNow",
    "StatsActor",
    "StatsConfig",
    "StatsQuery",
    "StatsReader",
    "Telemetry",
    "TelemetrySnapshot",
    "answer",
    "answer_json",
    "build_registry",
    "encode_text",
    "metrics_response",
    "parse_query",
    "run_query",
    "serve_metrics",
    "stats_routes",
]
