"""Container backends: where an agent runs (see :mod:`.base` for the interface).

- :class:`ProcessBackend` (``[hive] backend = "process"``, the embedded default): a process group
  per agent on this host, led by a keeper process.
- :class:`NspawnBackend` (``[hive] backend = "nspawn"``): an unprivileged ``systemd-nspawn``
  container per agent (its root a mapped host uid), the hive's child; see :mod:`.nspawn`.
- :class:`NixosBackend` (``[hive] backend = "nixos"``): ``nixos-container`` (systemd-nspawn);
  its crash events come from the D-Bus watcher through :meth:`NixosBackend.report`.

:mod:`.registry` lists them by ``[hive] backend`` name (:data:`~.registry.BACKENDS`): the config
check, the daemon and ``hive tree`` read that one table.

The names below are imported on first use: ``python -m hive_actors.containers.keeper`` (one per
running agent) then loads only the keeper, not the backends and what they import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hive_actors.containers.base import (
        ContainerBackend,
        ContainerExit,
        ContainerSpec,
        ContainerState,
        ContainerStatus,
        ExitCallback,
        StopGrace,
    )
    from hive_actors.containers.nixos import NixosBackend
    from hive_actors.containers.nspawn import NspawnBackend
    from hive_actors.containers.process import ProcessBackend

__all__ = [
    "ContainerBackend",
    "ContainerExit",
    "ContainerSpec",
    "ContainerState",
    "ContainerStatus",
    "ExitCallback",
    "NixosBackend",
    "NspawnBackend",
    "ProcessBackend",
    "StopGrace",
]

_HOME = {
    "NixosBackend": "nixos",
    "NspawnBackend": "nspawn",
    "ProcessBackend": "process",
    **{
        name: "base"
        for name in (
            "ContainerBackend",
            "ContainerExit",
            "ContainerSpec",
            "ContainerState",
            "ContainerStatus",
            "ExitCallback",
            "StopGrace",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
