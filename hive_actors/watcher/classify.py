"""Crash classification, pure: a unit's previous snapshot and its new properties in, a verdict out.

No bus, no threads, no clock. The watcher calls :func:`classify` for every ``Unit``
``PropertiesChanged`` (with the ``Service`` values that came just before it) and for every unit a
rescan reads; the :class:`UnitSnapshot` it gets back is what it passes next time.

The rules (see ``notes/systemd-dbus.md``):

- **Crash**: ``ActiveState`` ``failed``, or ``SubState`` ``auto-restart`` / ``auto-restart-queued``
  / ``failed-before-auto-restart`` (systemd ≥ 254), with ``Result`` ≠ ``success``.
- Reported **once per run**: a run is an ``InvocationID`` (``(InvocationID, NRestarts)`` when
  systemd gave no id). systemd 252 shows ``failed`` then ``auto-restart`` for one crash, ≥ 254
  ``failed-before-auto-restart``, ``auto-restart`` then ``auto-restart-queued`` with ``NRestarts``
  already counted up: all one crash. Every automatic restart starts a new run, so a crash loop is
  one report per restart.
- A failure while a stop job is pending, or after the hive asked for the stop, is a
  **failed stop**. A job of unknown type on a unit that just ``failed`` counts as a stop job (a
  runtime crash has no job; systemd never restarts a unit it was told to stop).
- ``inactive`` after a running state is a **stop** (by the hive when it asked, else by an operator
  or a poweroff inside: they look the same). A run that ended with ``Result=success`` and is being
  restarted (``dead-before-auto-restart``, ``auto-restart``, or NixOS's reboot exit status 133)
  is a **reboot**. A new run with a higher ``NRestarts`` whose predecessor's end was never seen
  (the watcher was away) is a **restart seen late**. ``failed`` straight after ``auto-restart`` in the same run is systemd **giving
  up** (its start limit). Leaving ``failed`` for ``inactive`` (``ResetFailedUnit``) is no event.
- An unknown ``ActiveState`` or ``SubState`` is no event.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from operator import attrgetter

from hive_actors.watcher.props import ServiceProps, UnitProps
from hive_actors.watcher.verdicts import (
    Crash,
    FailedStop,
    GaveUp,
    NoEvent,
    Rebooted,
    RestartedUnseen,
    RestartScheduled,
    StopBy,
    Stopped,
    Verdict,
)

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_REBOOT_STATUSES",
    "FAILED_RESTARTING",
    "SERVICE_SUB_STATES",
    "Intent",
    "RunRecord",
    "UnitSnapshot",
    "classify",
    "restart_expected",
]

ACTIVE_STATES = frozenset(
    {"active", "reloading", "inactive", "failed", "activating", "deactivating", "maintenance",
     "refreshing"}
)
# Every service SubState systemd 252..256 has; anything else is an unknown state, no event.
SERVICE_SUB_STATES = frozenset(
    {
        "dead", "condition", "start-pre", "start", "start-post", "running", "exited", "reload",
        "reload-signal", "reload-notify", "mounting", "stop", "stop-watchdog", "stop-sigterm",
        "stop-sigkill", "stop-post", "final-watchdog", "final-sigterm", "final-sigkill",
        "failed", "dead-before-auto-restart", "failed-before-auto-restart",
        "dead-resources-pinned", "auto-restart", "auto-restart-queued", "cleaning",
    }
)
FAILED_RESTARTING = frozenset({"auto-restart", "auto-restart-queued", "failed-before-auto-restart"})
"""SubStates of a run that failed and that systemd is about to restart."""
# SubStates where a restart is waiting to happen (whatever the run's Result).
_RESTART_WAIT = frozenset({"auto-restart", "auto-restart-queued"})
_RESTARTING = FAILED_RESTARTING | {"dead-before-auto-restart"}

DEFAULT_REBOOT_STATUSES = frozenset({133})
"""Exit statuses that mean "reboot": NixOS's ``container@.service`` has
``SuccessExitStatus=133`` and ``RestartForceExitStatus=133`` (``systemd-nspawn`` exits 133 when
the container reboots)."""

_HISTORY = 32
"""Runs remembered per unit: enough for any reordering the bus can produce, bounded for a unit
that crash-loops for months."""


@dataclass(frozen=True, slots=True)
class Intent:
    """What the hive knows about a unit beyond its properties."""

    hive_stop: bool = False
    """The hive asked for this unit to stop (and has not started it again since)."""
    job_type: str | None = None
    """``JobType`` of the job in ``UnitProps.job_path`` (``start``, ``stop``, ``restart``…), when
    the caller knows it; None when there is no job or its type is unknown."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run whose end was already reported."""

    invocation_id: str
    n_restarts: int
    restart_announced: bool
    """The report already said systemd restarts it (or it was a reboot)."""
    gave_up: bool = False
    """systemd's giving up on it was reported."""
    stop_reported: bool = False
    """A stop of it was reported."""


_NO_INTENT = Intent()
"""No stop asked for, no job known: the default intent."""

_INVOCATION_ID = attrgetter("invocation_id")


@dataclass(frozen=True, slots=True)
class UnitSnapshot:
    """What :func:`classify` remembers about one unit between two observations."""

    active_state: str
    sub_state: str
    invocation_id: str
    n_restarts: int
    runs: tuple[RunRecord, ...] = ()
    """Runs whose end was reported, oldest first, at most the last 32."""

    def record_for(self, invocation_id: str, n_restarts: int) -> RunRecord | None:
        """The record of a run, matched by id (by id and ``NRestarts`` when the id is empty)."""
        if invocation_id and invocation_id not in map(_INVOCATION_ID, self.runs):
            return None  # a run not reported yet (every crash's): no walk over the history
        for record in reversed(self.runs):
            if invocation_id:
                if record.invocation_id == invocation_id:
                    return record
            elif not record.invocation_id and record.n_restarts == n_restarts:
                return record
        return None


def restart_expected(restart: str | None, result: str) -> bool:
    """Whether a ``Restart=`` policy restarts a run that ended with ``result`` (systemd's
    ``service_shall_restart``; ``RestartPreventExitStatus=`` and friends are not read). False when
    the policy is unknown: the watcher does not guess a restart."""
    if result == "start-limit-hit":
        return False
    match restart:
        case "always":
            return True
        case "on-success":
            return result == "success"
        case "on-failure":
            return result != "success"
        case "on-abnormal":
            return result not in ("success", "exit-code")
        case "on-abort":
            return result in ("signal", "core-dump")
        case "on-watchdog":
            return result == "watchdog"
        case _:
            return False


def _remember(
    snapshot: UnitSnapshot, record: RunRecord, old: RunRecord | None = None
) -> UnitSnapshot:
    kept = snapshot.runs if old is None else tuple(r for r in snapshot.runs if r is not old)
    # Built directly: ``dataclasses.replace`` costs several times more, on every crash.
    return UnitSnapshot(snapshot.active_state, snapshot.sub_state, snapshot.invocation_id,
                        snapshot.n_restarts, (kept + (record,))[-_HISTORY:])


def _stop_context(unit: UnitProps, intent: Intent) -> bool:
    if intent.hive_stop or intent.job_type == "stop":
        return True
    # A runtime crash has no job; a job we cannot type on a unit that just *failed* is a stop
    # that failed (systemd restarts nothing it was told to stop, so auto-restart states never
    # qualify).
    return unit.has_job and intent.job_type is None and unit.active_state == "failed"


def classify(
    prev: UnitSnapshot | None,
    service: ServiceProps,
    unit: UnitProps,
    intent: Intent = _NO_INTENT,
    *,
    reboot_statuses: frozenset[int] = DEFAULT_REBOOT_STATUSES,
) -> tuple[UnitSnapshot, Verdict]:
    """Classify one observation of a unit; returns the snapshot to keep and the verdict.

    ``prev`` is the snapshot the previous call returned for this unit (None the first time the
    unit is seen). Duplicated and reordered observations never yield a second report for a run.
    """
    inv, n = unit.invocation_id, service.n_restarts
    snapshot = UnitSnapshot(
        active_state=unit.active_state,
        sub_state=unit.sub_state,
        invocation_id=inv,
        n_restarts=n,
        runs=prev.runs if prev is not None else (),
    )
    if unit.active_state not in ACTIVE_STATES or unit.sub_state not in SERVICE_SUB_STATES:
        return snapshot, NoEvent(
            f"unknown state {unit.active_state}/{unit.sub_state}: not an event"
        )
    record = snapshot.record_for(inv, n)
    by: StopBy = "hive" if intent.hive_stop else "operator-or-guest"
    failing = unit.active_state == "failed" or unit.sub_state in FAILED_RESTARTING

    if failing and service.result != "success":
        if record is not None:
            return _again(prev, snapshot, record, unit, service)
        if _stop_context(unit, intent):
            verdict: Verdict = FailedStop(by=by, result=service.result, invocation_id=inv)
            return _remember(snapshot, RunRecord(inv, n, restart_announced=False)), verdict
        will_restart = unit.sub_state in FAILED_RESTARTING or restart_expected(
            service.restart, service.result
        )
        code, status = service.exec_main_code, service.exec_main_status
        crash = Crash(
            result=service.result,
            exec_main_code=code,
            exit_code=status if code == 1 else None,
            signal=status if code in (2, 3) else None,
            invocation_id=inv,
            n_restarts=n,
            will_restart=will_restart,
        )
        return _remember(snapshot, RunRecord(inv, n, restart_announced=will_restart)), crash

    if unit.active_state == "failed":
        return snapshot, NoEvent("failed with Result=success")

    rebooting = unit.sub_state in _RESTARTING or (
        prev is not None
        and unit.active_state == "inactive"
        and service.exec_main_code == 1
        and service.exec_main_status in reboot_statuses
    )
    if rebooting and record is None and not intent.hive_stop:
        verdict = Rebooted(invocation_id=inv, exit_status=service.exec_main_status)
        return _remember(snapshot, RunRecord(inv, n, restart_announced=True)), verdict
    if rebooting and record is not None and unit.sub_state in _RESTART_WAIT:
        return _again(prev, snapshot, record, unit, service)

    if unit.active_state == "inactive":
        if prev is None:
            return snapshot, NoEvent("inactive when first seen")
        if prev.sub_state in _RESTART_WAIT and unit.has_job and not intent.hive_stop:
            # systemd 252's restart job passes through inactive/dead (with the new run's
            # InvocationID when it starts it, the old one when the start limit stops it).
            return snapshot, NoEvent("systemd's restart job in progress (inactive/dead)")
        if record is not None:
            if intent.hive_stop and not record.stop_reported:
                updated = replace(record, stop_reported=True)
                return _remember(snapshot, updated, record), Stopped(by="hive", invocation_id=inv)
            return snapshot, NoEvent("the end of this run was already reported")
        if prev.active_state in ("inactive", "failed"):
            return snapshot, NoEvent(f"{prev.active_state} -> inactive is not a stop")
        record = RunRecord(inv, n, restart_announced=False, stop_reported=True)
        return _remember(snapshot, record), Stopped(by=by, invocation_id=inv)

    if (
        prev is not None
        and prev.invocation_id
        and inv != prev.invocation_id
        and n > prev.n_restarts
        and snapshot.record_for(prev.invocation_id, prev.n_restarts) is None
    ):
        # A new run and more automatic restarts, and the last run's end never seen: systemd
        # restarted it while we were not looking (a watcher reconnecting after a while).
        verdict = RestartedUnseen(
            previous_invocation_id=prev.invocation_id,
            invocation_id=inv,
            restarts=n - prev.n_restarts,
        )
        ended = RunRecord(prev.invocation_id, prev.n_restarts, restart_announced=True)
        return _remember(snapshot, ended), verdict

    return snapshot, NoEvent(f"{unit.active_state}/{unit.sub_state}")


def _again(
    prev: UnitSnapshot | None,
    snapshot: UnitSnapshot,
    record: RunRecord,
    unit: UnitProps,
    service: ServiceProps,
) -> tuple[UnitSnapshot, Verdict]:
    """A run whose end was already reported shows up again: systemd giving up on it, or
    restarting it when the first report could not say so; else a duplicate."""
    if (
        unit.active_state == "failed"
        and unit.sub_state == "failed"
        and prev is not None
        # After auto-restart (≥ 254), or after 252's restart job went through inactive/dead:
        # systemd counted a restart of this very run, yet no new run came.
        and (prev.sub_state in _RESTART_WAIT or service.n_restarts > record.n_restarts)
        and prev.invocation_id == unit.invocation_id
        and not record.gave_up
    ):
        updated = replace(record, gave_up=True)
        verdict: Verdict = GaveUp(
            result=service.result, invocation_id=unit.invocation_id, n_restarts=service.n_restarts
        )
        return _remember(snapshot, updated, record), verdict
    if unit.sub_state in _RESTART_WAIT and not record.restart_announced and not record.gave_up:
        updated = replace(record, restart_announced=True)
        verdict = RestartScheduled(invocation_id=unit.invocation_id, n_restarts=service.n_restarts)
        return _remember(snapshot, updated, record), verdict
    return snapshot, NoEvent("already reported for this run")
