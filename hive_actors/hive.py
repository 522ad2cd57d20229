"""What the hive's services share, the root's and the agents' flags, and the core's starts.

The tree itself is defined once, in :mod:`hive_actors.tree`: store, bus, approvals, stats,
agents (AgentsSupervisor: one_for_one, dynamic children, one AgentActor per agent), the crash
watcher when configured, and the gateway.

``rest_for_one`` restarts exactly what depends on a failed child: a new store connection means a
new bus, queue and agents; a bus crash restarts the approval queue and the agents, which find the
new bus through the :class:`~hive_actors.services.directory.Directory`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pykka import ActorRef

from hive_actors.config import HiveConfig, SupervisionConfig
from hive_actors.paths import AgentPaths, secure_hive_files
from hive_actors.services.approvals import ApprovalQueueActor
from hive_actors.services.bell import Bell
from hive_actors.services.bus import BusActor
from hive_actors.services.directory import Directory
from hive_actors.services.store import StoreActor
from hive_actors.store import Store
from hive_actors.supervisors.spec import Backoff, ChildSpec, RestartLimit, SupervisorFlags
from hive_actors.supervisors.supervisor import Supervisor

__all__ = ["ROOT_FLAGS", "Hive", "agents_flags"]

ROOT_FLAGS = SupervisorFlags(
    "rest_for_one", intensity=3, period=60.0, backoff=Backoff(min=0.5, max=10.0)
)
"""The root restarts a failed service (and what depends on it) at most 3 times a minute."""

def agents_flags(sup: SupervisionConfig) -> tuple[SupervisorFlags, RestartLimit]:
    """The agents supervisor's flags and each agent's own restart limit, from ``[supervision]``.

    Agents fail independently: the supervisor itself never escalates for them (an intensity
    no agent fleet reaches); each agent past its own limit — ``agent_restarts`` in
    ``agent_period``, or ``agent_max_consecutive_failures`` in a row — is given up, the others
    go on.
    """
    flags = SupervisorFlags(
        "one_for_one",
        intensity=1_000_000,
        period=sup.agent_period,
        backoff=Backoff(
            min=sup.backoff_min,
            max=sup.backoff_max,
            factor=sup.backoff_factor,
            jitter=sup.backoff_jitter,
            reset_after=sup.stable_after,
        ),
    )
    return flags, RestartLimit(
        sup.agent_restarts, sup.agent_period, sup.agent_max_consecutive_failures
    )


@dataclass
class Hive:
    """One hive's configuration and the things its services share."""

    config: HiveConfig
    directory: Directory = field(default_factory=Directory)
    bell: Bell = field(default_factory=Bell)

    def __post_init__(self) -> None:
        # Every path the hive hands on (the agents' HOME, CLAUDE_CONFIG_DIR, TMPDIR, the db) is
        # absolute: an agent's CLI runs in another working directory, where a relative state
        # dir would name a directory nested in its own.
        config = self.config
        state_dir = os.path.abspath(os.path.expanduser(config.state_dir))
        store = config.store
        if store.path and store.path != ":memory:":
            store = replace(store, path=os.path.abspath(os.path.expanduser(store.path)))
        if state_dir != config.state_dir or store is not config.store:
            self.config = replace(config, state_dir=state_dir, store=store)

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state_dir)

    def agent_paths(self, name: str) -> AgentPaths:
        return AgentPaths.of(self.state_dir, name)

    def open_store(self) -> Store:
        """A new connection to the hive's store (each actor opens its own)."""
        secure_hive_files(self.state_dir)  # 0700, the db and the operator token 0600
        return Store.open(
            self.config.db_path,
            busy_timeout_ms=self.config.store.busy_timeout_ms,
            max_body_bytes=self.config.store.max_body_bytes,
            state_dirs=lambda name: self.agent_paths(name).state,
        )

    # -- the core services' starts (the daemon's TreeStarts delegates to them) ----------------

    def start_store(self) -> ActorRef[Any]:
        return StoreActor.start(self.open_store, retention=self.config.store.retention())

    def start_bus(self) -> ActorRef[Any]:
        return BusActor.start(self.open_store, bell=self.bell, directory=self.directory)

    def start_approvals(self) -> ActorRef[Any]:
        return ApprovalQueueActor.start(self.open_store, bell=self.bell, directory=self.directory)

    def tree(self) -> tuple[list[ChildSpec], SupervisorFlags]:
        """The core alone — store, bus, approvals, as :func:`hive_actors.tree.hive_tree`
        defines them, then an empty plain ``agents`` supervisor — for tests and benchmarks of
        the core services. The hive's real tree is :meth:`hive_actors.daemon.Daemon.tree`."""
        from hive_actors.tree import DescribeOnly, hive_tree

        class _Core(DescribeOnly):
            def start_store(core) -> ActorRef[Any]:
                return self.start_store()

            def start_bus(core) -> ActorRef[Any]:
                return self.start_bus()

            def start_approvals(core) -> ActorRef[Any]:
                return self.start_approvals()

        core = [node.spec for node in hive_tree(self.config, _Core()).nodes
                if node.spec.id in ("store", "bus", "approvals")]
        agents = ChildSpec(
            "agents",
            lambda: Supervisor.start([], agents_flags(self.config.supervision)[0], name="agents"),
            shutdown=120.0,
            ready_timeout=60.0,
        )
        return [*core, agents], ROOT_FLAGS
