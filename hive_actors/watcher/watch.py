"""The crash watcher's D-Bus reader: systemd's signals about ``container@*.service`` in, plain data out.

:class:`SystemdWatch` is an asyncio object (the ``CrashWatcherActor`` runs it in a thread of its
own, see :meth:`SystemdWatch.start_in_thread`). It reads and decides nothing: per connection it

1. connects to the system bus (or the given address) and installs its signal matches —
   ``PropertiesChanged`` from systemd (kept only under ``…/unit/container_40``), the Manager's
   signals (``JobRemoved``, ``Reloading``), ``NameOwnerChanged`` — each awaited until installed;
2. then ``Subscribe()``, then ``ListUnitsByPatterns([], ["container@*.service"])`` and a
   ``GetAll`` of every agent unit, each handed over as a
   :class:`~hive_actors.watcher.reports.UnitObserved` (a unit no longer listed as a
   :class:`~hive_actors.watcher.reports.UnitGone`);
3. merges each unit's ``Service``-then-``Unit`` ``PropertiesChanged`` and hands the merged
   properties over as one :class:`~hive_actors.watcher.reports.UnitObserved` when the ``Unit``
   part arrives (reading a unit whole first when it was not read yet, and the type of a failed
   unit's job it did not see queued);
4. rescans on ``Reloading(false)``, on a new owner of ``org.freedesktop.systemd1``, and on a slow
   periodic tick; notices a lost bus (a local check every ``health_interval``) and reconnects
   with backoff.

sdbus's signal callbacks only queue the signal; one consumer task handles the queue in arrival
order, so a unit's signals are handed over in order even when reading one needs a D-Bus round
trip. What it hands ``on_report`` is classified by its owner
(:class:`~hive_actors.watcher.judge.UnitJudge`). Bad input (odd types, missing properties,
odd unit names, error answers) is handed over as an
:class:`~hive_actors.watcher.verdicts.Unreadable` report with the unit's name, or a notice:
nothing is concluded from it.

Thread safety: :meth:`start_unit`, :meth:`stop_unit`, :meth:`request_rescan` and :meth:`stop`
may be called from any thread; ``on_report`` is called in the watcher's thread (and, for the
stop intents of :meth:`start_unit` / :meth:`stop_unit`, in the caller's) and must not block (an
actor's ``tell`` is right).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import sdbus

from hive_actors.errors import HiveError, NotFound, Refused
from hive_actors.watcher.backoff import Backoff
from hive_actors.watcher.connection import (
    BusClosed,
    get_all_properties,
    get_property,
    is_connected,
    open_bus,
    translate_error,
)
from hive_actors.watcher.props import (
    DEFAULT_UNIT_PREFIX,
    SERVICE_INTERFACE,
    UNIT_INTERFACE,
    agent_of_unit,
    check_variants,
    unit_name_for,
)
from hive_actors.watcher.reports import (
    NoticeKind,
    Observation,
    StopCleared,
    StopExpected,
    UnitGone,
    UnitObserved,
    UnitReport,
    WatcherNotice,
)
from hive_actors.watcher.runner import WatchThread, run_in_thread
from hive_actors.watcher.systemd_iface import (
    MANAGER_PATH,
    SYSTEMD_BUS_NAME,
    UNIT_PATH_PREFIX,
    AlreadySubscribedError,
    ManagerInterface,
    NoSuchUnitError,
)
from hive_actors.watcher.tracker import UnitState
from hive_actors.watcher.verdicts import Unreadable

__all__ = ["CONTAINER_PATH_PREFIX", "SystemdWatch", "unit_path_prefix"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTAINER_PATH_PREFIX = UNIT_PATH_PREFIX + "/container_40"
"""Object paths of ``container@….service`` units start with this (``@`` escapes to ``_40``)."""



def unit_path_prefix(prefix: str) -> str:
    """Where the object paths of ``<prefix>@….service`` units start (systemd escapes every byte
    but ``[A-Za-z0-9]`` as ``_xx``: ``hive-agent@`` is ``hive_2dagent_40``)."""
    return sdbus.encode_object_path(UNIT_PATH_PREFIX, f"{prefix}@")

_PROPERTIES = "org.freedesktop.DBus.Properties"
_MANAGER = "org.freedesktop.systemd1.Manager"
_DBUS = "org.freedesktop.DBus"
_DBUS_PATH = "/org/freedesktop/DBus"
_REMEMBERED_JOBS = 256
# Errors that mean "systemd is not on the bus" rather than "the bus is broken".
_ABSENT = (sdbus.DbusServiceUnknownError, sdbus.DbusNameHasNoOwnerError)
# Errors that mean "that object is gone" (a unit unloaded between a list and a read).
_GONE = (sdbus.DbusUnknownObjectError, sdbus.DbusUnknownInterfaceError, NoSuchUnitError)


@dataclass(frozen=True)
class _Sync:
    reason: str


@dataclass(frozen=True)
class _PropertiesChanged:
    path: str
    contents: Any


@dataclass(frozen=True)
class _ManagerSignal:
    member: str
    contents: Any


@dataclass(frozen=True)
class _OwnerChanged:
    contents: Any


_Event = _Sync | _PropertiesChanged | _ManagerSignal | _OwnerChanged


class SystemdWatch:
    """Reads the ``container@<agent>.service`` units off D-Bus and hands over what it read.

    ``unit_prefix``: the units' template name (``container``, NixOS's; ``hive-agent``, the nspawn
    backend's transient units): ``<unit_prefix>@<agent>.service`` is read, nothing else.
    ``address``: a D-Bus address (``unix:path=…``), or None for the system bus.
    ``is_agent(name)``: whether to read ``name``'s unit (other units are ignored; a filter on
    names, read in the watcher's thread, so it must be thread-safe).
    ``on_report(item)``: receives every :data:`~hive_actors.watcher.reports.Observation`.
    ``now``: the clock stamped on observations. The intervals are seconds.
    """

    def __init__(
        self,
        address: str | None,
        is_agent: Callable[[str], bool],
        on_report: Callable[[Observation], None],
        *,
        now: Callable[[], float] = time.monotonic,
        call_timeout: float = 5.0,
        job_timeout: float = 300.0,
        health_interval: float = 0.2,
        rescan_interval: float = 300.0,
        backoff: Backoff | None = None,
        rng: Callable[[], float] = random.random,
        unit_prefix: str = DEFAULT_UNIT_PREFIX,
    ) -> None:
        for name, value in (("call_timeout", call_timeout), ("job_timeout", job_timeout),
                            ("health_interval", health_interval),
                            ("rescan_interval", rescan_interval)):
            if not value > 0:
                raise Refused(f"watcher: {name} must be > 0 seconds, got {value!r}")
        self._address = address
        self._prefix = unit_prefix
        self._pattern = f"{unit_prefix}@*.service"
        self._path_prefix = unit_path_prefix(unit_prefix)
        self._is_agent = is_agent
        self._on_report = on_report
        self._now = now
        self._call_timeout = call_timeout
        self._job_timeout = job_timeout
        self._health_interval = health_interval
        self._rescan_interval = rescan_interval
        self._backoff = backoff if backoff is not None else Backoff()
        self._rng = rng
        self._units: dict[str, UnitState] = {}
        self._job_types: dict[str, str] = {}
        self._pending_jobs: dict[str, asyncio.Future[str]] = {}
        self._removed_jobs: OrderedDict[str, str] = OrderedDict()
        self._odd_names: set[str] = set()
        # asyncio holds tasks weakly: every task we start lives here until it is done.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._stop_requested = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._running = threading.Event()
        self._bus: sdbus.SdBus | None = None
        self._manager: ManagerInterface | None = None
        self._slots: list[Any] = []
        self._queue: asyncio.Queue[_Event] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._sync_queued = False
        self._subscribed = False
        self._systemd_present = False

    # --- public, thread-safe ---------------------------------------------------------------

    def start_unit(self, agent: str) -> concurrent.futures.Future[str]:
        """``StartUnit`` for ``agent``'s unit; the future gets the job's ``JobRemoved`` result
        (``done``, ``failed``…). Hands over a :class:`StopCleared` first."""
        unit = self._unit_for(agent)
        self._deliver(StopCleared(agent))
        return self._submit(lambda: self._job_request("start", agent, unit))

    def stop_unit(self, agent: str) -> concurrent.futures.Future[str]:
        """``StopUnit`` for ``agent``'s unit, announced first with a :class:`StopExpected`;
        the future gets the job's result (a stop that left the unit ``failed`` still says
        ``done``: the :class:`~hive_actors.watcher.verdicts.FailedStop` verdict tells)."""
        unit = self._unit_for(agent)
        self._deliver(StopExpected(agent))
        return self._submit(lambda: self._job_request("stop", agent, unit))

    def request_rescan(self) -> None:
        """Rescan every agent unit soon (a ``rescanned`` notice follows)."""
        with self._state_lock:
            if self._loop is not None and not self._closed:
                self._loop.call_soon_threadsafe(self._request_sync, "rescan requested")

    def stop(self) -> None:
        """Ask :meth:`run` to return; it closes the connection on its way out."""
        self._stop_requested.set()
        with self._state_lock:
            if self._loop is not None and not self._closed and self._stop_event is not None:
                self._loop.call_soon_threadsafe(self._stop_event.set)

    def start_in_thread(
        self,
        *,
        timeout: float = 10.0,
        on_exit: Callable[[BaseException | None], None] | None = None,
    ) -> WatchThread:
        """Run :meth:`run` in a new thread with its own event loop; returns once the loop runs
        (not once connected: a watcher may wait for its bus). ``on_exit`` gets the exception
        :meth:`run` died of, or None after a requested stop."""
        return run_in_thread(self, self._running, timeout=timeout, on_exit=on_exit)

    # --- the run loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch until :meth:`stop`: connect, watch, and reconnect with backoff when the bus or
        systemd goes away."""
        with self._state_lock:
            if self._loop is not None:
                raise HiveError("watcher: run() was already called; make a new SystemdWatch")
            self._loop = asyncio.get_running_loop()
            self._stop_event = stop_event = asyncio.Event()
        if self._stop_requested.is_set():
            stop_event.set()
        self._running.set()
        attempt = 0
        try:
            while not stop_event.is_set():
                try:
                    await self._connect()
                    attempt = 0
                    await self._watch(stop_event)
                except (BusClosed, TimeoutError, sdbus.SdBusBaseError) as exc:
                    self._notice("disconnected", f"{self._where()}: {exc}")
                finally:
                    await self._teardown()
                if stop_event.is_set():
                    break
                delay = self._backoff.delay(attempt, self._rng())
                attempt += 1
                log.info("watcher: reconnecting to %s in %.2f s", self._where(), delay)
                try:
                    await asyncio.wait_for(stop_event.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            with self._state_lock:
                self._closed = True
            self._fail_jobs(HiveError("watcher: stopped before the job ended"))

    def _where(self) -> str:
        return self._address or "the system bus"

    async def _connect(self) -> None:
        bus = open_bus(self._address, call_timeout=self._call_timeout)
        self._bus = bus
        self._queue = asyncio.Queue()
        self._sync_queued = False
        self._subscribed = False
        matches: list[tuple[str, str | None, str, str | None, Callable[[Any], None]]] = [
            (SYSTEMD_BUS_NAME, None, _PROPERTIES, "PropertiesChanged", self._on_properties),
            (SYSTEMD_BUS_NAME, MANAGER_PATH, _MANAGER, None, self._on_manager_signal),
            (_DBUS, _DBUS_PATH, _DBUS, "NameOwnerChanged", self._on_owner_changed),
        ]
        for sender, path, interface, member, callback in matches:
            # Awaited one by one: a match is only reliable once the bus daemon acknowledged it.
            slot = await self._call(
                functools.partial(bus.match_signal_async, sender, path, interface, member,
                                  callback),
                f"AddMatch {interface}.{member or '*'}",
            )
            self._slots.append(slot)
        self._manager = ManagerInterface.new_proxy(SYSTEMD_BUS_NAME, MANAGER_PATH, bus)
        self._notice("connected", f"connected to {self._where()}")
        self._request_sync("connected")
        self._consumer = self._spawn(self._consume(self._queue))

    async def _watch(self, stop_event: asyncio.Event) -> None:
        """Return on stop; raise BusClosed when the connection is lost."""
        loop = asyncio.get_running_loop()
        consumer = self._consumer
        assert consumer is not None and self._bus is not None
        stopping = self._spawn(stop_event.wait())
        next_rescan = loop.time() + self._rescan_interval
        try:
            while True:
                done, _ = await asyncio.wait(
                    {stopping, consumer},
                    timeout=self._health_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stopping in done:
                    return
                if consumer in done:
                    consumer.result()
                    raise BusClosed("watcher: the event consumer ended")
                if not is_connected(self._bus):
                    raise BusClosed("the D-Bus connection was lost (did the bus daemon exit?)")
                if loop.time() >= next_rescan:
                    next_rescan = loop.time() + self._rescan_interval
                    self._request_sync("periodic rescan")
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)

    async def _teardown(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        for slot in self._slots:
            slot.close()
        self._slots.clear()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.close()
        self._manager = None
        self._queue = None
        self._systemd_present = False
        self._fail_jobs(BusClosed("watcher: lost the bus before the job ended; retry"))

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, start: Callable[[], Any], what: str) -> Any:
        """Start a D-Bus call (sdbus may raise right away) and await it, bounded."""
        try:
            return await asyncio.wait_for(start(), self._call_timeout)
        except TimeoutError:
            raise TimeoutError(f"{what}: no answer in {self._call_timeout:g} s") from None
        except sdbus.SdBusLibraryError as exc:
            raise translate_error(exc, what) from exc

    # --- signal callbacks: called by sdbus, must not raise; they only queue ---------------------

    def _put(self, event: _Event) -> None:
        if self._queue is not None:
            self._queue.put_nowait(event)

    def _on_properties(self, message: Any) -> None:
        try:
            path = message.path
            if isinstance(path, str) and path.startswith(self._path_prefix):
                self._put(_PropertiesChanged(path, message.get_contents()))
        except Exception:
            log.exception("watcher: unreadable PropertiesChanged message; skipped")

    def _on_manager_signal(self, message: Any) -> None:
        try:
            member = message.member
            if member in ("JobRemoved", "Reloading"):
                self._put(_ManagerSignal(member, message.get_contents()))
        except Exception:
            log.exception("watcher: unreadable systemd Manager signal; skipped")

    def _on_owner_changed(self, message: Any) -> None:
        try:
            contents = message.get_contents()
            if isinstance(contents, tuple) and contents and contents[0] == SYSTEMD_BUS_NAME:
                self._put(_OwnerChanged(contents))
        except Exception:
            log.exception("watcher: unreadable NameOwnerChanged message; skipped")

    def _request_sync(self, reason: str) -> None:
        if self._queue is not None and not self._sync_queued:
            self._sync_queued = True
            self._queue.put_nowait(_Sync(reason))

    # --- the consumer --------------------------------------------------------------------------

    async def _consume(self, queue: asyncio.Queue[_Event]) -> None:
        while True:
            event = await queue.get()
            try:
                await self._handle(event)
            except BusClosed:
                raise
            except TimeoutError as exc:
                log.warning("watcher: %s while handling %s; going on", exc, _describe(event))
            except sdbus.DbusFailedError as exc:
                log.warning(
                    "watcher: systemd answered an error while handling %s: %s (%s); going on",
                    _describe(event), exc, type(exc).dbus_error_name,
                )
            except Exception:
                if self._bus is not None and not is_connected(self._bus):
                    raise BusClosed("the D-Bus connection was lost") from None
                log.exception("watcher: could not handle %s; going on", _describe(event))

    async def _handle(self, event: _Event) -> None:
        match event:
            case _Sync(reason):
                self._sync_queued = False
                await self._sync(reason)
            case _PropertiesChanged(path, contents):
                await self._properties_changed(path, contents)
            case _ManagerSignal("JobRemoved", contents):
                await self._job_removed(contents)
            case _ManagerSignal("Reloading", contents):
                if contents is False:
                    await self._sync("daemon-reload done")
            case _OwnerChanged(contents):
                await self._owner_changed(contents)
            case _:
                log.warning("watcher: unknown event %r; skipped", event)

    async def _sync(self, reason: str) -> None:
        """Subscribe (once per systemd instance), then list and read every agent unit."""
        manager = self._manager
        assert manager is not None
        if not self._subscribed:
            try:
                await self._call(manager.subscribe, "Subscribe")
            except AlreadySubscribedError:
                pass
            except _ABSENT as exc:
                self._systemd_present = False
                self._notice("systemd-absent", f"systemd is not on {self._where()} ({exc}); "
                             "waiting for it to appear")
                return
            self._subscribed = True
        self._systemd_present = True
        rows = await self._call(
            lambda: manager.list_units_by_patterns([], [self._pattern]), "ListUnitsByPatterns"
        )
        if not isinstance(rows, list):
            self._notice("unreadable", f"ListUnitsByPatterns answered {rows!r}, not a list")
            return
        listed: set[str] = set()
        for row in rows:
            if not (isinstance(row, tuple) and len(row) == 10 and isinstance(row[0], str)):
                self._notice("unreadable", f"ListUnitsByPatterns row {row!r} is not (ssssssouso)")
                continue
            name, path, job_type, job_path = row[0], row[6], row[8], row[9]
            agent = self._agent_for(name)
            if agent is None:
                continue
            listed.add(name)
            if isinstance(job_type, str) and job_type and isinstance(job_path, str):
                self._job_types[job_path] = job_type
            if not (isinstance(path, str) and path.startswith(UNIT_PATH_PREFIX)):
                path = sdbus.encode_object_path(UNIT_PATH_PREFIX, name)
            await self._refresh(name, agent, path)
        for name in set(self._units) - listed:
            self._gone(self._units.pop(name))
        self._notice("rescanned", f"{reason}: {len(listed)} agent unit(s) read")

    def _state(self, name: str, agent: str) -> UnitState:
        """The unit's state, made when first needed."""
        state = self._units.get(name)
        if state is None:
            state = self._units[name] = UnitState(agent=agent, unit=name)
        return state

    def _gone(self, state: UnitState) -> None:
        """A unit read before is no longer loaded: hand it over (its owner decides whether
        that was a stop nobody saw)."""
        if state.primed:
            self._deliver(UnitGone(state.agent, state.unit, self._now()))

    async def _read_unit(self, path: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        assert self._bus is not None
        raw_service = await get_all_properties(
            self._bus, SYSTEMD_BUS_NAME, path, SERVICE_INTERFACE, timeout=self._call_timeout
        )
        raw_unit = await get_all_properties(
            self._bus, SYSTEMD_BUS_NAME, path, UNIT_INTERFACE, timeout=self._call_timeout
        )
        service, problems = check_variants(SERVICE_INTERFACE, raw_service)
        unit, more = check_variants(UNIT_INTERFACE, raw_unit)
        return service, unit, problems + more

    async def _refresh(self, name: str, agent: str, path: str, *, observe: bool = True) -> bool:
        """Read both interfaces of a unit (and hand the observation over); False when the unit
        could not be read."""
        state = self._state(name, agent)
        try:
            service, unit, problems = await self._read_unit(path)
        except _GONE:
            log.debug("watcher: %s vanished before it could be read", name)
            if not state.primed:
                del self._units[name]
            return False
        if problems:
            state.primed = False
            self._report(state, Unreadable(tuple(f"GetAll: {p}" for p in problems)))
            return False
        state.replace(service, unit)
        if observe:
            await self._observe(state)
        return True

    async def _properties_changed(self, path: str, contents: Any) -> None:
        try:
            name = sdbus.decode_object_path(UNIT_PATH_PREFIX, path)
        except (TypeError, ValueError):
            self._notice("unreadable", f"PropertiesChanged on {path!r}: not a unit path")
            return
        agent = self._agent_for(name)
        if agent is None:
            return
        state = self._state(name, agent)
        if not (isinstance(contents, tuple) and len(contents) == 3):
            problem = (f"PropertiesChanged arguments {contents!r} are not "
                       "(interface, changed, invalidated)")
            self._report(state, Unreadable((problem,)))
            return
        interface, changed, _invalidated = contents
        if interface not in (SERVICE_INTERFACE, UNIT_INTERFACE):
            return
        values, problems = check_variants(interface, changed)
        if problems:
            # Nothing of this signal is used, and the merged view cannot be trusted any more:
            # read the unit afresh (a crash hidden in a garbled signal is found that way).
            self._report(state, Unreadable(tuple(f"{interface}: {p}" for p in problems)))
            state.primed = False
            if interface == UNIT_INTERFACE:
                await self._refresh(name, agent, path)
            return
        if not state.primed and not await self._refresh(name, agent, path, observe=False):
            return
        state.merge(interface, values)
        # systemd sends Service before Unit: the Unit signal completes an observation.
        if interface == UNIT_INTERFACE:
            await self._observe(state)

    async def _observe(self, state: UnitState) -> None:
        """Hand the unit's merged properties over as one observation (or say what is
        missing), with the type of its pending job when it can be known."""
        decoded = state.decoded()
        if isinstance(decoded, list):
            self._report(state, Unreadable(tuple(decoded)))
            return
        service, unit = decoded
        job_type = None
        if unit.has_job:
            job_type = self._job_types.get(unit.job_path)
            if job_type is None and unit.active_state == "failed":
                # A job the watcher did not see queued, on a unit that just failed: whether it
                # is a stop decides between a crash and a failed stop.
                job_type = await self._job_type(unit.job_path)
        self._deliver(UnitObserved(state.agent, state.unit, self._now(), service, unit,
                                   job_type))

    async def _job_type(self, job_path: str) -> str | None:
        """The type of a job we did not queue; None when it is gone already."""
        assert self._bus is not None
        try:
            variant = await get_property(
                self._bus, SYSTEMD_BUS_NAME, job_path, "org.freedesktop.systemd1.Job", "JobType",
                timeout=self._call_timeout,
            )
        except sdbus.DbusFailedError:
            return None
        if isinstance(variant, tuple) and len(variant) == 2 and variant[0] == "s":
            return str(variant[1])
        return None

    async def _job_removed(self, contents: Any) -> None:
        name = self._job_ended(contents)
        agent = self._agent_for(name) if name is not None else None
        if name is not None and agent is not None:
            # A job of systemd's own failed (its restart, past the start limit): read the unit.
            await self._refresh(name, agent, sdbus.encode_object_path(UNIT_PATH_PREFIX, name))

    def _job_ended(self, contents: Any) -> str | None:
        """A ``JobRemoved``: complete the hive's own job, or remember how it ended for a
        request still waiting for its job path. Returns the unit's name when a job of systemd's
        own failed on an agent's unit (the unit must be read), else None."""
        if not (isinstance(contents, tuple) and len(contents) == 4 and isinstance(contents[1], str)
                and isinstance(contents[2], str) and isinstance(contents[3], str)):
            self._notice("unreadable", f"JobRemoved arguments {contents!r} are not (uoss)")
            return None
        _job_id, job_path, name, result = contents
        self._job_types.pop(job_path, None)
        future = self._pending_jobs.pop(job_path, None)
        if future is not None:
            if not future.done():
                future.set_result(result)
            return None
        if agent_of_unit(name, self._prefix) is None:
            return None
        # Our own request may not have its job path yet (the signal can beat the reply).
        self._removed_jobs[job_path] = result
        while len(self._removed_jobs) > _REMEMBERED_JOBS:
            self._removed_jobs.popitem(last=False)
        return name if result == "failed" else None

    async def _owner_changed(self, contents: Any) -> None:
        if not (len(contents) == 3 and all(isinstance(v, str) for v in contents)):
            self._notice("unreadable", f"NameOwnerChanged arguments {contents!r} are not (sss)")
            return
        _name, old, new = contents
        if new:
            self._subscribed = False
            await self._sync(f"systemd has a new owner {new} (was {old or 'none'})")
        else:
            self._systemd_present = False
            self._subscribed = False
            self._notice("systemd-gone", f"systemd ({old}) left {self._where()}")
            self._fail_jobs(HiveError("watcher: systemd left the bus before the job ended"))

    # --- the hive's own jobs -----------------------------------------------------------------

    def _unit_for(self, agent: str) -> str:
        try:
            return unit_name_for(agent, self._prefix)
        except ValueError as exc:
            raise Refused(f"watcher: {exc}") from exc

    def _submit(
        self, make: Callable[[], Coroutine[Any, Any, str]]
    ) -> concurrent.futures.Future[str]:
        with self._state_lock:
            loop = self._loop
            if loop is None or self._closed:
                raise HiveError("watcher: not running; start it (run() or start_in_thread()) "
                                "before asking for jobs")
            return asyncio.run_coroutine_threadsafe(make(), loop)

    async def _job_request(self, kind: str, agent: str, unit: str) -> str:
        try:
            job_path = await self._queue_job(kind, unit)
        except BaseException:
            if kind == "stop":
                # No stop was queued: a later end of the unit is not the hive's doing.
                self._deliver(StopCleared(agent))
            raise
        self._job_types[job_path] = kind
        if job_path in self._removed_jobs:
            return self._removed_jobs.pop(job_path)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending_jobs[job_path] = future
        try:
            return await asyncio.wait_for(future, self._job_timeout)
        except TimeoutError:
            raise HiveError(f"watcher: the {kind} job {job_path} of {unit} did not end within "
                            f"{self._job_timeout:g} s") from None
        finally:
            self._pending_jobs.pop(job_path, None)

    async def _queue_job(self, kind: str, unit: str) -> str:
        manager = self._manager
        if manager is None or not self._systemd_present:
            raise HiveError(f"watcher: cannot {kind} {unit}: not connected to systemd on "
                            f"{self._where()} right now; retry once it is back")
        method = manager.start_unit if kind == "start" else manager.stop_unit
        try:
            job_path = await self._call(lambda: method(unit, "replace"), f"{kind} {unit}")
        except NoSuchUnitError as exc:
            raise NotFound(f"watcher: systemd has no unit {unit}: {exc}") from exc
        except sdbus.DbusFailedError as exc:
            raise HiveError(f"watcher: systemd refused to {kind} {unit}: {exc}") from exc
        if not isinstance(job_path, str):
            raise HiveError(f"watcher: systemd answered {job_path!r} to {kind} {unit}, not a job")
        return job_path

    def _fail_jobs(self, error: HiveError) -> None:
        for future in self._pending_jobs.values():
            if not future.done():
                future.set_exception(error)
        self._pending_jobs.clear()

    # --- reporting -----------------------------------------------------------------------------

    def _agent_for(self, unit: str) -> str | None:
        agent = agent_of_unit(unit, self._prefix)
        if agent is None:
            if unit.startswith(f"{self._prefix}@") and unit not in self._odd_names:
                # Said once per name: systemd repeats it on every change of that unit.
                if len(self._odd_names) < _REMEMBERED_JOBS:
                    self._odd_names.add(unit)
                self._notice("unreadable", f"unit name {unit!r} is not {self._prefix}@<agent>.service "
                             "with a usable agent name; ignored")
            return None
        try:
            return agent if self._is_agent(agent) else None
        except Exception:
            log.exception("watcher: is_agent(%r) raised; %s is ignored", agent, unit)
            return None

    def _report(self, state: UnitState, verdict: Unreadable) -> None:
        log.warning("watcher: %s: could not understand: %s", state.unit,
                    "; ".join(verdict.problems))
        self._deliver(UnitReport(state.agent, state.unit, self._now(), verdict))

    def _notice(self, kind: NoticeKind, detail: str) -> None:
        log.log(logging.WARNING if kind in ("disconnected", "systemd-gone", "unreadable")
                else logging.INFO, "watcher: %s: %s", kind, detail)
        self._deliver(WatcherNotice(kind=kind, detail=detail, when=self._now()))

    def _deliver(self, report: Observation) -> None:
        try:
            self._on_report(report)
        except Exception:
            log.exception("watcher: on_report raised on %r; the watcher goes on", report)


def _describe(event: _Event) -> str:
    match event:
        case _PropertiesChanged(path, _):
            return f"PropertiesChanged on {path}"
        case _ManagerSignal(member, contents):
            return f"{member}{contents!r}"
        case _OwnerChanged(contents):
            return f"NameOwnerChanged{contents!r}"
        case _Sync(reason):
            return f"rescan ({reason})"
    return repr(event)
