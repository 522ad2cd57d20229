"""Per-unit bookkeeping of the watcher: the properties seen so far, the snapshot, the hive's intents.

The part of the watcher that needs no bus: it merges checked property values as they arrive,
decides when it has enough to classify, and turns verdicts into reports. The stop intents are the
one piece of state other threads touch (``expect_stop`` from the hive's actors), hence the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from hive_actors.watcher.classify import DEFAULT_REBOOT_STATUSES, Intent, UnitSnapshot, classify
from hive_actors.watcher.props import (
    SERVICE_INTERFACE,
    UNIT_INTERFACE,
    ServiceProps,
    UnitProps,
    decode_service,
    decode_unit,
)
from hive_actors.watcher.reflex import ServiceSignal, arm, read_service
from hive_actors.watcher.verdicts import FailedStop, Stopped, Unreadable, Verdict

__all__ = ["Intents", "UnitState"]


@dataclass
class UnitState:
    """What the watcher holds for one agent unit (owned by the watcher's loop thread)."""

    agent: str
    unit: str
    values: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {SERVICE_INTERFACE: {}, UNIT_INTERFACE: {}}
    )
    """Checked property values per interface, merged as they arrive."""
    snapshot: UnitSnapshot | None = None
    primed: bool = False
    """A full ``GetAll`` of both interfaces was read at least once (const ones included)."""
    armed: str | None = None
    """The ``InvocationID`` of the run whose crash the reflex recognises at once
    (:mod:`~.reflex`), re-armed by each classification; None when the run is unknown or
    already reported."""
    held: ServiceSignal | None = None
    """A ``Service`` signal taken by :meth:`hold_service` and not merged yet: every other
    method merges it first."""
    _decoded: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Each interface's values decoded (props or problems), until they change: an observation
    is decoded once, though the job lookup and the classification both read it."""

    def hold_service(self, changed: Any) -> bool:
        """Hold a ``Service`` signal, merged only once anything else happens to the unit (the
        ``Unit`` signal that follows reads it unmerged, in the reflex); False, nothing taken,
        when it is not whole and well formed (:func:`~.reflex.read_service`)."""
        if self.held is not None:
            self._merge_held()
        held = read_service(changed, self.values[SERVICE_INTERFACE].get("Restart"))
        if held is None:
            return False
        self.held = held
        return True

    def merge(self, interface: str, values: dict[str, Any]) -> None:
        """Take newer values of ``interface``'s properties."""
        if self.held is not None:  # tested here: this runs for every signal
            self._merge_held()
        self.values[interface].update(values)
        self._decoded.pop(interface, None)

    def replace(self, service: dict[str, Any], unit: dict[str, Any]) -> None:
        """Take a full read of both interfaces (newer than a signal held)."""
        self.held = None
        self.values = {SERVICE_INTERFACE: dict(service), UNIT_INTERFACE: dict(unit)}
        self._decoded.clear()
        self.primed = True

    def _merge_held(self) -> None:
        held = self.held
        assert held is not None
        self.held = None
        self.values[SERVICE_INTERFACE].update(held.values)
        self._decoded.pop(SERVICE_INTERFACE, None)

    def _decode(self, interface: str) -> Any:
        if self.held is not None:
            self._merge_held()
        decoded = self._decoded.get(interface)
        if decoded is None:
            values = self.values[interface]
            decoded = (decode_unit(values) if interface == UNIT_INTERFACE
                       else decode_service(values))
            self._decoded[interface] = decoded
        return decoded

    def service_props(self) -> ServiceProps | None:
        """The ``Service`` properties if all are known."""
        decoded = self._decode(SERVICE_INTERFACE)
        return decoded if isinstance(decoded, ServiceProps) else None

    def unit_props(self) -> UnitProps | None:
        """The ``Unit`` properties if all are known."""
        decoded = self._decode(UNIT_INTERFACE)
        return decoded if isinstance(decoded, UnitProps) else None

    def classify(
        self,
        intent: Intent,
        reboot_statuses: frozenset[int] = DEFAULT_REBOOT_STATUSES,
    ) -> Verdict:
        """Classify the merged values; keeps the new snapshot. Missing properties give
        :class:`Unreadable` and leave the snapshot alone."""
        service = self._decode(SERVICE_INTERFACE)
        unit = self._decode(UNIT_INTERFACE)
        if isinstance(service, list) or isinstance(unit, list):
            problems = (service if isinstance(service, list) else []) + (
                unit if isinstance(unit, list) else []
            )
            return Unreadable(tuple(problems))
        self.snapshot, verdict = classify(
            self.snapshot, service, unit, intent, reboot_statuses=reboot_statuses
        )
        self.armed = arm(self.snapshot)
        return verdict


class Intents:
    """The hive's stop requests per agent; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stopping: frozenset[str] = frozenset()
        """The agents whose unit the hive asked to stop: replaced whole under the lock, so a
        reader (the watcher's thread, on every signal) reads it as it is, without the lock."""

    def expect_stop(self, agent: str) -> None:
        """The hive is about to stop ``agent``'s unit: its end is not a crash."""
        with self._lock:
            self.stopping = self.stopping | {agent}

    def clear(self, agent: str) -> None:
        """Forget a stop request (the hive starts the unit again, or gave up stopping it)."""
        with self._lock:
            if agent in self.stopping:
                self.stopping = self.stopping - {agent}

    def hive_stop(self, agent: str) -> bool:
        """Whether the hive asked for ``agent``'s unit to stop."""
        return agent in self.stopping

    def settle(self, agent: str, verdict: Verdict) -> None:
        """Drop the intent once the stop it announced has ended, one way or the other."""
        if isinstance(verdict, (Stopped, FailedStop)) and verdict.by == "hive":
            self.clear(agent)
