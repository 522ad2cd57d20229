"""A raw recorder of what systemd (or the stand-in) says on D-Bus about one unit: every
``PropertiesChanged`` of its ``Service`` and ``Unit`` interfaces and every ``JobNew`` /
``JobRemoved`` of it, in arrival order, reduced to the properties the watcher reads. Used to set
the stand-in's sequences beside real systemd's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Self

import sdbus

from hive_actors.watcher.connection import call_method, open_bus
from hive_actors.watcher.systemd_iface import MANAGER_PATH, SYSTEMD_BUS_NAME, UNIT_PATH_PREFIX
from tests.support.timeout import TIMEOUT

__all__ = ["Recorder", "Step"]

Step = tuple[Any, ...]
"""``("Service", Result, ExecMainCode, ExecMainStatus, NRestarts)``,
``("Unit", ActiveState, SubState, has_job)``, ``("JobNew", type-or-"")`` or
``("JobRemoved", result)``."""

_SHORT = {"org.freedesktop.systemd1.Service": "Service", "org.freedesktop.systemd1.Unit": "Unit"}


class Recorder:
    """Records one unit's signals on the bus at ``address`` (from a thread of its own)."""

    def __init__(self, address: str, unit: str) -> None:
        self.address = address
        self.unit = unit
        self.path = sdbus.encode_object_path(UNIT_PATH_PREFIX, unit)
        self.steps: list[Step] = []
        self.raw: list[tuple[str, Any]] = []
        self._lock = threading.Condition()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="signal-recorder", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(TIMEOUT) or self._error is not None:
            raise RuntimeError(f"the recorder did not start: {self._error!r}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)

    def take(self) -> list[Step]:
        """Every step recorded so far, and forget them."""
        with self._lock:
            steps, self.steps = self.steps, []
            self.raw.clear()
        return steps

    def wait_for(self, predicate: Callable[[list[Step]], bool], what: str,
                 timeout: float = TIMEOUT) -> list[Step]:
        """Wait until ``predicate(steps so far)``; AssertionError with the steps after
        ``timeout`` seconds."""
        with self._lock:
            if not self._lock.wait_for(lambda: predicate(list(self.steps)), timeout):
                raise AssertionError(f"no {what} within {timeout:g} s; recorded {self.steps}")
            return list(self.steps)

    # -- the recorder's thread ------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported to __enter__
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        bus = open_bus(self.address)
        slots = [
            await bus.match_signal_async(SYSTEMD_BUS_NAME, self.path,
                                         "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                         self._on_properties),
            await bus.match_signal_async(SYSTEMD_BUS_NAME, MANAGER_PATH,
                                         "org.freedesktop.systemd1.Manager", None,
                                         self._on_manager),
        ]
        try:
            try:
                await call_method(bus, SYSTEMD_BUS_NAME, MANAGER_PATH,
                                  "org.freedesktop.systemd1.Manager", "Subscribe",
                                  timeout=TIMEOUT)
            except sdbus.SdBusBaseError as exc:
                if "AlreadySubscribed" not in type(exc).__name__ + str(exc):
                    raise
            self._ready.set()
            await self._stop.wait()
        finally:
            for slot in slots:
                slot.close()
            bus.close()

    def _add(self, step: Step, raw: Any) -> None:
        with self._lock:
            self.steps.append(step)
            self._lock.notify_all()
            self.raw.append((step[0], raw))

    def _on_properties(self, message: Any) -> None:
        interface, changed, _ = message.get_contents()
        name = _SHORT.get(interface)
        if name is None:
            return
        value = {k: v[1] for k, v in changed.items()}
        if name == "Service":
            self._add(("Service", value.get("Result"), value.get("ExecMainCode"),
                       value.get("ExecMainStatus"), value.get("NRestarts")), value)
        else:
            job = value.get("Job")
            self._add(("Unit", value.get("ActiveState"), value.get("SubState"),
                       bool(job and job[0])), value)

    def _on_manager(self, message: Any) -> None:
        member = message.member
        contents = message.get_contents()
        if member == "JobNew" and contents[2] == self.unit:
            self._add(("JobNew",), contents)
        elif member == "JobRemoved" and contents[2] == self.unit:
            self._add(("JobRemoved", contents[3]), contents)
