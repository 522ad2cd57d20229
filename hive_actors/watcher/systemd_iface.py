"""systemd's D-Bus interfaces, the members the hive uses, declared once for sdbus.

sdbus allows one class per D-Bus interface name in a process, so these declarations serve both
sides: the watcher makes proxies of them, and the stand-in systemd
(:mod:`hive_actors.testing.systemd_standin`) subclasses them with ``dbus_method_async_override`` /
``dbus_property_async_override``. A member called on a local object that did not override it
answers a D-Bus error that says so.

Signatures are systemd's (``org.freedesktop.systemd1(5)``); ``sdbus-systemd`` is avoided on purpose
(partly broken with sdbus 0.14).
"""

from __future__ import annotations

from typing import Any

from sdbus import (
    DbusFailedError,
    DbusInterfaceCommonAsync,
    DbusPropertyConstFlag,
    DbusPropertyEmitsChangeFlag,
    dbus_method_async,
    dbus_property_async,
    dbus_signal_async,
)

from hive_actors.errors import HiveError

__all__ = [
    "JOB_PATH_PREFIX",
    "MANAGER_PATH",
    "SYSTEMD_BUS_NAME",
    "UNIT_PATH_PREFIX",
    "AlreadySubscribedError",
    "JobInterface",
    "ListedUnit",
    "ManagerInterface",
    "NoSuchJobError",
    "NoSuchUnitError",
    "ServiceInterface",
    "UnitInterface",
]

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit"
JOB_PATH_PREFIX = "/org/freedesktop/systemd1/job"

_EMITS = DbusPropertyEmitsChangeFlag
_CONST = DbusPropertyConstFlag

ListedUnit = tuple[str, str, str, str, str, str, str, int, str, str]
"""One ``ListUnitsByPatterns`` row: name, description, load state, active state, sub state,
followed unit, unit path, job id, job type, job path."""


class NoSuchUnitError(DbusFailedError):
    """systemd has no unit of that name loaded."""

    dbus_error_name = "org.freedesktop.systemd1.NoSuchUnit"


class AlreadySubscribedError(DbusFailedError):
    """systemd answers this to a second ``Subscribe`` on one connection."""

    dbus_error_name = "org.freedesktop.systemd1.AlreadySubscribed"


class NoSuchJobError(DbusFailedError):
    """systemd has no job of that id."""

    dbus_error_name = "org.freedesktop.systemd1.NoSuchJob"


def _not_served(member: str) -> HiveError:
    return HiveError(
        f"{member} is only declared here (a proxy of systemd's interface); a local object must "
        "override it with dbus_method_async_override / dbus_property_async_override"
    )


class ManagerInterface(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Manager"):
    """``org.freedesktop.systemd1.Manager`` on ``/org/freedesktop/systemd1``."""

    @dbus_method_async(method_name="Subscribe")
    async def subscribe(self) -> None:
        """Ask for unit and job signals; systemd sends none until some client subscribed."""
        raise _not_served("Manager.Subscribe")

    @dbus_method_async(method_name="Unsubscribe")
    async def unsubscribe(self) -> None:
        """Withdraw a ``Subscribe``."""
        raise _not_served("Manager.Unsubscribe")

    @dbus_method_async(
        "asas",
        "a(ssssssouso)",
        method_name="ListUnitsByPatterns",
        input_args_names=("states", "patterns"),
        result_args_names=("units",),
    )
    async def list_units_by_patterns(
        self, states: list[str], patterns: list[str]
    ) -> list[ListedUnit]:
        """Loaded units whose name matches a glob in ``patterns`` (and a state in ``states``,
        when not empty)."""
        raise _not_served("Manager.ListUnitsByPatterns")

    @dbus_method_async(
        "s", "o", method_name="GetUnit", input_args_names=("name",), result_args_names=("unit",)
    )
    async def get_unit(self, name: str) -> str:
        """Object path of a loaded unit; ``NoSuchUnit`` otherwise."""
        raise _not_served("Manager.GetUnit")

    @dbus_method_async(
        "ss",
        "o",
        method_name="StartUnit",
        input_args_names=("name", "mode"),
        result_args_names=("job",),
    )
    async def start_unit(self, name: str, mode: str) -> str:
        """Queue a start job; answers its path. ``JobRemoved`` says how it ended."""
        raise _not_served("Manager.StartUnit")

    @dbus_method_async(
        "ss",
        "o",
        method_name="StopUnit",
        input_args_names=("name", "mode"),
        result_args_names=("job",),
    )
    async def stop_unit(self, name: str, mode: str) -> str:
        """Queue a stop job; answers its path. ``JobRemoved`` says how it ended."""
        raise _not_served("Manager.StopUnit")

    @dbus_method_async(
        "ssa(sv)a(sa(sv))",
        "o",
        method_name="StartTransientUnit",
        input_args_names=("name", "mode", "properties", "aux"),
        result_args_names=("job",),
    )
    async def start_transient_unit(
        self,
        name: str,
        mode: str,
        properties: list[tuple[str, tuple[str, Any]]],
        aux: list[tuple[str, list[tuple[str, tuple[str, Any]]]]],
    ) -> str:
        """Create a unit that lives until it is stopped (or garbage-collected) and start it;
        answers the start job's path. ``properties``: ``(name, (signature, value))`` pairs —
        sdbus writes a variant from a ``(signature, value)`` tuple — e.g.
        ``("ExecStart", ("a(sasb)", [(path, argv, False)]))``; ``aux``: more units to create
        with it (none here)."""
        raise _not_served("Manager.StartTransientUnit")

    @dbus_method_async("s", method_name="ResetFailedUnit", input_args_names=("name",))
    async def reset_failed_unit(self, name: str) -> None:
        """Move a ``failed`` unit to ``inactive`` and forget its failure."""
        raise _not_served("Manager.ResetFailedUnit")

    @dbus_signal_async("uos", ("id", "job", "unit"), signal_name="JobNew")
    def job_new(self) -> tuple[int, str, str]:
        """A job was queued."""
        raise _not_served("Manager.JobNew")

    @dbus_signal_async("uoss", ("id", "job", "unit", "result"), signal_name="JobRemoved")
    def job_removed(self) -> tuple[int, str, str, str]:
        """A job ended: ``done``, ``canceled``, ``timeout``, ``failed``, ``dependency``,
        ``skipped``."""
        raise _not_served("Manager.JobRemoved")

    @dbus_signal_async("so", ("id", "unit"), signal_name="UnitNew")
    def unit_new(self) -> tuple[str, str]:
        """A unit was loaded."""
        raise _not_served("Manager.UnitNew")

    @dbus_signal_async("so", ("id", "unit"), signal_name="UnitRemoved")
    def unit_removed(self) -> tuple[str, str]:
        """A unit was unloaded."""
        raise _not_served("Manager.UnitRemoved")

    @dbus_signal_async("b", ("active",), signal_name="Reloading")
    def reloading(self) -> bool:
        """``true`` when a daemon-reload starts, ``false`` when it is done."""
        raise _not_served("Manager.Reloading")


class UnitInterface(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Unit"):
    """``org.freedesktop.systemd1.Unit`` on a unit object."""

    @dbus_property_async("s", flags=_CONST, property_name="Id")
    def id(self) -> str:
        """The unit's name."""
        raise _not_served("Unit.Id")

    @dbus_property_async("s", flags=_EMITS, property_name="Description")
    def description(self) -> str:
        """``Description=``."""
        raise _not_served("Unit.Description")

    @dbus_property_async("s", flags=_EMITS, property_name="LoadState")
    def load_state(self) -> str:
        """``loaded``, ``not-found``, ``masked``…"""
        raise _not_served("Unit.LoadState")

    @dbus_property_async("s", flags=_EMITS, property_name="ActiveState")
    def active_state(self) -> str:
        """``active``, ``activating``, ``deactivating``, ``inactive``, ``failed``…"""
        raise _not_served("Unit.ActiveState")

    @dbus_property_async("s", flags=_EMITS, property_name="SubState")
    def sub_state(self) -> str:
        """The unit type's own state (``running``, ``auto-restart``, ``failed``…)."""
        raise _not_served("Unit.SubState")

    @dbus_property_async("(uo)", flags=_EMITS, property_name="Job")
    def job(self) -> tuple[int, str]:
        """The pending job's id and path; ``(0, "/")`` when none."""
        raise _not_served("Unit.Job")

    @dbus_property_async("ay", flags=_EMITS, property_name="InvocationID")
    def invocation_id(self) -> bytes:
        """16 bytes naming the current (or last) run; empty before the first."""
        raise _not_served("Unit.InvocationID")


class ServiceInterface(
    DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Service"
):
    """``org.freedesktop.systemd1.Service`` on a service unit object."""

    @dbus_property_async("s", flags=_CONST, property_name="Restart")
    def restart(self) -> str:
        """``Restart=``: ``no``, ``on-failure``, ``always``…"""
        raise _not_served("Service.Restart")

    @dbus_property_async("s", flags=_EMITS, property_name="Result")
    def result(self) -> str:
        """How the last run ended: ``success``, ``exit-code``, ``signal``, ``core-dump``…"""
        raise _not_served("Service.Result")

    @dbus_property_async("i", flags=_EMITS, property_name="ExecMainCode")
    def exec_main_code(self) -> int:
        """1 exited, 2 killed, 3 dumped."""
        raise _not_served("Service.ExecMainCode")

    @dbus_property_async("i", flags=_EMITS, property_name="ExecMainStatus")
    def exec_main_status(self) -> int:
        """Exit code, or signal number."""
        raise _not_served("Service.ExecMainStatus")

    @dbus_property_async("u", flags=_EMITS, property_name="NRestarts")
    def n_restarts(self) -> int:
        """Automatic restarts so far."""
        raise _not_served("Service.NRestarts")

    @dbus_property_async("u", flags=_EMITS, property_name="MainPID")
    def main_pid(self) -> int:
        """The main process, 0 when none."""
        raise _not_served("Service.MainPID")


class JobInterface(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Job"):
    """``org.freedesktop.systemd1.Job`` on a job object."""

    @dbus_property_async("u", flags=_CONST, property_name="Id")
    def id(self) -> int:
        """The job's number."""
        raise _not_served("Job.Id")

    @dbus_property_async("(so)", flags=_CONST, property_name="Unit")
    def unit(self) -> tuple[str, str]:
        """The unit's name and path."""
        raise _not_served("Job.Unit")

    @dbus_property_async("s", flags=_CONST, property_name="JobType")
    def job_type(self) -> str:
        """``start``, ``stop``, ``restart``, ``reload``…"""
        raise _not_served("Job.JobType")

    @dbus_property_async("s", flags=_EMITS, property_name="State")
    def state(self) -> str:
        """``waiting`` or ``running``."""
        raise _not_served("Job.State")

