"""The container backends by name: what ``[hive] backend`` may say, and how each is made.

One entry per backend; the configuration's check, the daemon's construction, the tree's
description and ``hive tree`` all read this table, so a new backend is added here once. Each
entry imports its module only when a backend is made (``python -m hive_actors.containers.keeper``
and the config check load nothing of the backends).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hive_actors.errors import ConfigError

if TYPE_CHECKING:
    from hive_actors.containers.base import ContainerBackend

__all__ = ["BACKENDS", "BackendKind", "backend_kind", "make_backend"]


@dataclass(frozen=True)
class BackendKind:
    """One container backend: its ``[hive] backend`` name and where its class lives."""

    name: str
    """What ``[hive] backend`` says."""
    module: str
    """The module under ``hive_actors.containers`` that defines it."""
    cls: str
    """The class, a :class:`~hive_actors.containers.base.ContainerBackend`."""
    summary: str
    """One line for ``hive tree`` and the docs: what an agent's container is."""
    systemd_units: bool
    """Its containers are ``container@<name>.service`` units, so the crash watcher reads them
    on D-Bus as well as the backend's own exit reports."""
    section: str = ""
    """The configuration section whose keys are its constructor's options (empty: none)."""

    def make(
        self, state_dir: str | os.PathLike[str], options: Mapping[str, Any] | None = None
    ) -> ContainerBackend:
        """A backend of this kind serving the hive whose state dir is ``state_dir``, with
        ``options`` (its configuration section's keys) as keyword arguments."""
        from hive_actors.containers.base import ContainerBackend

        module = importlib.import_module(f"hive_actors.containers.{self.module}")
        backend = getattr(module, self.cls)(state_dir, **dict(options or {}))
        if not isinstance(backend, ContainerBackend):  # the protocol is runtime-checkable
            raise TypeError(f"{self.cls} does not implement ContainerBackend")
        return backend


BACKENDS: Mapping[str, BackendKind] = {
    kind.name: kind
    for kind in (
        BackendKind(
            name="process",
            module="process",
            cls="ProcessBackend",
            summary="a process group on this host, led by a keeper process",
            systemd_units=False,
        ),
        BackendKind(
            name="nixos",
            module="nixos",
            cls="NixosBackend",
            summary="a nixos-container (systemd-nspawn) unit, container@<name>.service",
            systemd_units=True,
        ),
        BackendKind(
            name="nspawn",
            module="nspawn",
            cls="NspawnBackend",
            summary="an unprivileged systemd-nspawn container (user namespace), the hive's child",
            systemd_units=False,
            section="nspawn",
        ),
    )
}
"""Every backend the hive can run agents in, by ``[hive] backend`` name."""


def backend_kind(name: str, *, source: str = "the configuration") -> BackendKind:
    """The backend ``name`` names; a ConfigError listing the known ones otherwise."""
    kind = BACKENDS.get(name)
    if kind is None:
        raise ConfigError(
            f"{source}: [hive] backend = {name!r} is not a backend: use one of "
            f"{', '.join(BACKENDS)}"
        )
    return kind


def make_backend(name: str, state_dir: str | os.PathLike[str], *,
                 source: str = "the configuration",
                 options: Mapping[str, Any] | None = None) -> ContainerBackend:
    """The backend ``[hive] backend = name`` names, for the hive at ``state_dir``."""
    return backend_kind(name, source=source).make(state_dir, options)
