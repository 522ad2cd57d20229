"""Telemetry: the running totals that ``/metrics`` reads at scrape time, shared across threads.

One :class:`Telemetry` per hive. The stats actor fills it (from the store when it starts, then
with every row it produces and every crash event it reads); the Prometheus collectors read a
:meth:`Telemetry.snapshot` from the web threads. It outlives a restart of the stats actor; a
restarted actor reloads it from the store, so the counters a dashboard plots survive a daemon
restart too: they are sums over stats rows and counts of events, not process memory.

Counter keys are the event keys whose running sum is a Prometheus counter: ``turns``,
``turn.duration_s``, ``turn.outcome.*``, ``turn.duration_le.*``, ``tool.*``,
``tokens.<type>@<model>``, ``cost_usd@<model>``, ``sent.<recipient>`` and ``received.<kind>``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import keys as k
from .series import Row

__all__ = [
    "CRASH_RESULTS",
    "COUNTER_KEYS_SQL",
    "Telemetry",
    "TelemetrySnapshot",
    "crash_label",
    "is_counter_key",
]

CRASH_RESULTS = ("restarted", "given_up")
"""What followed an agent's abnormal end (``hive_agent_crashes_total{result}``)."""

START_FAILED = "start_failed"

_COUNTER_PREFIXES = (
    k.OUTCOME_PREFIX, k.BUCKET_PREFIX, k.TOOL_PREFIX, k.COST_MODEL_PREFIX, k.SENT_PREFIX,
    k.RECEIVED_PREFIX,
)

COUNTER_KEYS_SQL = (
    f"key IN ('{k.TURNS}', '{k.TURN_DURATION}') "
    + " ".join(f"OR key GLOB '{prefix}*'" for prefix in _COUNTER_PREFIXES)
    + f" OR key GLOB '{k.TOKENS_PREFIX}*@*'"
)
"""The SQL condition selecting counter keys (must agree with :func:`is_counter_key`)."""


def is_counter_key(key: str) -> bool:
    """Whether ``key``'s running sum is exported as a counter."""
    if key in (k.TURNS, k.TURN_DURATION) or key.startswith(_COUNTER_PREFIXES):
        return True
    return key.startswith(k.TOKENS_PREFIX) and "@" in key


def crash_label(kind: str, payload: Mapping[str, Any]) -> str | None:
    """The counter an agent lifecycle event adds to: ``restarted``/``given_up`` (a crash and
    what the supervisor did about it), ``start_failed`` (a start that failed), or None."""
    if kind == "agent.restarting":
        return "restarted"
    if kind == "agent.given_up":
        return "given_up"
    if kind == "agent.crashed" and payload.get("phase") == "start":
        return START_FAILED
    return None


@dataclass(frozen=True)
class TelemetrySnapshot:
    """A consistent copy of the totals at one moment."""

    sums: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(agent, counter key) → the sum of its rows."""
    last_turn: Mapping[str, float] = field(default_factory=dict)
    """agent → wall-clock ts of its newest turn."""
    lifecycle: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(agent, restarted|given_up|start_failed) → how many events."""
    write_errors: int = 0
    """Stats writes that failed since this process started."""
    loaded: bool = False
    """Whether the totals were loaded from the store yet."""


class Telemetry:
    """Thread-safe running totals (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, str], float] = {}
        self._last_turn: dict[str, float] = {}
        self._lifecycle: Counter[tuple[str, str]] = Counter()
        self._write_errors = 0
        self._loaded = False

    def load(
        self,
        sums: Mapping[tuple[str, str], float],
        last_turn: Mapping[str, float],
        lifecycle: Mapping[tuple[str, str], int],
    ) -> None:
        """Replace the totals with what the store holds (the stats actor's start)."""
        with self._lock:
            self._sums = dict(sums)
            self._last_turn = dict(last_turn)
            self._lifecycle = Counter(lifecycle)
            self._loaded = True

    def add_rows(self, rows: Iterable[Row]) -> None:
        """Count a turn's rows (called as the turn is recorded, before its rows are written)."""
        with self._lock:
            for row in rows:
                if is_counter_key(row.key):
                    series = (row.agent, row.key)
                    self._sums[series] = self._sums.get(series, 0.0) + row.value
                if row.key == k.TURNS and row.ts > self._last_turn.get(row.agent, float("-inf")):
                    self._last_turn[row.agent] = row.ts

    def add_lifecycle(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Add lifecycle event counts, (agent, label) → n (see :func:`crash_label`)."""
        with self._lock:
            self._lifecycle.update(counts)

    def write_failed(self) -> None:
        """Count one failed stats write."""
        with self._lock:
            self._write_errors += 1

    def last_turn(self, agent: str) -> float | None:
        """When ``agent``'s newest turn ended (wall clock), if it had one."""
        with self._lock:
            return self._last_turn.get(agent)

    def snapshot(self) -> TelemetrySnapshot:
        """A copy the caller may read at leisure."""
        with self._lock:
            return TelemetrySnapshot(
                sums=MappingProxyType(dict(self._sums)),
                last_turn=MappingProxyType(dict(self._last_turn)),
                lifecycle=MappingProxyType(dict(self._lifecycle)),
                write_errors=self._write_errors,
                loaded=self._loaded,
            )
