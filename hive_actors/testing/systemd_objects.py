"""The stand-in systemd's D-Bus objects: the manager, one object per unit and per job, and a
control interface that drives it from another process.

Everything here runs in the stand-in's event-loop thread. The objects read the
:class:`~hive_actors.testing.systemd_units.UnitMachine` directly; :class:`BusSink` turns the machine's
changes into signals, sent only while some connection is subscribed (as systemd does: it emits
unit and job signals only once a client called ``Subscribe``, and forgets a subscriber whose
connection closed).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from typing import Any, Protocol

from sdbus import (
    DbusInterfaceCommonAsync,
    SdBus,
    dbus_method_async,
    dbus_method_async_override,
    dbus_property_async_override,
    encode_object_path,
    get_current_message,
)

from hive_actors.testing.systemd_units import Sink, StandinJob, StandinUnit, UnitMachine
from hive_actors.watcher.props import SERVICE_INTERFACE, UNIT_INTERFACE
from hive_actors.watcher.systemd_iface import (
    UNIT_PATH_PREFIX,
    AlreadySubscribedError,
    JobInterface,
    ListedUnit,
    ManagerInterface,
    NoSuchUnitError,
    ServiceInterface,
    UnitInterface,
)

__all__ = [
    "CONTROL_INTERFACE",
    "CONTROL_PATH",
    "BusSink",
    "ControlInterface",
    "ControlOps",
    "ManagerObject",
    "Server",
    "unit_path",
]

log = logging.getLogger(__name__)

CONTROL_INTERFACE = "org.hive.testing.StandinSystemd"
CONTROL_PATH = "/org/hive/testing/StandinSystemd"


def unit_path(name: str) -> str:
    """The object path systemd gives a unit (every byte outside ``[A-Za-z0-9]`` as ``_xx``)."""
    return encode_object_path(UNIT_PATH_PREFIX, name)


class Server(Protocol):
    """What the objects need from the serving side."""

    machine: UnitMachine
    subscribers: set[str]

    @property
    def sink(self) -> Sink:
        """Where state changes go."""

    def stop_job(self, name: str) -> StandinJob:
        """Queue and run a stop job (``StopUnit``)."""

    def start_job(self, name: str) -> StandinJob:
        """Queue and run a start job (``StartUnit``)."""


def service_variants(unit: StandinUnit) -> dict[str, tuple[str, Any]]:
    """The ``Service`` properties systemd puts in its change signal."""
    return {
        "Result": ("s", unit.result),
        "ExecMainCode": ("i", unit.exec_main_code),
        "ExecMainStatus": ("i", unit.exec_main_status),
        "NRestarts": ("u", unit.n_restarts),
        "MainPID": ("u", unit.main_pid),
    }


def unit_variants(unit: StandinUnit) -> dict[str, tuple[str, Any]]:
    """The ``Unit`` properties systemd puts in its change signal."""
    return {
        "ActiveState": ("s", unit.active_state),
        "SubState": ("s", unit.sub_state),
        "Job": ("(uo)", (unit.job_id, unit.job_path)),
        "InvocationID": ("ay", unit.invocation_id),
    }


class UnitObject(UnitInterface, ServiceInterface):
    """A unit at its escaped path, with the ``Unit`` and ``Service`` interfaces."""

    def __init__(self, unit: StandinUnit) -> None:
        super().__init__()
        self.unit = unit

    @dbus_property_async_override()
    def id(self) -> str:
        return self.unit.name

    @dbus_property_async_override()
    def description(self) -> str:
        return self.unit.description

    @dbus_property_async_override()
    def load_state(self) -> str:
        return "loaded"

    @dbus_property_async_override()
    def active_state(self) -> str:
        return self.unit.active_state

    @dbus_property_async_override()
    def sub_state(self) -> str:
        return self.unit.sub_state

    @dbus_property_async_override()
    def job(self) -> tuple[int, str]:
        return (self.unit.job_id, self.unit.job_path)

    @dbus_property_async_override()
    def invocation_id(self) -> bytes:
        return self.unit.invocation_id

    @dbus_property_async_override()
    def restart(self) -> str:
        return self.unit.restart

    @dbus_property_async_override()
    def result(self) -> str:
        return self.unit.result

    @dbus_property_async_override()
    def exec_main_code(self) -> int:
        return self.unit.exec_main_code

    @dbus_property_async_override()
    def exec_main_status(self) -> int:
        return self.unit.exec_main_status

    @dbus_property_async_override()
    def n_restarts(self) -> int:
        return self.unit.n_restarts

    @dbus_property_async_override()
    def main_pid(self) -> int:
        return self.unit.main_pid


class JobObject(JobInterface):
    """A queued job at ``/org/freedesktop/systemd1/job/<id>``."""

    def __init__(self, job: StandinJob) -> None:
        super().__init__()
        self._job = job

    @dbus_property_async_override()
    def id(self) -> int:
        return self._job.id

    @dbus_property_async_override()
    def unit(self) -> tuple[str, str]:
        return (self._job.unit, unit_path(self._job.unit))

    @dbus_property_async_override()
    def job_type(self) -> str:
        return self._job.job_type

    @dbus_property_async_override()
    def state(self) -> str:
        return "running"


class ManagerObject(ManagerInterface):
    """``org.freedesktop.systemd1.Manager``."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self._server = server

    @dbus_method_async_override()
    async def subscribe(self) -> None:
        sender = get_current_message().sender
        if not sender:
            return
        if sender in self._server.subscribers:
            raise AlreadySubscribedError("Client is already subscribed.")
        self._server.subscribers.add(sender)

    @dbus_method_async_override()
    async def unsubscribe(self) -> None:
        self._server.subscribers.discard(get_current_message().sender or "")

    @dbus_method_async_override()
    async def list_units_by_patterns(
        self, states: list[str], patterns: list[str]
    ) -> list[ListedUnit]:
        rows: list[ListedUnit] = []
        jobs = {job.path: job for job in self._server.machine.jobs.values()}
        for unit in self._server.machine.units.values():
            if patterns and not any(fnmatch.fnmatchcase(unit.name, p) for p in patterns):
                continue
            if states and not {unit.active_state, unit.sub_state, "loaded"} & set(states):
                continue
            job = jobs.get(unit.job_path)
            rows.append((
                unit.name, unit.description, "loaded", unit.active_state, unit.sub_state, "",
                unit_path(unit.name), unit.job_id, job.job_type if job else "", unit.job_path,
            ))
        return rows

    @dbus_method_async_override()
    async def get_unit(self, name: str) -> str:
        if name not in self._server.machine.units:
            raise NoSuchUnitError(f"Unit {name} not loaded.")
        return unit_path(name)

    @dbus_method_async_override()
    async def start_unit(self, name: str, mode: str) -> str:
        if name not in self._server.machine.units:
            raise NoSuchUnitError(f"Unit {name} not found.")
        return self._server.start_job(name).path

    @dbus_method_async_override()
    async def stop_unit(self, name: str, mode: str) -> str:
        if name not in self._server.machine.units:
            raise NoSuchUnitError(f"Unit {name} not loaded.")
        return self._server.stop_job(name).path

    @dbus_method_async_override()
    async def reset_failed_unit(self, name: str) -> None:
        unit = self._server.machine.units.get(name)
        if unit is None:
            raise NoSuchUnitError(f"Unit {name} not loaded.")
        if unit.active_state == "failed":
            unit.active_state, unit.sub_state, unit.result = "inactive", "dead", "success"
            self._server.sink.unit_changed(unit)


class BusSink:
    """Turns machine changes into signals on ``bus``; exports and drops unit and job objects."""

    def __init__(self, bus: SdBus, manager: ManagerObject, subscribers: set[str]) -> None:
        self._bus = bus
        self._manager = manager
        self._subscribers = subscribers
        self.unit_objects: dict[str, tuple[UnitObject, Any]] = {}
        self._job_objects: dict[str, tuple[JobObject, Any]] = {}
        self.quiet = False
        """Send no signals (state still changes): a test's way to make a change "unseen"."""

    @property
    def _sending(self) -> bool:
        return bool(self._subscribers) and not self.quiet

    def export_unit(self, unit: StandinUnit) -> None:
        """Serve ``unit`` at its path."""
        obj = UnitObject(unit)
        self.unit_objects[unit.name] = (obj, obj.export_to_dbus(unit_path(unit.name), self._bus))

    def close(self) -> None:
        """Stop serving every object."""
        for _, handle in self.unit_objects.values():
            handle.stop()
        for _, handle in self._job_objects.values():
            handle.stop()
        self.unit_objects.clear()
        self._job_objects.clear()

    def unit_changed(self, unit: StandinUnit) -> None:
        if not self._sending:
            return
        obj, _ = self.unit_objects[unit.name]
        # systemd sends the unit type's interface first, then the generic Unit one.
        obj.properties_changed.emit((SERVICE_INTERFACE, service_variants(unit), []))
        obj.properties_changed.emit((UNIT_INTERFACE, unit_variants(unit), []))

    def raw_properties(
        self, unit: StandinUnit, interface: str, changed: dict[str, tuple[str, Any]]
    ) -> None:
        """Emit a hand-made ``PropertiesChanged`` (malformed on purpose, in tests)."""
        obj, _ = self.unit_objects[unit.name]
        obj.properties_changed.emit((interface, changed, []))

    def raw_signal(
        self, path: str, interface: str, member: str, signature: str, args: tuple[Any, ...]
    ) -> None:
        """Send any signal (wrong signatures on purpose, in tests)."""
        message = self._bus.new_signal_message(path, interface, member)
        if signature:
            message.append_data(signature, *args)
        message.send()

    def job_new(self, job: StandinJob) -> None:
        # sdbus holds served objects weakly: keep the object with its export handle.
        obj = JobObject(job)
        self._job_objects[job.path] = (obj, obj.export_to_dbus(job.path, self._bus))
        if self._sending:
            self._manager.job_new.emit((job.id, job.path, job.unit))

    def job_removed(self, job: StandinJob, result: str) -> None:
        served = self._job_objects.pop(job.path, None)
        if served is not None:
            served[1].stop()
        if self._sending:
            self._manager.job_removed.emit((job.id, job.path, job.unit, result))

    def unit_new(self, unit: StandinUnit) -> None:
        self.export_unit(unit)
        if self._sending:
            self._manager.unit_new.emit((unit.name, unit_path(unit.name)))

    def unit_removed(self, unit: StandinUnit) -> None:
        _, handle = self.unit_objects.pop(unit.name)
        handle.stop()
        if self._sending:
            self._manager.unit_removed.emit((unit.name, unit_path(unit.name)))

    def reloading(self, active: bool) -> None:
        """``Reloading(active)``."""
        if self._sending:
            self._manager.reloading.emit(active)


class ControlOps(Protocol):
    """What the control interface drives (the stand-in, in its loop thread)."""

    machine: UnitMachine

    def add_unit_now(self, name: str, *, restart: str = "no") -> None:
        """Load a unit."""

    def start_now(self, name: str) -> float:
        """Start a unit."""

    def crash_now(self, name: str, result: str, exec_main_code: int, status: int) -> float:
        """Crash a running unit."""

    def exit_now(self, name: str, status: int, restarts: bool) -> float:
        """End a running unit with a success status."""

    def operator_stop_now(self, name: str) -> float:
        """Stop a unit."""

    def reloading_now(self) -> None:
        """Send Reloading(true) and Reloading(false)."""


class ControlInterface(DbusInterfaceCommonAsync, interface_name=CONTROL_INTERFACE):
    """Drives a stand-in that runs in another process (``python -m
    hive_actors.testing.systemd_standin``). Times are ``time.monotonic()`` of the telling emission
    (comparable across processes on Linux). Call it through ``ControlInterface.new_proxy(
    "org.freedesktop.systemd1", CONTROL_PATH, bus)``."""

    def __init__(self, ops: ControlOps) -> None:
        super().__init__()
        self._ops = ops
        self._crashed = math.nan
        """When the last :meth:`crash` sent its failure."""

    @dbus_method_async("ss", method_name="AddUnit")
    async def add_unit(self, name: str, restart: str) -> None:
        """Load a unit with a ``Restart=`` policy."""
        self._ops.add_unit_now(name, restart=restart)

    @dbus_method_async("s", "d", method_name="Start")
    async def start(self, name: str) -> float:
        """Start a unit (a start job, as an operator would)."""
        return float(self._ops.start_now(name))

    @dbus_method_async("ssii", "d", method_name="Crash")
    async def crash(self, name: str, result: str, exec_main_code: int, status: int) -> float:
        """Kill a running unit's main process (``exec_main_code`` 1 exited, 2 killed, 3 dumped).
        Called without expecting a reply (a crash is nobody's answer: a latency measurement
        has no reply in flight), its time is read with :meth:`last_crash`."""
        self._crashed = float(self._ops.crash_now(name, result, exec_main_code, status))
        return self._crashed

    @dbus_method_async(result_signature="d", method_name="LastCrash")
    async def last_crash(self) -> float:
        """When the last :meth:`crash` sent its failure (``time.monotonic()``; NaN: none yet)."""
        return self._crashed

    @dbus_method_async("s", "d", method_name="Reboot")
    async def reboot(self, name: str) -> float:
        """A reboot inside the container (exit 133, restarted)."""
        return float(self._ops.exit_now(name, 133, True))

    @dbus_method_async("s", "d", method_name="Poweroff")
    async def poweroff(self, name: str) -> float:
        """A poweroff inside the container (exit 0)."""
        return float(self._ops.exit_now(name, 0, False))

    @dbus_method_async("s", "d", method_name="OperatorStop")
    async def operator_stop(self, name: str) -> float:
        """An operator's ``systemctl stop``."""
        return float(self._ops.operator_stop_now(name))

    @dbus_method_async("sb", method_name="SetStopFails")
    async def set_stop_fails(self, name: str, fails: bool) -> None:
        """Make the unit's next stops fail (``Result=timeout``)."""
        self._ops.machine.unit(name).stop_fails = fails

    @dbus_method_async(method_name="EmitReloading")
    async def emit_reloading(self) -> None:
        """``Reloading(true)`` then ``Reloading(false)``, as a daemon-reload."""
        self._ops.reloading_now()
