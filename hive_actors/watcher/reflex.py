"""The crash reflex, pure: a crash of a unit's unreported run, told from one signal's values.

Every observation of a unit goes through :func:`~hive_actors.watcher.classify.classify`, which
needs the unit's properties merged and decoded first (and then remembers the run). The
observation the hive must act on at once has a single shape, though: systemd's ``Service``
``PropertiesChanged`` with a ``Result`` other than ``success``, then the ``Unit`` one saying
that the run not reported yet failed, with no job pending, and the hive did not ask for the
stop. So:

- :func:`read_service` reads a ``Service`` payload that is whole and well formed into a
  :class:`ServiceSignal`; the watcher holds it, unmerged, until the ``Unit`` signal that
  follows (merging it then, after the crash was told, costs the crash nothing);
- :func:`arm` says, after each classification of a unit, what that unit's next crash is
  recognised by: its run's ``InvocationID``, while nothing about that run was reported;
- :func:`crash` looks at the ``Unit`` signal's values (read whole by
  :func:`~hive_actors.watcher.props.read_unit_values`) with the armed run and the held ``Service``
  signal, in a few steps, and answers the :class:`~hive_actors.watcher.verdicts.Crash`, or
  None: "not this shape, ask the classification".

An early answer, never another one: when :func:`crash` answers a crash, ``classify`` answers
the same crash for the same observation (a property test holds them together), and the watcher
still classifies the observation afterwards, for its bookkeeping, reporting nothing twice.
"""

from __future__ import annotations

from typing import Any

from hive_actors.watcher.classify import (
    ACTIVE_STATES,
    FAILED_RESTARTING,
    SERVICE_SUB_STATES,
    UnitSnapshot,
    restart_expected,
)
from hive_actors.watcher.props import read_service_values
from hive_actors.watcher.verdicts import Crash

__all__ = ["ServiceSignal", "arm", "crash", "read_service"]


class ServiceSignal:
    """A ``Service`` ``PropertiesChanged`` read by :func:`read_service`: whole, well formed, not
    merged yet."""

    __slots__ = ("exec_main_code", "exec_main_status", "n_restarts", "restart", "restarts",
                 "result", "values")

    def __init__(self, values: dict[str, Any], restart: str | None) -> None:
        self.values = values
        """Its values as :func:`~hive_actors.watcher.props.check_variants` makes them (merged
        as they are, later)."""
        self.result: str = values["Result"]
        self.exec_main_code: int = values["ExecMainCode"]
        self.exec_main_status: int = values["ExecMainStatus"]
        self.n_restarts: int = values["NRestarts"]
        self.restart = values.get("Restart", restart)
        """``Restart=``: the signal's if it carries one, else the unit's as read before (it is
        a const property, in ``GetAll`` only)."""
        self.restarts = restart_expected(self.restart, self.result)
        """Whether that policy has systemd restart a run that ended with this ``Result``
        (worked out now, before the ``Unit`` signal arrives)."""


def read_service(changed: Any, restart: str | None) -> ServiceSignal | None:
    """A raw ``Service`` payload that carries every property a verdict needs, well formed
    (:func:`~hive_actors.watcher.props.read_service_values`), as a :class:`ServiceSignal`; None
    for anything else. ``restart``: the unit's ``Restart=`` as known, used unless the payload
    has its own."""
    values = read_service_values(changed)
    return None if values is None else ServiceSignal(values, restart)


def arm(snapshot: UnitSnapshot | None) -> str | None:
    """What a unit's next crash is recognised by, after an observation classified into
    ``snapshot``: the ``InvocationID`` of the run it shows, when it has one and nothing was
    reported about that run yet (None otherwise)."""
    if snapshot is None:
        return None
    invocation_id = snapshot.invocation_id
    if not invocation_id or snapshot.record_for(invocation_id, snapshot.n_restarts):
        return None
    return invocation_id


def crash(
    armed: str, service: ServiceSignal | None, unit: dict[str, Any], hive_stop: bool
) -> Crash | None:
    """The crash a ``Unit`` signal reports for the armed run (``armed``: its ``InvocationID``,
    from :func:`arm`), given the signal's values (all four, checked), the ``Service`` signal
    held since the last observation and whether the hive asked for a stop; None when it is
    anything else (the classification then decides)."""
    if hive_stop or service is None or service.result == "success":
        return None
    active, sub = unit["ActiveState"], unit["SubState"]
    if (active not in ACTIVE_STATES or sub not in SERVICE_SUB_STATES
            or (active != "failed" and sub not in FAILED_RESTARTING)):
        return None
    if unit["Job"][0] != 0 or unit["InvocationID"] != armed:
        return None  # a job pends (a stop's failure, or a start's), or another run
    code, status, result = service.exec_main_code, service.exec_main_status, service.result
    return Crash(
        result=result,
        exec_main_code=code,
        exit_code=status if code == 1 else None,
        signal=status if code in (2, 3) else None,
        invocation_id=armed,
        n_restarts=service.n_restarts,
        will_restart=sub in FAILED_RESTARTING or service.restarts,
    )
