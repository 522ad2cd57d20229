"""The hive's supervision tree, defined once: what runs, in which order, under which rules.

::

    hive        root supervisor (rest_for_one: a child restarts those started after it)
    ├── store      StoreActor         sqlite file, hive lock, start-up recovery
    ├── bus        BusActor           inboxes, group commit, model override
    ├── approvals  ApprovalQueueActor approvals and operator questions
    ├── stats      StatsActor         telemetry rows, retention
    ├── agents     AgentsSupervisor   one AgentActor per agent (backoff, give-up)
    ├── watcher    CrashWatcherActor  container exits from the backend; container@*.service
    │                                 units on D-Bus when [hive] backend = "nixos" or
    │                                 [watcher] bus_address is set, hive-agent@*.service
    │                                 for [hive] backend = "nspawn" in unit mode
    └── gateway    GatewayActor       dashboard, JSON API, websocket, /hive/mcp

:func:`hive_tree` builds it from a configuration and a :class:`TreeStarts` (what starts each
child: the :class:`~hive_actors.daemon.Daemon` and its wiring). Building it starts nothing and
opens no file: the daemon runs :meth:`TreeSpec.children` under its root, and ``hive tree``
prints :meth:`TreeSpec.describe` of the same definition built with :class:`DescribeOnly`,
whose starts are never called — so it works beside a running hive on the same state dir.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from pykka import ActorRef

from hive_actors.agent.supervisor import AgentsSupervisor
from hive_actors.config import HiveConfig
from hive_actors.containers.registry import backend_kind
from hive_actors.hive import ROOT_FLAGS, agents_flags
from hive_actors.supervisors.spec import Backoff, ChildSpec, RestartLimit, SupervisorFlags

__all__ = [
    "DescribeOnly",
    "Node",
    "Supervises",
    "TreeSpec",
    "TreeStarts",
    "backend_units",
    "hive_tree",
    "reads_dbus",
    "watched_units",
    "watcher_address",
]


class TreeStarts(Protocol):
    """What starts each child of the hive's tree (called by the root supervisor only)."""

    def start_store(self) -> ActorRef[Any]: ...

    def start_bus(self) -> ActorRef[Any]: ...

    def start_approvals(self) -> ActorRef[Any]: ...

    def start_stats(self) -> ActorRef[Any]: ...

    def start_agents(self, flags: SupervisorFlags, limit: RestartLimit) -> ActorRef[Any]: ...

    def start_watcher(self) -> ActorRef[Any]: ...

    def start_gateway(self) -> ActorRef[Any]: ...


class DescribeOnly:
    """A :class:`TreeStarts` for a tree that is only described: every start refuses."""

    def _refuse(self) -> ActorRef[Any]:
        raise RuntimeError("this tree is only described (hive tree); nothing of it starts")

    def start_store(self) -> ActorRef[Any]:
        return self._refuse()

    def start_bus(self) -> ActorRef[Any]:
        return self._refuse()

    def start_approvals(self) -> ActorRef[Any]:
        return self._refuse()

    def start_stats(self) -> ActorRef[Any]:
        return self._refuse()

    def start_agents(self, flags: SupervisorFlags, limit: RestartLimit) -> ActorRef[Any]:
        return self._refuse()

    def start_watcher(self) -> ActorRef[Any]:
        return self._refuse()

    def start_gateway(self) -> ActorRef[Any]:
        return self._refuse()


def backend_units(config: HiveConfig) -> str | None:
    """The template name of the configured backend's units (``container`` for NixOS,
    ``hive-agent`` for nspawn in unit mode), None when its containers are no systemd units
    (:meth:`~hive_actors.containers.registry.BackendKind.unit_prefix`, the one rule)."""
    kind = backend_kind(config.backend, source=config.source)
    options = dataclasses.asdict(getattr(config, kind.section)) if kind.section else {}
    return kind.unit_prefix(options)


def watched_units(config: HiveConfig) -> str:
    """The units the CrashWatcherActor reads on D-Bus: ``<this>@*.service`` (the backend's,
    else NixOS's ``container`` for a ``[watcher] bus_address`` alone)."""
    return backend_units(config) or "container"


def watcher_address(config: HiveConfig) -> str | None:
    """The D-Bus the watcher reads: ``[watcher] bus_address``, else the bus the nspawn
    backend's units are asked of (``[nspawn] bus_address`` in unit mode), else the system bus
    (None)."""
    if config.watcher.bus_address:
        return config.watcher.bus_address
    if config.backend == "nspawn" and backend_units(config) and config.nspawn.bus_address:
        return config.nspawn.bus_address
    return None


def reads_dbus(config: HiveConfig) -> bool:
    """Whether the CrashWatcherActor (in the tree on every backend, fed the backend's container
    exits) also reads systemd's units on D-Bus: a backend whose containers are systemd units
    (:func:`backend_units`: NixOS's ``container@*.service``, the nspawn backend's
    ``hive-agent@*.service`` in unit mode), or any backend given a ``[watcher] bus_address``."""
    return backend_units(config) is not None or bool(config.watcher.bus_address)


def watcher_feeds(config: HiveConfig) -> str:
    """What the CrashWatcherActor hears of containers ending, in words (``hive tree``)."""
    feeds = "container exits from the backend"
    if reads_dbus(config):
        where = watcher_address(config) or "the system bus"
        feeds += f"; {watched_units(config)}@*.service units on D-Bus ({where})"
    return feeds


@dataclass(frozen=True)
class Supervises:
    """What a child that is itself a supervisor supervises."""

    flags: SupervisorFlags
    """Its own flags (strategy, intensity, backoff)."""
    children: str
    """Its children in words, e.g. ``AgentActor, one per agent``."""
    limit: RestartLimit | None = None
    """Each child's own restart limit (past it the child is given up)."""
    concurrent_starts: int = 1
    """Children on their way to ready at once."""


@dataclass(frozen=True)
class Node:
    """One child of the root: its spec, what runs in it and, for a supervisor, below it."""

    spec: ChildSpec
    runs: str
    """The actor class that runs, e.g. ``StoreActor``."""
    supervises: Supervises | None = None
    note: str = ""
    """What it works from, in words, where that depends on the configuration."""


@dataclass(frozen=True)
class TreeSpec:
    """The root's flags and its children, in start order."""

    flags: SupervisorFlags
    nodes: tuple[Node, ...]

    def children(self) -> list[ChildSpec]:
        """The root's child specs, in start order (what the root supervisor runs)."""
        return [node.spec for node in self.nodes]

    def describe(self, name: str = "hive") -> str:
        """The tree as indented lines: every child with its restart type, shutdown and ready
        timeouts, and every supervisor with its strategy, limits and backoff."""
        lines = [f"{name}  [{_flags(self.flags)}]"]
        for node in self.nodes:
            spec = node.spec
            runs = f"{node.runs}: {node.note}" if node.note else node.runs
            line = f"    {spec.id}  {runs}  ({_child(spec)})"
            sup = node.supervises
            if sup is None:
                lines.append(line)
                continue
            lines.append(f"{line}  [{_flags(sup.flags)}]")
            below = [f"{sup.children}, at most {sup.concurrent_starts} starting at once"]
            if sup.limit is not None:
                below.append(f"each {_limit(sup.limit)}")
            lines.append(f"        <name> …  {'; '.join(below)}")
        return "\n".join(lines)


def _child(spec: ChildSpec) -> str:
    restart = getattr(spec.restart, "value", spec.restart)
    text = f"{restart}, shutdown {spec.shutdown:g} s, ready within {spec.ready_timeout:g} s"
    return text if spec.limit is None else f"{text}, {_limit(spec.limit)}"


def _flags(flags: SupervisorFlags) -> str:
    strategy = getattr(flags.strategy, "value", flags.strategy)
    return (f"supervisor {strategy}, at most {flags.intensity} restarts in {flags.period:g} s, "
            f"{_backoff(flags.backoff)}")


def _backoff(backoff: Backoff) -> str:
    return (f"backoff {backoff.min:g}-{backoff.max:g} s x{backoff.factor:g} "
            f"±{backoff.jitter:.0%}, reset after {backoff.reset_after:g} s up")


def _limit(limit: RestartLimit) -> str:
    text = f"given up past {limit.intensity} restarts in {limit.period:g} s"
    if limit.consecutive is not None:
        text += f" or {limit.consecutive} failures in a row"
    return text


def hive_tree(config: HiveConfig, starts: TreeStarts) -> TreeSpec:
    """The hive's tree for ``config``; each child started by ``starts`` (only when the root
    supervisor starts it — building the tree starts nothing)."""
    agents_sup, agent_limit = agents_flags(config.supervision)
    nodes = [
        Node(ChildSpec("store", starts.start_store, shutdown=30.0), "StoreActor"),
        Node(ChildSpec("bus", starts.start_bus, shutdown=30.0), "BusActor"),
        Node(ChildSpec("approvals", starts.start_approvals, shutdown=30.0),
             "ApprovalQueueActor"),
        Node(ChildSpec("stats", starts.start_stats, shutdown=30.0), "StatsActor"),
        Node(
            ChildSpec(
                AgentsSupervisor.SERVICE,
                lambda: starts.start_agents(agents_sup, agent_limit),
                shutdown=180.0,
                ready_timeout=300.0,
            ),
            AgentsSupervisor.__name__,
            Supervises(
                agents_sup,
                "AgentActor, one per agent (dynamic), each in "
                f"{backend_kind(config.backend).summary}",
                limit=agent_limit,
                concurrent_starts=AgentsSupervisor.concurrent_starts,
            ),
        ),
    ]
    nodes.append(Node(
        ChildSpec("watcher", starts.start_watcher, shutdown=30.0, ready_timeout=30.0),
        "CrashWatcherActor",
        note=watcher_feeds(config),
    ))
    nodes.append(Node(
        ChildSpec("gateway", starts.start_gateway, shutdown=30.0, ready_timeout=60.0),
        "GatewayActor",
    ))
    return TreeSpec(ROOT_FLAGS, tuple(nodes))
