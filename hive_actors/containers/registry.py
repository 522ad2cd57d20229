"""The container backends by name: what ``[hive] backend`` may say, and how each is made.

One entry per backend; the configuration's check, the daemon's construction, the tree's
description and ``hive tree`` all read this table, so a new backend is added here once. Each
entry imports its module only when a backend is made (``python -m hive_actors.containers.keeper``
and the config check load nothing of the backends).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hive_actors.errors import ConfigError

if TYPE_CHECKING:
    from hive_actors.containers.base import ContainerBackend

__all__ = ["BACKENDS", "BackendKind", "backend_kind", "make_backend"]


def _nspawn_units(options: Mapping[str, Any]) -> str | None:
    """The nspawn backend's containers are ``hive-agent@<name>.service`` in unit mode."""
    from hive_actors.containers.nspawnconf import UNIT_PREFIX, resolve_mode

    return UNIT_PREFIX if resolve_mode(str(options.get("mode", "auto"))) == "unit" else None


@dataclass(frozen=True)
class BackendKind:
    """One container backend: its ``[hive] backend`` name and where its class lives."""

    name: str
    """What ``[hive] backend`` says."""
    module: str
    """The module under ``hive_actors.containers`` that defines it."""
    cls: str
    """The class (or a function that picks one), a
    :class:`~hive_actors.containers.base.ContainerBackend`."""
    summary: str
    """One line for ``hive tree`` and the docs: what an agent's container is."""
    systemd_units: bool | Callable[[Mapping[str, Any]], str | None]
    """Whether its containers are systemd units, so the crash watcher reads them on D-Bus as
    well as the backend's own exit reports: True (``container@<name>.service``, NixOS), False,
    or a rule on its configuration section's options that answers the units' template name or
    None (the nspawn backend: ``hive-agent`` in unit mode). Read through :meth:`unit_prefix`."""
    section: str = ""
    """The configuration section whose keys are its constructor's options (empty: none)."""
    sees_only_bound_paths: bool = False
    """Its containers see the host's files only where bound: a ``[model] claude_path`` outside
    the hive's Python must be bound in (the ``ro_paths`` option)."""

    def unit_prefix(self, options: Mapping[str, Any] | None = None) -> str | None:
        """The one rule: with these options (its section's keys), are its containers systemd
        units, and of which template — ``<prefix>@<name>.service``? None: they are not, the
        backend alone reports their exits."""
        rule = self.systemd_units
        if callable(rule):
            return rule(dict(options or {}))
        return "container" if rule else None

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
            section="process",
        ),
        BackendKind(
            name="nixos",
            module="nixos",
            cls="NixosBackend",
            summary="a nixos-container (systemd-nspawn) unit, container@<name>.service",
            systemd_units=True,
            section="nixos",
        ),
        BackendKind(
            name="nspawn",
            module="nspawn",
            cls="nspawn_backend",
            summary="an unprivileged systemd-nspawn container (user namespace): a transient "
            "unit hive-agent@<name>.service when systemd runs the host, else the hive's child",
            systemd_units=_nspawn_units,
            section="nspawn",
            sees_only_bound_paths=True,
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
