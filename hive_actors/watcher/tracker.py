"""Per-unit bookkeeping of the watcher's reader: the properties of each unit read so far.

The part of the D-Bus reader that needs no bus: it merges checked property values as they
arrive and decodes them into what the classification reads. It decides nothing: the
:class:`~hive_actors.watcher.actor.CrashWatcherActor` classifies each observation in its own
thread (:class:`~hive_actors.watcher.judge.UnitJudge`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hive_actors.watcher.props import (
    SERVICE_INTERFACE,
    UNIT_INTERFACE,
    ServiceProps,
    UnitProps,
    decode_service,
    decode_unit,
)

__all__ = ["UnitState"]


@dataclass
class UnitState:
    """What the reader holds for one agent unit (owned by the reader's loop thread)."""

    agent: str
    unit: str
    values: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {SERVICE_INTERFACE: {}, UNIT_INTERFACE: {}}
    )
    """Checked property values per interface, merged as they arrive."""
    primed: bool = False
    """A full ``GetAll`` of both interfaces was read at least once (const ones included)."""

    def merge(self, interface: str, values: dict[str, Any]) -> None:
        """Take newer values of ``interface``'s properties."""
        self.values[interface].update(values)

    def replace(self, service: dict[str, Any], unit: dict[str, Any]) -> None:
        """Take a full read of both interfaces."""
        self.values = {SERVICE_INTERFACE: dict(service), UNIT_INTERFACE: dict(unit)}
        self.primed = True

    def decoded(self) -> tuple[ServiceProps, UnitProps] | list[str]:
        """Both interfaces' properties, or the problems (missing properties) that keep them
        from being decoded."""
        service = decode_service(self.values[SERVICE_INTERFACE])
        unit = decode_unit(self.values[UNIT_INTERFACE])
        if isinstance(service, list) or isinstance(unit, list):
            return (service if isinstance(service, list) else []) + (
                unit if isinstance(unit, list) else [])
        return service, unit
