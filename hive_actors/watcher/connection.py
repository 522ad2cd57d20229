"""Opening a D-Bus connection with sdbus, and the few raw calls the watcher makes on it.

sdbus 0.14 cannot open "this address": it opens the system bus, which sd-bus finds through
``DBUS_SYSTEM_BUS_ADDRESS``. :func:`open_bus` sets that variable for the duration of the open,
under a lock, and puts the old value back, so two threads opening two buses do not race. The bus
object it returns belongs to the calling thread's event loop: sdbus attaches it to the running
loop on first use, so open it in the thread that uses it and pass it explicitly everywhere (the
default bus is thread-local).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from typing import Any

import sdbus
from sdbus import SdBus

from hive_actors.errors import HiveError

__all__ = [
    "BusClosed",
    "call_method",
    "get_all_properties",
    "get_property",
    "is_connected",
    "open_bus",
    "translate_error",
]

_ENV = "DBUS_SYSTEM_BUS_ADDRESS"
_OPEN_LOCK = threading.Lock()
_PROPERTIES = "org.freedesktop.DBus.Properties"


class BusClosed(HiveError):
    """The D-Bus connection is gone (the bus daemon exited, or the connection was closed)."""


def open_bus(address: str | None, *, call_timeout: float = 5.0) -> SdBus:
    """Connect to the bus at ``address`` (a D-Bus address such as ``unix:path=/run/x.sock``), or to
    the system bus when None. Raises :class:`BusClosed` when nobody answers there."""
    try:
        if address is None:
            bus = sdbus.sd_bus_open_system()
        else:
            with _OPEN_LOCK:
                old = os.environ.get(_ENV)
                os.environ[_ENV] = address
                try:
                    bus = sdbus.sd_bus_open_system()
                finally:
                    if old is None:
                        del os.environ[_ENV]
                    else:
                        os.environ[_ENV] = old
    except sdbus.SdBusBaseError as exc:
        where = address or f"the system bus (${_ENV} or /run/dbus/system_bus_socket)"
        raise BusClosed(
            f"cannot connect to D-Bus at {where}: {exc}; is dbus-daemon running there?"
        ) from exc
    # sd-bus's own deadline for every method call, so no call can hang past it.
    bus.method_call_timeout_usec = int(call_timeout * 1_000_000)
    return bus


def is_connected(bus: SdBus) -> bool:
    """Whether sd-bus still has a connection (a local check, no traffic). sd-bus notices a
    vanished bus daemon when the socket hangs up and from then on has no fd to give."""
    try:
        bus.get_fd()
    except sdbus.SdBusBaseError:
        return False
    return True


def translate_error(exc: BaseException, what: str) -> BaseException:
    """``exc`` as :class:`BusClosed` when it says the connection is closed, else itself."""
    if isinstance(exc, sdbus.SdBusLibraryError) and f"error number: {errno.ENOTCONN}" in str(exc):
        return BusClosed(f"{what}: the D-Bus connection is closed")
    return exc


async def call_method(
    bus: SdBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    *args: Any,
    timeout: float,
) -> Any:
    """Call a method and return the reply's contents as sdbus decodes them (one value as itself,
    several as a tuple); D-Bus errors are raised as
    sdbus maps them, a closed connection as :class:`BusClosed`, a slow answer as
    :class:`TimeoutError` after ``timeout`` seconds."""
    what = f"{interface}.{member} on {path}"
    try:
        message = bus.new_method_call_message(destination, path, interface, member)
        if signature:
            message.append_data(signature, *args)
        reply = await asyncio.wait_for(bus.call_async(message), timeout)
    except TimeoutError:
        raise TimeoutError(f"{what}: no answer in {timeout:g} s") from None
    except sdbus.SdBusLibraryError as exc:
        raise translate_error(exc, what) from exc
    return reply.get_contents()


async def get_all_properties(
    bus: SdBus, destination: str, path: str, interface: str, *, timeout: float
) -> Any:
    """``org.freedesktop.DBus.Properties.GetAll`` as sdbus decodes it (``{name: (sig, value)}``
    from a sane peer; callers check it)."""
    return await call_method(
        bus, destination, path, _PROPERTIES, "GetAll", "s", interface, timeout=timeout
    )


async def get_property(
    bus: SdBus, destination: str, path: str, interface: str, name: str, *, timeout: float
) -> Any:
    """``org.freedesktop.DBus.Properties.Get``: the ``(signature, value)`` variant."""
    return await call_method(
        bus, destination, path, _PROPERTIES, "Get", "ss", interface, name, timeout=timeout
    )
