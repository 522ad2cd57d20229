"""Prometheus collectors: the hive's state, read at scrape time, in a registry of its own.

:func:`build_registry` returns a fresh :class:`~prometheus_client.CollectorRegistry` per hive
(never the process-global one, so two hives — or two tests — never mix). Its one collector reads,
at each scrape:

- the :class:`~.telemetry.Telemetry` totals (turns, durations, tools, tokens, cost, lifecycle
  events — all derived from the store, see there);
- the store, on the reader's connection: agents and their states, inboxes, approvals, questions;
- the agents supervisor (``statistics`` and ``which_children``, each with a deadline): backoff
  and the agents' mailboxes; the directory's services' mailboxes;
- the web's :class:`~hive_actors.httpd.fanout_board.FanoutBoard`: live websocket clients, the
  live events sent to them, and the clients that fell behind (resynced from the log).

Names follow Prometheus' conventions: ``hive_`` prefix, base units (seconds), ``_total``
counters, a histogram for turn durations. Labels stay low-cardinality: agent, outcome, folded
tool names (:func:`~.keys.fold_tool`), model, token type, state, actor — never a message, turn
or session id. A source that cannot be read is skipped for that scrape, logged, and reported by
``hive_scrape_source_up{source}`` = 0.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hive_actors import __version__
from hive_actors.httpd.fanout_board import FanoutBoard
from hive_actors.services.directory import Directory
from hive_actors.store import Agent, AgentState, InboxStats, Store
from hive_actors.supervisors.client import SupervisorClient
from hive_actors.supervisors.messages import ChildInfo, ChildStats

from . import keys as k
from .reader import StatsReader
from .telemetry import CRASH_RESULTS, START_FAILED, Telemetry, TelemetrySnapshot

__all__ = ["SERVICES", "HiveCollector", "MetricsSource", "build_registry"]

log = logging.getLogger(__name__)

SERVICES = ("store", "bus", "approvals", "stats", "agents", "watcher", "gateway")
"""Directory names whose mailboxes are exported (``hive_actor_mailbox_depth{actor}``)."""

_STATES = tuple(s for s in AgentState if s is not AgentState.DESTROYED)


@dataclass
class MetricsSource:
    """Everything the collector reads."""

    telemetry: Telemetry
    reader: StatsReader
    directory: Directory | None = None
    """Where the agents supervisor and the services are found (None: skip them)."""
    wall: Callable[[], float] = time.time
    version: str = __version__
    timeout: float = 2.0
    """Deadline of each ask to the agents supervisor."""
    services: Sequence[str] = field(default=SERVICES)
    web: FanoutBoard | None = None
    """The gateway's fan-outs (None: no web families)."""
    notes_path: Callable[[str], Path] | None = None
    """An agent's notes.md (None: no notes families)."""
    notes_threshold: float | None = None
    """The notes compaction threshold, in bytes."""


@dataclass(frozen=True)
class _StoreView:
    agents: list[Agent]
    inbox: dict[str, InboxStats]
    approvals: int
    approval_age: float
    questions: int


def _read_store(store: Store, now: float) -> _StoreView:
    return _StoreView(
        agents=[a for a in store.registry.agents() if a.state is not AgentState.DESTROYED],
        inbox=store.messages.inbox_stats(now=now),
        approvals=store.approvals.pending_count(),
        approval_age=store.approvals.oldest_pending_age(now=now),
        questions=int(store.db.value("SELECT count(*) FROM questions WHERE answered IS NULL")),
    )


class HiveCollector(Collector):
    """Yields the hive's metric families at each scrape (see the module docstring)."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        # Nothing to pre-declare: registering must not trigger a (store-reading) collect.
        return []

    def collect(self) -> Iterator[Metric]:
        src = self.source
        now = src.wall()
        snap = src.telemetry.snapshot()
        info = InfoMetricFamily("hive_build", "The hive_actors version serving these metrics.")
        info.add_metric([], {"version": src.version})
        yield info
        yield from _turn_families(snap)
        up = GaugeMetricFamily(
            "hive_scrape_source_up",
            "1 if this scrape could read the source (store, agents supervisor), else 0.",
            labels=["source"],
        )
        view: _StoreView | None = None
        try:
            view = src.reader.use(lambda store: _read_store(store, now))
        except Exception as exc:
            log.warning("metrics: cannot read the store for this scrape: %s", exc)
        up.add_metric(["store"], 1.0 if view is not None else 0.0)
        stats, children = self._supervisor()
        up.add_metric(["agents"], 1.0 if stats is not None else 0.0)
        if view is not None:
            yield from _store_families(view, snap, now)
            if src.notes_path is not None:
                yield from _notes_families(view, src.notes_path, src.notes_threshold)
        yield from _lifecycle_families(snap, view, stats)
        yield self._mailboxes(children)
        errors = CounterMetricFamily(
            "hive_stats_write_errors",
            "Telemetry writes (and reads) the stats service could not do; each is logged.",
        )
        errors.add_metric([], float(snap.write_errors))
        yield errors
        if src.web is not None:
            yield from _web_families(src.web)
        yield up

    def _supervisor(self) -> tuple[list[ChildStats] | None, list[ChildInfo] | None]:
        directory = self.source.directory
        ref = directory.find("agents") if directory is not None else None
        if ref is None:
            return None, None
        client = SupervisorClient(ref, timeout=self.source.timeout)
        try:
            return client.statistics(), client.which_children()
        except Exception as exc:  # a timeout, or the supervisor restarting right now
            log.warning("metrics: the agents supervisor did not answer: %s", exc)
            return None, None

    def _mailboxes(self, children: list[ChildInfo] | None) -> Metric:
        family = GaugeMetricFamily(
            "hive_actor_mailbox_depth",
            "Messages waiting in an actor's mailbox (services by name, agents as agent:<name>).",
            labels=["actor"],
        )
        directory = self.source.directory
        refs: list[tuple[str, Any]] = []
        if directory is not None:
            refs.extend((name, directory.find(name)) for name in self.source.services)
        refs.extend((f"agent:{c.id}", c.ref) for c in children or ())
        for label, ref in refs:
            if ref is None:
                continue
            try:
                depth = ref.actor_inbox.qsize()
            except Exception:  # an actor gone between the lookup and now
                continue
            family.add_metric([label], float(depth))
        return family


@functools.lru_cache(maxsize=8192)
def _route(key: str) -> tuple[str, str, str] | None:
    """Which family a counter key feeds, and its label values (cached: keys repeat per agent)."""
    if key.startswith(k.OUTCOME_PREFIX):
        return "outcome", key[len(k.OUTCOME_PREFIX):], ""
    if key.startswith(k.TOOL_PREFIX):
        return "tool", k.fold_tool(key[len(k.TOOL_PREFIX):]), ""
    if key.startswith(k.TOKENS_PREFIX):
        kind, _, model = key[len(k.TOKENS_PREFIX):].partition("@")
        return ("tokens", kind, model) if model else None
    if key.startswith(k.COST_MODEL_PREFIX):
        return "cost", key[len(k.COST_MODEL_PREFIX):], ""
    if key.startswith(k.BUCKET_PREFIX):
        return "bucket", key[len(k.BUCKET_PREFIX):], ""
    if key == k.TURN_DURATION:
        return "duration", "", ""
    if key.startswith(k.SENT_PREFIX):
        return "sent", key[len(k.SENT_PREFIX):], ""
    if key.startswith(k.RECEIVED_PREFIX):
        return "received", key[len(k.RECEIVED_PREFIX):], ""
    return None


_BUCKET_LABELS = tuple(k.bucket_label(b) for b in k.DURATION_BUCKETS)


def _turn_families(snap: TelemetrySnapshot) -> Iterator[Metric]:
    turns = CounterMetricFamily(
        "hive_turns", "Finished turns by outcome.", labels=["agent", "outcome"]
    )
    tools = CounterMetricFamily(
        "hive_tool_calls",
        "Tool calls by tool (core tools and hive tools by name, other MCP servers as "
        "mcp__<server>, the rest as other).",
        labels=["agent", "tool"],
    )
    tokens = CounterMetricFamily(
        "hive_tokens", "Tokens used, by answering model and type.",
        labels=["agent", "model", "type"],
    )
    cost = CounterMetricFamily(
        "hive_cost_usd", "Cost of the turns in US dollars (the CLI's estimate), by model.",
        labels=["agent", "model"],
    )
    durations = HistogramMetricFamily(
        "hive_turn_duration_seconds", "Wall time of finished turns.", labels=["agent"]
    )
    sent = CounterMetricFamily(
        "hive_messages_sent",
        "Messages the agent sent during its turns, by recipient (peer, operator: questions, "
        "manager, system).",
        labels=["agent", "recipient"],
    )
    received = CounterMetricFamily(
        "hive_messages_received",
        "Messages the agent's turns consumed, by kind (who sent them).",
        labels=["agent", "kind"],
    )
    outcomes: dict[str, dict[str, float]] = defaultdict(dict)
    folded: dict[tuple[str, str], float] = defaultdict(float)
    buckets: dict[str, dict[str, float]] = defaultdict(dict)
    duration_sum: dict[str, float] = {}
    for (agent, key), value in snap.sums.items():
        route = _route(key)
        if route is None:
            continue
        family, first, second = route
        if family == "outcome":
            outcomes[agent][first] = value
        elif family == "tool":
            folded[(agent, first)] += value
        elif family == "tokens":
            tokens.add_metric([agent, second, first], value)
        elif family == "cost":
            cost.add_metric([agent, first], value)
        elif family == "bucket":
            buckets[agent][first] = value
        elif family == "sent":
            if value:  # a recipient kind the agent never sent to is no series (cardinality)
                sent.add_metric([agent, first], value)
        elif family == "received":
            if value:
                received.add_metric([agent, first], value)
        else:
            duration_sum[agent] = value
    for agent in sorted(set(outcomes) | set(buckets)):
        # Every outcome from the first turn on, so rate() sees the first failure too.
        for outcome in k.OUTCOMES:
            turns.add_metric([agent, outcome], outcomes[agent].get(outcome, 0.0))
    for (agent, tool), value in sorted(folded.items()):
        tools.add_metric([agent, tool], value)
    for agent in sorted(buckets):
        cumulative = 0.0
        series: list[tuple[str, float]] = []
        counts = buckets[agent]
        for label in _BUCKET_LABELS:
            cumulative += counts.get(label, 0.0)
            series.append((label, cumulative))
        durations.add_metric([agent], series, sum_value=duration_sum.get(agent, 0.0))
    yield turns
    yield durations
    yield tools
    yield tokens
    yield cost
    yield sent
    yield received


def _notes_families(
    view: _StoreView, notes_path: Callable[[str], Path], threshold: float | None
) -> Iterator[Metric]:
    size = GaugeMetricFamily(
        "hive_notes_bytes", "Size of the agent's notes.md (no sample: it has none).",
        labels=["agent"],
    )
    for agent in view.agents:
        try:
            size.add_metric([agent.name], float(notes_path(agent.name).stat().st_size))
        except OSError:
            continue
    yield size
    if threshold is not None:
        yield GaugeMetricFamily(
            "hive_notes_compaction_threshold_bytes",
            "notes.md larger than this is compacted after a turn.", value=threshold,
        )


def _store_families(view: _StoreView, snap: TelemetrySnapshot, now: float) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "hive_inbox_depth", "Undelivered messages (queued and in flight).", labels=["agent"]
    )
    oldest = GaugeMetricFamily(
        "hive_inbox_oldest_age_seconds",
        "Age of the oldest undelivered message (0 when the inbox is empty).",
        labels=["agent"],
    )
    state = GaugeMetricFamily(
        "hive_agent_state", "1 for the agent's current state, 0 for the others.",
        labels=["agent", "state"],
    )
    since = GaugeMetricFamily(
        "hive_seconds_since_last_turn",
        "Seconds since the agent's last turn ended (since it was registered, if none yet).",
        labels=["agent"],
    )
    for agent in view.agents:
        stats = view.inbox.get(agent.name)
        depth.add_metric([agent.name], float(stats.depth if stats else 0))
        oldest.add_metric([agent.name], float(stats.oldest_age if stats else 0.0))
        for candidate in _STATES:
            hot = 1.0 if agent.state is candidate else 0.0
            state.add_metric([agent.name, candidate.value], hot)
        last = snap.last_turn.get(agent.name, agent.created)
        since.add_metric([agent.name], max(0.0, now - last))
    yield depth
    yield oldest
    yield state
    yield since
    yield GaugeMetricFamily(
        "hive_approvals_pending", "Approvals waiting for the operator.", value=view.approvals
    )
    yield GaugeMetricFamily(
        "hive_approval_oldest_age_seconds",
        "How long the oldest pending approval has waited (0 when none).",
        value=view.approval_age,
    )
    yield GaugeMetricFamily(
        "hive_questions_pending", "Operator questions not answered yet.", value=view.questions
    )
    yield GaugeMetricFamily(
        "hive_agents_given_up",
        "Agents given up after too many restarts (they stay down until the operator acts).",
        value=sum(1 for a in view.agents if a.state is AgentState.GIVEN_UP),
    )


def _lifecycle_families(
    snap: TelemetrySnapshot, view: _StoreView | None, stats: list[ChildStats] | None
) -> Iterator[Metric]:
    restarts = CounterMetricFamily(
        "hive_agent_restarts", "Restarts of the agent by its supervisor (from the event log).",
        labels=["agent"],
    )
    crashes = CounterMetricFamily(
        "hive_agent_crashes",
        "Abnormal ends of the agent, by what followed: restarted or given_up.",
        labels=["agent", "result"],
    )
    start_failures = CounterMetricFamily(
        "hive_agent_start_failures", "Starts of the agent that failed.", labels=["agent"]
    )
    backoff = GaugeMetricFamily(
        "hive_agent_backoff_seconds",
        "The restart delay the agent is waiting out (0 unless it is in backoff).",
        labels=["agent"],
    )
    counts: Mapping[tuple[str, str], int] = snap.lifecycle
    agents = {agent for agent, _ in counts} | {a.name for a in (view.agents if view else ())}
    for agent in sorted(agents):
        restarts.add_metric([agent], float(counts.get((agent, "restarted"), 0)))
        for result in CRASH_RESULTS:
            crashes.add_metric([agent, result], float(counts.get((agent, result), 0)))
        start_failures.add_metric([agent], float(counts.get((agent, START_FAILED), 0)))
    for child in stats or ():
        waiting = child.backoff if child.state == "backoff" else 0.0
        backoff.add_metric([child.id], float(waiting))
    yield restarts
    yield crashes
    yield start_failures
    yield backoff


def _web_families(board: FanoutBoard) -> Iterator[Metric]:
    totals = board.totals()
    clients = GaugeMetricFamily(
        "hive_web_clients",
        "Live websocket clients of the dashboard and of the agents' pages.",
        labels=["page"],
    )
    sent = CounterMetricFamily(
        "hive_web_events_sent",
        "Live events sent to websocket clients: as one shared frame (path=shared) or through "
        "a client's own queue (path=queued: it was busy or its connection compresses).",
        labels=["page", "path"],
    )
    resyncs = CounterMetricFamily(
        "hive_web_resyncs",
        "Websocket clients that fell behind the live events and were resynced from the log.",
        labels=["page"],
    )
    for page, t in totals.items():
        clients.add_metric([page], float(t.clients))
        sent.add_metric([page, "shared"], float(t.shared))
        sent.add_metric([page, "queued"], float(t.queued))
        resyncs.add_metric([page], float(t.resyncs))
    yield clients
    yield sent
    yield resyncs


def build_registry(source: MetricsSource) -> CollectorRegistry:
    """A fresh registry holding the hive's collector (serve it with :mod:`.routes`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HiveCollector(source))
    return registry

