"""The shape of the hive's supervision tree.

::

    hive        RootSupervisor (rest_for_one: a child restarts those started after it)
    └── agents  AgentsSupervisor (one_for_one, dynamic children: one AgentActor per agent)

Each later layer (store, bus, approvals, stats, watcher, gateway) is a child of the root, in that
order, so that ``rest_for_one`` restarts exactly what depends on a failed child.
"""

from __future__ import annotations

from hive_actors.supervisors.spec import Backoff, ChildSpec, SupervisorFlags
from hive_actors.supervisors.supervisor import Supervisor

__all__ = ["ROOT_FLAGS", "AGENTS_FLAGS", "build_tree"]

ROOT_FLAGS = SupervisorFlags("rest_for_one", intensity=3, period=60.0, backoff=Backoff(min=0.5, max=10.0))
"""The root restarts a failed service (and what depends on it) at most 3 times a minute."""

AGENTS_FLAGS = SupervisorFlags(
    "one_for_one", intensity=1000, period=60.0, backoff=Backoff(min=1.0, max=60.0, reset_after=120.0)
)
"""Agents fail independently; each agent's own limit gives it up, the supervisor goes on."""


def build_tree() -> tuple[list[ChildSpec], SupervisorFlags]:
    """The root's children and flags."""
    agents = ChildSpec(
        "agents",
        lambda: Supervisor.start([], AGENTS_FLAGS, name="agents"),
        shutdown=120.0,
        ready_timeout=60.0,
    )
    return [agents], ROOT_FLAGS
