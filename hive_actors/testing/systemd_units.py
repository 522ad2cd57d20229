"""The stand-in systemd's state machine: units, jobs and the transitions real systemd goes through.

No bus here: every state change is handed to a :class:`Sink`, which the D-Bus side turns into
``PropertiesChanged`` (``Service`` then ``Unit``, as systemd sends them), ``JobNew`` /
``JobRemoved`` and friends, or drops while the stand-in is off the bus. The sequences follow what
systemd 252 and ≥ 254 emit (see ``notes/systemd-dbus.md``):

- crash, no restart: ``failed/failed``;
- crash with ``Restart=`` on: 252 ``failed/failed`` → ``activating/auto-restart``; ≥ 254
  ``failed/failed-before-auto-restart`` → ``activating/auto-restart`` →
  ``activating/auto-restart-queued`` (``NRestarts`` + 1, restart job); then a new run
  (new ``InvocationID``, ``Result=success``) → ``active/running``;
- reboot inside (exit 133, a success that forces a restart): like a crash with restart, with
  ``inactive/dead`` (252) or ``inactive/dead-before-auto-restart`` (≥ 254) first;
- systemd giving up (start limit): the restart job fails, the unit stays ``failed`` with the
  first failure's ``Result`` and ``JobRemoved(failed)``;
- a stop: ``deactivating/stop-sigterm`` with the stop job → ``inactive/dead`` (or
  ``failed/failed`` ``Result=timeout`` for a stop that fails), ``JobRemoved(done)`` either way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from hive_actors.errors import Conflict, NotFound
from hive_actors.watcher.classify import restart_expected

__all__ = ["StandinJob", "StandinUnit", "Sink", "UnitMachine"]


@dataclass
class StandinUnit:
    """One loaded service unit, as the stand-in holds it (mutable; owned by one thread)."""

    name: str
    description: str
    restart: str = "no"
    active_state: str = "inactive"
    sub_state: str = "dead"
    result: str = "success"
    exec_main_code: int = 0
    exec_main_status: int = 0
    n_restarts: int = 0
    main_pid: int = 0
    invocation_id: bytes = b""
    job_id: int = 0
    job_path: str = "/"
    stop_fails: bool = False
    """The next stop ends ``failed`` (``Result=timeout``), like a container that ignores SIGTERM."""
    restarts_left: int | None = None
    """Automatic restarts systemd still allows before giving up (None: no limit)."""


@dataclass(frozen=True)
class StandinJob:
    """A queued job."""

    id: int
    path: str
    unit: str
    job_type: str


class Sink(Protocol):
    """Where the machine's changes go (the bus, or nowhere while the stand-in is off it)."""

    def unit_changed(self, unit: StandinUnit) -> None:
        """Emit the unit's ``Service`` then ``Unit`` properties."""

    def job_new(self, job: StandinJob) -> None:
        """A job was queued."""

    def job_removed(self, job: StandinJob, result: str) -> None:
        """A job ended with ``result``."""

    def unit_new(self, unit: StandinUnit) -> None:
        """A unit was loaded."""

    def unit_removed(self, unit: StandinUnit) -> None:
        """A unit was unloaded."""


@dataclass
class UnitMachine:
    """Units and jobs, and the transitions the driver and the D-Bus methods ask for.

    Every transition returns the ``time.monotonic()`` at which it emitted its first telling
    ``Unit`` change (the failure, the stop, the reboot…), for latency measurements.
    """

    version: int = 254
    """The systemd version whose SubState sequences to follow: 252 or ≥ 254."""
    units: dict[str, StandinUnit] = field(default_factory=dict)
    jobs: dict[str, StandinJob] = field(default_factory=dict)
    _next_job: int = 1
    _next_pid: int = 1000

    def unit(self, name: str) -> StandinUnit:
        """The unit called ``name``; NotFound when it is not loaded."""
        try:
            return self.units[name]
        except KeyError:
            raise NotFound(f"fake systemd: no unit {name!r} is loaded; add_unit() it first") from None

    def add_unit(self, sink: Sink, name: str, *, restart: str = "no", description: str = "") -> None:
        """Load a unit (``inactive/dead``)."""
        if name in self.units:
            raise Conflict(f"fake systemd: unit {name!r} is already loaded")
        instance = name.removeprefix("container@").removesuffix(".service")
        unit = StandinUnit(
            name=name, description=description or f"Container '{instance}'", restart=restart
        )
        self.units[name] = unit
        sink.unit_new(unit)

    def remove_unit(self, sink: Sink, name: str) -> None:
        """Unload a unit."""
        sink.unit_removed(self.units.pop(self.unit(name).name))

    def _change(self, sink: Sink, unit: StandinUnit, **fields: object) -> float:
        for key, value in fields.items():
            setattr(unit, key, value)
        emitted = time.monotonic()
        sink.unit_changed(unit)
        return emitted

    def _new_job(self, sink: Sink, unit: StandinUnit, job_type: str) -> StandinJob:
        job = StandinJob(
            id=self._next_job,
            path=f"/org/freedesktop/systemd1/job/{self._next_job}",
            unit=unit.name,
            job_type=job_type,
        )
        self._next_job += 1
        self.jobs[job.path] = job
        unit.job_id, unit.job_path = job.id, job.path
        sink.job_new(job)
        sink.unit_changed(unit)  # real systemd: the unit's Job changed (its state did not)
        return job

    def _end_job(self, sink: Sink, unit: StandinUnit, job: StandinJob, result: str) -> None:
        # systemd sends JobRemoved when it uninstalls the job, then the Unit change (Job gone).
        self.jobs.pop(job.path, None)
        unit.job_id, unit.job_path = 0, "/"
        sink.job_removed(job, result)
        sink.unit_changed(unit)

    def _new_run(self, sink: Sink, unit: StandinUnit, invocation_id: bytes | None = None) -> float:
        """A new invocation: ``activating/start`` then ``active/running`` (``Type=notify``,
        as ``container@.service`` is)."""
        self._next_pid += 1
        self._change(
            sink, unit, active_state="activating", sub_state="start", result="success",
            invocation_id=invocation_id or os.urandom(16), exec_main_code=0,
            exec_main_status=0, main_pid=self._next_pid,
        )
        return self._change(sink, unit, active_state="active", sub_state="running")

    def start(self, sink: Sink, name: str) -> tuple[StandinJob, float]:
        """A start job (``StartUnit``); done at once when the unit is already up."""
        unit = self.unit(name)
        job = self._new_job(sink, unit, "start")
        emitted = time.monotonic()
        if unit.active_state != "active":
            emitted = self._new_run(sink, unit)
        self._end_job(sink, unit, job, "done")
        return job, emitted

    def stop(self, sink: Sink, name: str) -> tuple[StandinJob, float]:
        """A stop job (``StopUnit`` or an operator's ``systemctl stop``)."""
        unit = self.unit(name)
        job = self._new_job(sink, unit, "stop")
        emitted = time.monotonic()
        if unit.active_state in ("active", "activating", "reloading"):
            self._change(sink, unit, active_state="deactivating", sub_state="stop-sigterm")
            if unit.stop_fails:
                emitted = self._change(
                    sink, unit, active_state="failed", sub_state="failed", result="timeout",
                    exec_main_code=2, exec_main_status=9, main_pid=0,
                )
            else:
                emitted = self._change(
                    sink, unit, active_state="inactive", sub_state="dead", result="success",
                    exec_main_code=1, exec_main_status=0, main_pid=0,
                )
        elif unit.active_state == "failed":
            # Stopping a failed unit leaves it failed; the job is done.
            emitted = time.monotonic()
        self._end_job(sink, unit, job, "done")
        return job, emitted

    def crash(
        self, sink: Sink, name: str, *, result: str, exec_main_code: int, exec_main_status: int
    ) -> float:
        """The main process dies on its own; systemd restarts it when ``Restart=`` says so."""
        unit = self.unit(name)
        if unit.active_state != "active":
            raise Conflict(
                f"fake systemd: {name} is {unit.active_state}/{unit.sub_state}; only a running "
                "unit can crash (start it first)"
            )
        ended = dict(result=result, exec_main_code=exec_main_code,
                     exec_main_status=exec_main_status, main_pid=0)
        if not restart_expected(unit.restart, result):
            return self._change(sink, unit, active_state="failed", sub_state="failed", **ended)
        first = "failed" if self.version < 254 else "failed-before-auto-restart"
        emitted = self._change(sink, unit, active_state="failed", sub_state=first, **ended)
        self._auto_restart(sink, unit)
        return emitted

    def exit_cleanly(self, sink: Sink, name: str, *, status: int, restarts: bool) -> float:
        """The container ends with a success status: a poweroff (0, no restart) or a reboot
        (133, which ``RestartForceExitStatus=133`` restarts)."""
        unit = self.unit(name)
        if unit.active_state != "active":
            raise Conflict(f"fake systemd: {name} is not running; start it first")
        ended = dict(result="success", exec_main_code=1, exec_main_status=status, main_pid=0)
        if not restarts:
            return self._change(sink, unit, active_state="inactive", sub_state="dead", **ended)
        first = "dead" if self.version < 254 else "dead-before-auto-restart"
        emitted = self._change(sink, unit, active_state="inactive", sub_state=first, **ended)
        self._auto_restart(sink, unit)
        return emitted

    def _auto_restart(self, sink: Sink, unit: StandinUnit) -> None:
        self._change(sink, unit, active_state="activating", sub_state="auto-restart")
        # RestartSec= elapsed: systemd queues the restart job and counts the restart.
        job = self._new_job(sink, unit, "restart" if self.version < 254 else "start")
        queued = "auto-restart" if self.version < 254 else "auto-restart-queued"
        self._change(sink, unit, sub_state=queued, n_restarts=unit.n_restarts + 1)
        if unit.restarts_left is not None and unit.restarts_left <= 0:
            # Start limit hit: no new run, Result keeps the first failure, the job fails.
            result = unit.result if unit.result != "success" else "start-limit-hit"
            if self.version < 254:
                # 252's restart job stops the unit first: inactive/dead, the old run's id.
                self._change(sink, unit, active_state="inactive", sub_state="dead")
            self._change(sink, unit, active_state="failed", sub_state="failed", result=result)
            self._end_job(sink, unit, job, "failed")
            return
        if unit.restarts_left is not None:
            unit.restarts_left -= 1
        invocation_id = None
        if self.version < 254:
            # 252's restart job stops the unit first: inactive/dead, already with the new
            # run's InvocationID and Result=success.
            invocation_id = os.urandom(16)
            self._change(sink, unit, active_state="inactive", sub_state="dead", result="success",
                         exec_main_code=0, exec_main_status=0, invocation_id=invocation_id)
        self._new_run(sink, unit, invocation_id)
        self._end_job(sink, unit, job, "done")
