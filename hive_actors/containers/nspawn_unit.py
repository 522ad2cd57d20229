"""The nspawn backend's unit mode: each agent's container a transient systemd unit.

With systemd as PID 1 (``[nspawn] mode = "auto"`` finds ``/run/systemd/system``, or
``mode = "unit"``) the same ``systemd-nspawn`` command line as in child mode
(:mod:`.nspawn`) runs as ``hive-agent@<name>.service``, asked of systemd over D-Bus
(``StartTransientUnit``, sdbus, the crash watcher's connection helpers)::

    Type=notify  NotifyAccess=main  Restart=no  KillMode=mixed  Delegate=yes
    TimeoutStartUSec=<start_timeout>
    ExecStart=systemd-nspawn … --notify-ready=yes --kill-signal=SIGTERM
        -- python -m hive_actors.containers.keeper keep --name <name> --init --unit

- **Readiness**: the keeper says ``READY=1`` on nspawn's notify socket and nspawn passes it on
  (``--notify-ready=yes``), so the start job ends ``done`` once the container's PID 1 runs,
  ``failed``/``timeout`` otherwise (bounded by ``TimeoutStartUSec`` and the job wait).
- **Restarts** belong to the hive's supervisor (``Restart=no``). The backend does not reap: a
  container that ends under the hive leaves its unit ``failed``, and the crash watcher reads
  ``hive-agent@*.service`` on the same bus (``registry``: the nspawn kind's units in unit
  mode) and tells the crash to the agent's actor, as for NixOS's ``container@*.service``. A
  failed unit stays loaded (``CollectMode=inactive``, systemd's default) so the watcher can
  read its ``Result``; the next start resets it first.
- **Stop**: SIGINT, SIGTERM, SIGKILL to every process in the container but its PID 1 (each
  after its grace), then ``StopUnit``: systemd's SIGTERM to nspawn, passed on to the keeper
  (``--kill-signal=SIGTERM``), which exits 0 — the unit ends ``inactive`` and is collected.
- **Status** is the unit's (``ActiveState``, ``InvocationID`` as the run's id, ``MainPID``);
  a unit that runs when the hive starts is adopted.
- **exec / pty_shell**: the same :mod:`.enter` launcher into the container's PID 1, found as
  in child mode: the unit's ``MainPID`` (``systemd-nspawn``) → its child whose innermost pid
  is 1. A shell's launcher is the hive's child here too (only the container is systemd's), so
  its pid is tracked, released (:meth:`release_shell`) and signalled at stop as in child mode:
  never a closed terminal's pid that a stranger got since.
- **Pids**: ``MainPID`` is a pid in systemd's pid namespace. The bus socket's peer (``SO_PEERCRED``
  of a connection: the process that listens, systemd for a socket-activated ``dbus.socket`` or
  the bus daemon beside it) names that namespace as this process sees it; when it is not this
  process's own (a systemd in a container, reached through a bound socket), ``MainPID`` is
  translated through ``/proc/*/status`` ``NSpid``.

A unit mode asked for where no systemd answers on the bus is refused when the backend is made
(:class:`~hive_actors.errors.ConfigError` naming the bus and the fix).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hive_actors.containers.base import ContainerExit, ContainerStatus, StopGrace
from hive_actors.containers.files import read_marker, remove_agent_files
from hive_actors.containers.nspawn import NspawnBackend
from hive_actors.containers.nspawnconf import UNIT_PREFIX
from hive_actors.containers.procgroup import wait_until
from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound, StartFailure
from hive_actors.paths import AgentPaths

__all__ = ["NspawnUnitBackend", "SystemdClient", "bus_socket", "peer_pid"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SYSTEMD = "org.freedesktop.systemd1"
_MANAGER_PATH = "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"
_UNIT = "org.freedesktop.systemd1.Unit"
_SERVICE = "org.freedesktop.systemd1.Service"
_LIVE = ("active", "activating", "reloading", "deactivating")


class SystemdClient:
    """The backend's blocking calls to systemd's Manager on one bus (a fresh sdbus connection
    per call, opened and closed in the calling thread's own short event loop; thread-safe)."""

    def __init__(self, address: str | None, *, call_timeout: float = 5.0) -> None:
        self.address = address
        self.call_timeout = call_timeout

    def where(self) -> str:
        return self.address or "the system bus"

    # -- the calls ---------------------------------------------------------------------------

    def version(self) -> str:
        """systemd's ``Version`` (a connectivity check)."""
        from hive_actors.watcher.connection import get_property

        async def call(bus: Any) -> str:
            value = await get_property(bus, _SYSTEMD, _MANAGER_PATH, _MANAGER, "Version",
                                       timeout=self.call_timeout)
            return str(value[1]) if isinstance(value, tuple) else str(value)

        return self._run(call)

    def unit(self, name: str) -> dict[str, Any] | None:
        """The unit's Unit and Service properties (``{name: value}``), None when not loaded."""
        from hive_actors.watcher.connection import get_all_properties
        from hive_actors.watcher.systemd_iface import NoSuchUnitError

        async def call(bus: Any) -> dict[str, Any] | None:
            manager = self._manager(bus)
            try:
                path = await asyncio.wait_for(manager.get_unit(name), self.call_timeout)
            except NoSuchUnitError:
                return None
            values: dict[str, Any] = {}
            for interface in (_UNIT, _SERVICE):
                raw = await get_all_properties(bus, _SYSTEMD, path, interface,
                                               timeout=self.call_timeout)
                values.update({k: v[1] for k, v in dict(raw).items()
                               if isinstance(v, tuple) and len(v) == 2})
            return values

        return self._run(call)

    def start_transient(self, name: str, properties: list[tuple[str, tuple[str, Any]]],
                        job_timeout: float) -> str:
        """``StartTransientUnit(name, "fail", properties, [])`` and the start job's result
        (``done``, ``failed``, ``timeout``…)."""
        return self._job(lambda m: m.start_transient_unit(name, "fail", properties, []),
                         f"start {name}", job_timeout)

    def stop(self, name: str, job_timeout: float) -> str | None:
        """``StopUnit(name, "replace")`` and the job's result; None when it is not loaded."""
        from hive_actors.watcher.systemd_iface import NoSuchUnitError

        try:
            return self._job(lambda m: m.stop_unit(name, "replace"), f"stop {name}", job_timeout)
        except NoSuchUnitError:
            return None

    def reset_failed(self, name: str) -> None:
        """``ResetFailedUnit``: a failed unit goes (and its name is free again)."""
        from hive_actors.watcher.systemd_iface import NoSuchUnitError

        async def call(bus: Any) -> None:
            try:
                await asyncio.wait_for(self._manager(bus).reset_failed_unit(name),
                                       self.call_timeout)
            except NoSuchUnitError:
                pass

        self._run(call)

    # -- plumbing ----------------------------------------------------------------------------

    def _manager(self, bus: Any) -> Any:
        from hive_actors.watcher.systemd_iface import ManagerInterface

        return ManagerInterface.new_proxy(_SYSTEMD, _MANAGER_PATH, bus)

    def _job(self, queue: Callable[[Any], Coroutine[Any, Any, str]], what: str,
             job_timeout: float) -> str:
        """Queue a job with ``queue(manager)`` and wait for its ``JobRemoved`` (the match and
        ``Subscribe`` come first, so the signal cannot be missed)."""

        async def call(bus: Any) -> str:
            loop = asyncio.get_running_loop()
            ended: dict[str, str] = {}
            waiters: dict[str, asyncio.Future[str]] = {}

            def on_removed(message: Any) -> None:
                contents = message.get_contents()
                if isinstance(contents, tuple) and len(contents) == 4:
                    path, result = str(contents[1]), str(contents[3])
                    future = waiters.get(path)
                    if future is not None and not future.done():
                        future.set_result(result)
                    else:
                        ended[path] = result

            slot = await asyncio.wait_for(bus.match_signal_async(
                _SYSTEMD, _MANAGER_PATH, _MANAGER, "JobRemoved", on_removed), self.call_timeout)
            try:
                manager = self._manager(bus)
                await asyncio.wait_for(manager.subscribe(), self.call_timeout)
                job = await asyncio.wait_for(queue(manager), self.call_timeout)
                if job in ended:
                    return ended[job]
                waiters[job] = loop.create_future()
                try:
                    return await asyncio.wait_for(waiters[job], job_timeout)
                except TimeoutError:
                    raise HiveError(f"{what}: systemd's job {job} did not end within "
                                    f"{job_timeout:g} s") from None
            finally:
                slot.close()

        return self._run(call)

    def _run(self, call: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Run ``call(bus)`` on a fresh connection in a fresh event loop: here, or in a helper
        thread when this thread already runs a loop."""
        from hive_actors.watcher.connection import open_bus

        async def main() -> T:
            bus = open_bus(self.address, call_timeout=self.call_timeout)
            try:
                return await call(bus)
            finally:
                bus.close()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, main()).result()


def bus_socket(address: str | None) -> str | None:
    """The socket path of a ``unix:path=`` D-Bus address (None: the system bus's), or None
    for another kind of address."""
    if address is None:
        address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS",
                                 "unix:path=/run/dbus/system_bus_socket")
    for part in address.split(";")[0].removeprefix("unix:").split(","):
        if part.startswith("path="):
            return part[len("path="):]
    return None


def peer_pid(path: str) -> int:
    """``SO_PEERCRED``'s pid of a connection to the unix socket ``path`` (the process that
    listens there, as this process's pid namespace sees it; 0 when it cannot see it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


@dataclass
class _UnitRun:
    """One run of an agent's unit as the backend found it."""

    init: int
    """The container's PID 1 (the keeper), a host pid."""
    pidns: tuple[int, int]
    since: float
    env: dict[str, str]
    run_id: str
    """The unit's ``InvocationID`` (32 hex digits)."""
    shells: set[int] = field(default_factory=set)
    """The PTY shells' launchers started in this run and not released yet: the hive's own
    children (as in child mode), so the shells rule of :mod:`.child` holds — tracked, released
    and signalled under the backend's shells lock, never reaped while tracked."""
    stopping: bool = False
    exited: threading.Event = field(default_factory=threading.Event)

    @property
    def leader(self) -> int:
        return self.init


class NspawnUnitBackend(NspawnBackend):
    """:class:`~hive_actors.containers.nspawn.NspawnBackend` whose containers are transient
    systemd units (see the module). Thread-safe."""

    mode = "unit"
    unit_prefix = UNIT_PREFIX

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        bus_address: str = "",
        call_timeout: float = 5.0,
        **options: Any,
    ) -> None:
        """``bus_address``: the D-Bus of the systemd to ask (empty: the system bus); the other
        options are :class:`NspawnBackend`'s. ConfigError when no systemd answers there."""
        super().__init__(state_dir, **options)
        self._systemd = SystemdClient(bus_address or None, call_timeout=call_timeout)
        try:
            version = self._systemd.version()
        except Exception as exc:
            raise ConfigError(
                f"nspawn backend: unit mode needs systemd on {self._systemd.where()} to run each "
                f"container as a transient unit, and none answers there ({exc}): run the hive "
                'on a host whose PID 1 is systemd, point [nspawn] bus_address at one, or set '
                '[nspawn] mode = "child"'
            ) from exc
        self._pidns = self._systemd_pidns()
        log.info("nspawn backend: unit mode, systemd %s on %s", version, self._systemd.where())

    # -- the interface -----------------------------------------------------------------------

    def unit_name(self, name: str) -> str:
        """``hive-agent@<name>.service``."""
        return f"{UNIT_PREFIX}@{name}.service"

    def start(self, name: str) -> None:
        """Start the agent's unit and return once its container's PID 1 said ready; adopt a
        unit that runs already."""
        paths = self._paths(name)
        slot = self._slot(name)
        unit = self.unit_name(name)
        with slot.op:
            props = self._systemd.unit(unit)
            if props is not None and props.get("ActiveState") in _LIVE:
                run = self._found(name, paths, props)
                with slot.state:
                    slot.running = run  # type: ignore[assignment]
                log.info("container %s: %s runs already (leader %d): adopted", name, unit,
                         run.init)
                return
            record = read_marker(paths)
            if record is None:
                raise NotFound(f"container {name} does not exist: create it first")
            self._prepare(name, paths)
            if props is not None:  # failed (its crash read by the watcher): gone before anew
                self._systemd.reset_failed(unit)
            job = self._systemd.start_transient(
                unit, self._unit_properties(name, paths), self._start_timeout_s + 5.0)
            props = self._systemd.unit(unit)
            if job != "done" or props is None or props.get("ActiveState") != "active":
                state = "not loaded" if props is None else (
                    f"{props.get('ActiveState')}/{props.get('SubState')}, result "
                    f"{props.get('Result')}, status {props.get('ExecMainStatus')}")
                raise StartFailure(
                    f"container {name}: systemd's start job of {unit} ended {job!r} ({state}); "
                    f"look at 'journalctl -u {unit}' on the host running {self._systemd.where()}"
                    ', or set [nspawn] mode = "child"'
                )
            run = self._found(name, paths, props, env=self._base_env(paths, record))
            with slot.state:
                slot.running = run  # type: ignore[assignment]
        log.info("container %s: %s running, leader pid %d", name, unit, run.init)

    def stop(self, name: str, *, grace: StopGrace | None = None) -> ContainerExit | None:
        """What runs in the container gets SIGINT, SIGTERM, SIGKILL (each after its grace),
        then ``StopUnit``; the expected exit, None when the unit did not run."""
        grace = grace or self._grace
        self._paths(name)
        slot = self._slot(name)
        unit = self.unit_name(name)
        with slot.op:
            props = self._systemd.unit(unit)
            if props is None or props.get("ActiveState") not in _LIVE:
                with slot.state:
                    slot.running = None
                return None
            with slot.state:
                run: Any = slot.running
            if run is None or run.run_id != _hex(props.get("InvocationID")):
                try:
                    run = self._found(name, self._paths(name), props)
                except StartFailure:
                    run = None
            if run is not None:
                run.stopping = True
                self._orderly(name, run, grace)
            result = self._systemd.stop(unit, max(grace.sigkill, self._leader_exit_s) + 90.0)
            when = self._clock()
            with slot.state:
                slot.running = None
                slot.stopped_at = when
            if run is not None:
                run.exited.set()
                if not wait_until(lambda: not self._alive_init(run), grace.sigkill + 5.0):
                    raise HiveError(
                        f"container {name}: its PID 1 {run.init} survived {unit}'s stop (job "
                        f"{result}); look at it with ps and 'journalctl -u {unit}'")
        log.info("container %s: %s stopped (job %s)", name, unit, result)
        return ContainerExit(name, "success", 0, None, when, True,
                             _hex(props.get("InvocationID")))

    def destroy(self, name: str, *, keep_state: bool) -> None:
        """Remove the agent's files; Conflict while its unit runs."""
        paths = self._paths(name)
        slot = self._slot(name)
        unit = self.unit_name(name)
        with slot.op:
            props = self._systemd.unit(unit)
            if props is not None and props.get("ActiveState") in _LIVE:
                raise Conflict(f"container {name} is running ({unit}): stop it before "
                               "destroying it")
            if props is not None:
                self._systemd.reset_failed(unit)
            remove_agent_files(paths, keep_state=keep_state)
            with slot.state:
                slot.running = None
                slot.stopped_at = None
        log.info("container %s: destroyed (state %s)", name, "kept" if keep_state else "removed")

    def status(self, name: str) -> ContainerStatus:
        """The unit's: running (its PID 1, since, ``InvocationID``) while active, else
        stopped or absent by the container's record."""
        paths = self._paths(name)
        slot = self._slot(name)
        props = self._systemd.unit(self.unit_name(name))
        if props is not None and props.get("ActiveState") == "active":
            run_id = _hex(props.get("InvocationID"))
            with slot.state:
                run: Any = slot.running
            if run is None or run.run_id != run_id:
                try:
                    run = self._found(name, paths, props)
                except StartFailure:
                    run = None
            since = int(props.get("ActiveEnterTimestamp") or 0) / 1e6 or None
            return ContainerStatus(name, "running", pid=run.init if run else None, since=since,
                                   run_id=run_id)
        if read_marker(paths) is None:
            return ContainerStatus(name, "absent")
        with slot.state:
            stopped_at = slot.stopped_at
        return ContainerStatus(name, "stopped", since=stopped_at)

    def runs(self) -> dict[str, str | ContainerExit]:
        """Nothing: in unit mode the crash watcher reads the units themselves on D-Bus."""
        return {}

    # -- internals ---------------------------------------------------------------------------

    def _require_running(self, name: str, slot: Any) -> Any:
        run = slot.running
        if run is None or run.exited.is_set() or not self._alive_init(run):
            raise Conflict(f"container {name} is not running: start it first")
        if run.stopping:
            raise Conflict(f"container {name} is stopping: start it again once it stopped")
        return run

    def _unit_properties(self, name: str, paths: AgentPaths) -> list[tuple[str, tuple[str, Any]]]:
        argv = self._nspawn_argv(name, paths)
        # The keeper's unit flag, and nspawn's readiness passed on to systemd.
        keeper_at = argv.index("--")
        argv = [*argv[:keeper_at], "--notify-ready=yes", "--kill-signal=SIGTERM",
                *argv[keeper_at:], "--unit"]
        env = [f"{k}={v}" for k, v in self._tool_env().items()]
        return [
            ("Description", ("s", f"hive agent {name}'s container (systemd-nspawn)")),
            ("ExecStart", ("a(sasb)", [(argv[0], argv, False)])),
            ("Environment", ("as", env)),
            ("Type", ("s", "notify")),
            ("NotifyAccess", ("s", "main")),
            ("Restart", ("s", "no")),
            ("KillMode", ("s", "mixed")),
            ("Delegate", ("b", True)),
            ("TimeoutStartUSec", ("t", int(self._start_timeout_s * 1_000_000))),
            ("WorkingDirectory", ("s", "/")),
            ("StandardInput", ("s", "null")),
        ]

    def _found(self, name: str, paths: AgentPaths, props: dict[str, Any],
               env: dict[str, str] | None = None) -> _UnitRun:
        """The run of a live unit: its container's PID 1 found from ``MainPID``."""
        unit = self.unit_name(name)
        main = int(props.get("MainPID") or 0)
        nspawn = self._host_pid(main) if main else None
        init = self._find_init(nspawn) if nspawn else None
        if init is None:
            raise StartFailure(
                f"container {name}: {unit} runs (MainPID {main} in systemd's pid namespace) but "
                f"its container's PID 1 cannot be found from here; look at 'journalctl -u {unit}'"
            )
        st = os.stat(f"{self._proc}/{init}/ns/pid")
        if env is None:
            env = self._base_env(paths, read_marker(paths) or {})
        since = int(props.get("ActiveEnterTimestamp") or 0) / 1e6 or self._clock()
        return _UnitRun(init=init, pidns=(st.st_dev, st.st_ino), since=since, env=env,
                        run_id=_hex(props.get("InvocationID")))

    def _systemd_pidns(self) -> tuple[int, int] | None:
        """systemd's pid namespace when it is not this process's (None: the same, or unknown:
        pids are taken as they are)."""
        path = bus_socket(self._systemd.address)
        if path is None:
            return None
        try:
            pid = peer_pid(path)
            st = os.stat(f"{self._proc}/{pid}/ns/pid") if pid else None
            own = os.stat(f"{self._proc}/self/ns/pid")
        except OSError:
            return None
        if st is None or (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return None
        return (st.st_dev, st.st_ino)

    def _host_pid(self, pid: int) -> int | None:
        """The pid here of the process that is ``pid`` in systemd's pid namespace."""
        if self._pidns is None:
            return pid
        for entry in os.listdir(self._proc):
            if not entry.isdigit():
                continue
            try:
                st = os.stat(f"{self._proc}/{entry}/ns/pid")
                if (st.st_dev, st.st_ino) != self._pidns:
                    continue
                for line in Path(f"{self._proc}/{entry}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == pid:
                        return int(entry)
            except (OSError, ValueError):
                continue
        return None


def _hex(value: Any) -> str:
    """An ``InvocationID`` (bytes) as 32 hex digits; empty when there is none."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, list):
        return bytes(value).hex()
    return ""

