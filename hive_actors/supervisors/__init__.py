"""OTP-style supervision trees over pykka actors.

- :mod:`.spec` — :class:`ChildSpec`, :class:`SupervisorFlags`, :class:`Backoff`, validated when built;
- :mod:`.policy` — the pure restart decision (intensity window, backoff, affected siblings);
- :mod:`.supervisor` — the threaded :class:`Supervisor` actor that carries decisions out;
- :mod:`.client` — blocking helpers for callers outside the tree (CLI, tests);
- :mod:`.root` — starting a tree, printing its shape, turning its end into an exit status.
"""

from __future__ import annotations

from hive_actors.supervisors.client import SupervisorClient
from hive_actors.supervisors.messages import ChildEvent, ChildInfo, ChildStats
from hive_actors.supervisors.policy import ChildState, RestartPolicy
from hive_actors.supervisors.spec import (
    Backoff,
    ChildSpec,
    RestartLimit,
    RestartType,
    Strategy,
    SupervisorFlags,
)
from hive_actors.supervisors.supervisor import Supervisor

__all__ = [
    "Backoff",
    "ChildEvent",
    "ChildInfo",
    "ChildSpec",
    "ChildState",
    "ChildStats",
    "RestartLimit",
    "RestartPolicy",
    "RestartType",
    "Strategy",
    "Supervisor",
    "SupervisorClient",
    "SupervisorFlags",
]
