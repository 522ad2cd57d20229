"""A stand-in systemd on a real D-Bus: what the crash watcher is tested (and benchmarked) against.

There is no systemd as PID 1 here, so this plays its part on a (private) bus with the real
interface: it owns ``org.freedesktop.systemd1`` and serves ``/org/freedesktop/systemd1``
(``Manager``: ``Subscribe``, ``Unsubscribe``, ``ListUnitsByPatterns``, ``GetUnit``, ``StartUnit``,
``StopUnit``, ``ResetFailedUnit``; signals ``JobNew``, ``JobRemoved``, ``UnitNew``,
``UnitRemoved``, ``Reloading``), one object per unit at systemd's escaped path (``Unit`` and
``Service`` properties, ``PropertiesChanged`` with ``Service`` first then ``Unit``) and one per
live job (``Job``). Like systemd it sends unit and job signals only while some connection is
subscribed, and forgets subscribers whose connection closed.

It runs its own event loop in a thread. The driver methods (:meth:`StandinSystemd.crash`,
:meth:`StandinSystemd.reboot`…) may be called from any thread and return once the signals are sent.
Units live in the :class:`StandinSystemd` object, not on the bus: :meth:`~StandinSystemd.stop` and
:meth:`~StandinSystemd.start` again (on a restarted bus daemon, say) keep every unit's state, and the
driver methods work while it is stopped (the changes are made, nothing is sent), which is how a
test makes a unit crash "while the watcher was away".

Run it as a process for a benchmark::

    python -m hive_actors.testing.systemd_standin --address unix:path=/tmp/bus.sock \\
        --unit container@alice.service --restart on-failure

It prints ``ready`` once it owns the name, and stops on SIGTERM or SIGINT; drive it through
:class:`~hive_actors.testing.systemd_objects.ControlInterface` on the same bus.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import sdbus

from hive_actors.errors import Conflict, HiveError, StartFailure
from hive_actors.testing.systemd_objects import (
    CONTROL_PATH,
    BusSink,
    ControlInterface,
    ManagerObject,
)
from hive_actors.testing.systemd_units import StandinJob, StandinUnit, UnitMachine
from hive_actors.watcher.connection import open_bus
from hive_actors.watcher.systemd_iface import MANAGER_PATH, SYSTEMD_BUS_NAME

__all__ = ["StandinSystemd", "main"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SIGNALS = {"SIGKILL": 9, "SIGTERM": 15, "SIGSEGV": 11, "SIGABRT": 6}


class _NullSink:
    """Where changes go while the stand-in is off the bus: nowhere."""

    def unit_changed(self, unit: StandinUnit) -> None:
        pass

    def job_new(self, job: StandinJob) -> None:
        pass

    def job_removed(self, job: StandinJob, result: str) -> None:
        pass

    def unit_new(self, unit: StandinUnit) -> None:
        pass

    def unit_removed(self, unit: StandinUnit) -> None:
        pass

    def reloading(self, active: bool) -> None:
        pass

    def raw_properties(self, unit: StandinUnit, interface: str, changed: dict[str, Any]) -> None:
        pass

    def raw_signal(
        self, path: str, interface: str, member: str, signature: str, args: tuple[Any, ...]
    ) -> None:
        pass


class StandinSystemd:
    """The stand-in systemd on the bus at ``address``, following systemd ``version``'s
    sequences (252, or 254 and later)."""

    def __init__(self, address: str, *, version: int = 254, timeout: float = 10.0) -> None:
        if version < 252:
            raise ValueError(f"fake systemd: version {version} is not modelled; use 252 or 254+")
        self.address = address
        self.timeout = timeout
        self.machine = UnitMachine(version=version)
        self.subscribers: set[str] = set()
        self.sink: BusSink | _NullSink = _NullSink()
        self.unique_name: str | None = None
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether it is on the bus."""
        return self._loop is not None

    def start(self) -> None:
        """Connect, serve every unit, own ``org.freedesktop.systemd1``; returns once owned.
        StartFailure when that does not happen within ``timeout``."""
        with self._lock:
            if self._loop is not None:
                return
            ready: concurrent.futures.Future[asyncio.AbstractEventLoop] = (
                concurrent.futures.Future()
            )
            thread = threading.Thread(
                target=self._thread_main, args=(ready,), name="fake-systemd", daemon=True
            )
            thread.start()
            try:
                self._loop = ready.result(self.timeout)
            except BaseException as exc:
                thread.join(self.timeout)
                raise StartFailure(
                    f"fake systemd: could not serve on {self.address}: {exc}"
                ) from exc
            self._thread = thread

    def stop(self) -> None:
        """Leave the bus (the name goes away with the connection); units keep their state."""
        with self._lock:
            loop, thread, stopping = self._loop, self._thread, self._stopping
            if loop is None or thread is None or stopping is None:
                return
            loop.call_soon_threadsafe(stopping.set)
            thread.join(self.timeout)
            if thread.is_alive():
                raise HiveError(f"fake systemd: its thread did not stop within {self.timeout:g} s")
            self._loop = self._thread = None

    def __enter__(self) -> StandinSystemd:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _thread_main(self, ready: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # handed to start(), or logged once serving
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("fake systemd on %s failed", self.address)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        bus = open_bus(self.address, call_timeout=self.timeout)
        handles: list[Any] = []
        sink: BusSink | None = None
        slot: Any = None
        try:
            # sdbus holds served objects weakly: these locals keep them alive while serving.
            manager = ManagerObject(self)
            control = ControlInterface(self)
            handles.append(manager.export_to_dbus(MANAGER_PATH, bus))
            handles.append(control.export_to_dbus(CONTROL_PATH, bus))
            sink = BusSink(bus, manager, self.subscribers)
            for unit in self.machine.units.values():
                sink.export_unit(unit)
            slot = await asyncio.wait_for(
                bus.match_signal_async(
                    "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                    "NameOwnerChanged", self._on_name_owner_changed,
                ),
                self.timeout,
            )
            await asyncio.wait_for(bus.request_name_async(SYSTEMD_BUS_NAME, 0), self.timeout)
            self._stopping = asyncio.Event()
            self.sink = sink
            ready.set_result(asyncio.get_running_loop())
            await self._stopping.wait()
        finally:
            self.sink = _NullSink()
            self.subscribers.clear()
            if slot is not None:
                slot.close()
            if sink is not None:
                sink.close()
            for handle in handles:
                handle.stop()
            bus.close()

    def _on_name_owner_changed(self, message: Any) -> None:
        try:
            name, _old, new = message.get_contents()
        except (TypeError, ValueError):
            return
        if not new and name in self.subscribers:
            # systemd drops a subscriber whose connection went away (sd_bus_track).
            self.subscribers.discard(name)

    def _run(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` in the loop thread while serving, else here; wait for its result."""
        if threading.current_thread() is self._thread:
            return operation()  # already in the loop thread (a D-Bus handler)
        with self._lock:
            loop = self._loop
            if loop is None:
                return operation()
            future: concurrent.futures.Future[T] = concurrent.futures.Future()

            def call() -> None:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(operation())
                except BaseException as exc:
                    future.set_exception(exc)

            loop.call_soon_threadsafe(call)
            return future.result(self.timeout)

    # --- what the D-Bus side and the control interface call (loop thread) --------------------

    def start_job(self, name: str) -> StandinJob:
        """``StartUnit``: a start job, run at once."""
        job, _ = self.machine.start(self.sink, name)
        return job

    def stop_job(self, name: str) -> StandinJob:
        """``StopUnit``: a stop job, run at once."""
        job, _ = self.machine.stop(self.sink, name)
        return job

    def add_unit_now(self, name: str, *, restart: str = "no") -> None:
        """See :meth:`add_unit`."""
        self.machine.add_unit(self.sink, name, restart=restart)

    def start_now(self, name: str) -> float:
        """See :meth:`start_unit`."""
        return self.machine.start(self.sink, name)[1]

    def crash_now(self, name: str, result: str, exec_main_code: int, status: int) -> float:
        """See :meth:`crash`."""
        return self.machine.crash(
            self.sink, name, result=result, exec_main_code=exec_main_code, exec_main_status=status
        )

    def exit_now(self, name: str, status: int, restarts: bool) -> float:
        """See :meth:`reboot` and :meth:`poweroff`."""
        return self.machine.exit_cleanly(self.sink, name, status=status, restarts=restarts)

    def operator_stop_now(self, name: str) -> float:
        """See :meth:`operator_stop`."""
        return self.machine.stop(self.sink, name)[1]

    def reloading_now(self) -> None:
        """See :meth:`emit_reloading`."""
        self.sink.reloading(True)
        self.sink.reloading(False)

    # --- driver API (any thread) -------------------------------------------------------------

    def add_unit(self, name: str, *, restart: str = "no") -> None:
        """Load a unit (``inactive/dead``) with a ``Restart=`` policy (NixOS's
        ``container@.service`` has ``on-failure``; the hive's config forces ``no``)."""
        self._run(lambda: self.add_unit_now(name, restart=restart))

    def remove_unit(self, name: str) -> None:
        """Unload a unit."""
        self._run(lambda: self.machine.remove_unit(self.sink, name))

    def start_unit(self, name: str) -> float:
        """Start a unit as an operator would (a start job); returns when ``active/running``
        was sent (``time.monotonic()``)."""
        return self._run(lambda: self.start_now(name))

    def crash(
        self,
        name: str,
        *,
        result: str | None = None,
        exit_code: int | None = None,
        signal: int | str | None = None,
        core_dump: bool = False,
    ) -> float:
        """The main process exits with ``exit_code`` (default 1) or dies of ``signal`` (a number
        or ``"SIGKILL"``…, with a core dump if asked). ``result`` defaults to systemd's own
        (``exit-code``, ``signal``, ``core-dump``). systemd restarts it when the unit's
        ``Restart=`` says so. Returns when the failure was sent (``time.monotonic()``)."""
        if signal is not None and exit_code is not None:
            raise ValueError("fake systemd: crash with an exit code or a signal, not both")
        if signal is not None:
            number = _SIGNALS.get(signal, 0) if isinstance(signal, str) else signal
            if number <= 0:
                raise ValueError(f"fake systemd: unknown signal {signal!r}; give its number")
            code, status = (3 if core_dump else 2), number
            default = "core-dump" if core_dump else "signal"
        else:
            code, status, default = 1, 1 if exit_code is None else exit_code, "exit-code"
        chosen = result or default
        return self._run(lambda: self.crash_now(name, chosen, code, status))

    def crash_loop(
        self, name: str, times: int, *, exit_code: int = 1, give_up: bool = False
    ) -> list[float]:
        """Crash a unit ``times`` times, systemd restarting it after each; with ``give_up`` the
        last restart hits the start limit and the unit stays ``failed``. The unit's ``Restart=``
        must restart on failure. Returns each crash's emission time."""
        if times < 1:
            raise ValueError(f"fake systemd: crash_loop needs times >= 1, got {times}")

        def loop() -> list[float]:
            unit = self.machine.unit(name)
            if unit.restart not in ("on-failure", "always"):
                raise Conflict(
                    f"fake systemd: {name} has Restart={unit.restart}; systemd would not "
                    "restart it (add_unit(..., restart='on-failure'))"
                )
            unit.restarts_left = times - 1 if give_up else None
            try:
                return [self.crash_now(name, "exit-code", 1, exit_code) for _ in range(times)]
            finally:
                unit.restarts_left = None

        return self._run(loop)

    def operator_stop(self, name: str) -> float:
        """``systemctl stop`` by an operator: a stop job the hive did not ask for."""
        return self._run(lambda: self.operator_stop_now(name))

    def poweroff(self, name: str) -> float:
        """A poweroff inside the container: ``systemd-nspawn`` exits 0, the unit goes
        ``inactive/dead`` with ``Result=success``."""
        return self._run(lambda: self.exit_now(name, 0, False))

    def reboot(self, name: str) -> float:
        """A reboot inside the container: exit 133, a success that systemd restarts."""
        return self._run(lambda: self.exit_now(name, 133, True))

    def set_stop_fails(self, name: str, fails: bool = True) -> None:
        """Make the unit's stops end ``failed`` with ``Result=timeout``."""

        def set_it() -> None:
            self.machine.unit(name).stop_fails = fails

        self._run(set_it)

    def emit_reloading(self) -> None:
        """``Reloading(true)`` then ``Reloading(false)``, as ``systemctl daemon-reload``."""
        self._run(self.reloading_now)

    def emit_properties(
        self, name: str, interface: str, changed: dict[str, tuple[str, Any]]
    ) -> None:
        """Send a hand-made ``PropertiesChanged`` from the unit's object (for malformed-input
        tests); the unit's state is not changed."""
        self._run(lambda: self.sink.raw_properties(self.machine.unit(name), interface, changed))

    def emit_signal(
        self, path: str, interface: str, member: str, signature: str = "", *args: Any
    ) -> None:
        """Send an arbitrary signal from the stand-in's connection (a wrong signature, say)."""
        self._run(lambda: self.sink.raw_signal(path, interface, member, signature, args))

    @contextlib.contextmanager
    def unseen(self) -> Iterator[None]:
        """Within the block, driver calls change state but send no signal: as if the watcher
        missed them (a lost signal, a watcher that was away)."""

        def set_quiet(quiet: bool) -> None:
            if isinstance(self.sink, BusSink):
                self.sink.quiet = quiet

        self._run(lambda: set_quiet(True))
        try:
            yield
        finally:
            self._run(lambda: set_quiet(False))

    def unit(self, name: str) -> StandinUnit:
        """A copy of a unit's current state."""
        return self._run(lambda: dataclasses.replace(self.machine.unit(name)))

    def subscriber_count(self) -> int:
        """How many connections are subscribed."""
        return self._run(lambda: len(self.subscribers))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hive_actors.testing.systemd_standin``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m hive_actors.testing.systemd_standin",
        description="A stand-in systemd on a D-Bus bus (for tests and benchmarks).",
    )
    parser.add_argument("--address", required=True, help="D-Bus address, e.g. unix:path=/x.sock")
    parser.add_argument("--version", type=int, default=254, help="systemd sequences: 252 or 254")
    parser.add_argument("--unit", action="append", default=[], help="a unit to load (repeat)")
    parser.add_argument("--restart", default="no", help="Restart= of the loaded units")
    parser.add_argument("--started", action="store_true", help="start the loaded units")
    args = parser.parse_args(argv)
    # Block the stop signals before any thread starts, so only sigwait below receives them.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        fake = StandinSystemd(args.address, version=args.version)
        for name in args.unit:
            fake.add_unit(name, restart=args.restart)
        fake.start()
    except (HiveError, ValueError, sdbus.SdBusBaseError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        print("hint: is a dbus-daemon listening at --address?", file=sys.stderr)
        return 2
    try:
        if args.started:
            for name in args.unit:
                fake.start_unit(name)
        print("ready", flush=True)
        signal.sigwait(stop_signals)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
