"""Loopback relays into a container's private network namespace (``[nspawn] network =
"private"``).

A container with ``--private-network`` has only its own loopback. The hive hands its agent two
loopback URLs (the model API's ``ANTHROPIC_BASE_URL`` and the hive MCP endpoint); for each such
``127.0.0.1:PORT`` the relay listens on the *same* address and port inside the container's
network namespace and forwards every connection to that address and port on the host. Nothing
else of the host (its other loopback services, its interfaces, the internet) is reachable.

- **The listeners** are sockets of the hive itself: a short-lived thread joins the container's
  network namespace (``setns(CLONE_NEWNET)``, per thread; the hive is root, so it may enter the
  namespace of the container's user namespace), creates, binds and listens, and ends; the
  socket stays in the namespace it was made in. No process runs inside the container for it,
  and a program inside cannot take the port (it is bound already).
- **The forwarding** is one thread per container running an asyncio loop: each accepted
  connection is joined to a new connection to the host's same address and port, both ways,
  half-closes passed on.
- **Teardown**: :meth:`LoopbackRelay.close` closes the listeners and every connection and ends
  the thread. The relay also watches the container's PID 1 (a pidfd): when it exits, the relay
  closes itself, so nothing outlives the container even when no one calls ``close``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import socket
import threading
from collections.abc import Iterable

from hive_actors.containers.nspawnconf import loopback_endpoint
from hive_actors.errors import HiveError

__all__ = ["LoopbackRelay", "loopback_endpoint"]

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_CONNECT_TIMEOUT_S = 10.0
_CHUNK = 64 * 1024


def _listen_in(netns: str, family: socket.AddressFamily, address: str, port: int) -> socket.socket:
    """A listening TCP socket on ``address:port`` inside the network namespace ``netns`` (a
    ``/proc/PID/ns/net`` path), made by a thread that joins it and ends."""
    out: dict[str, object] = {}

    def work() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address, port))
                sock.listen(128)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            out["sock"] = sock
        except OSError as exc:  # handed to the caller
            out["error"] = exc

    # This thread's network namespace changes; it ends right after, so no other socket of
    # the hive is ever made in the container's.
    thread = threading.Thread(target=work, name="netns-listen", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    if "sock" not in out:  # the thread died of something else (its traceback is logged)
        raise HiveError(f"cannot listen on {address}:{port} in the network namespace {netns}")
    return out["sock"]  # type: ignore[return-value]


class LoopbackRelay:
    """The relays of one container run (see the module). Thread-safe."""

    def __init__(self, name: str, leader: int, *, proc: str = "/proc") -> None:
        """``leader``: the container's PID 1 as the host sees it (its network namespace is
        the container's; the relay ends when it exits)."""
        self.name = name
        self._netns = f"{proc}/{leader}/ns/net"
        try:
            own = os.stat(f"{proc}/self/ns/net")
            theirs = os.stat(self._netns)
            self._pidfd = os.pidfd_open(leader)
        except OSError as exc:
            raise HiveError(f"container {name}: its PID 1 {leader} is gone ({exc}): start it "
                            "again") from exc
        if (own.st_dev, own.st_ino) == (theirs.st_dev, theirs.st_ino):
            os.close(self._pidfd)
            raise HiveError(
                f"container {name}: its network namespace is the host's, so a relay would "
                "listen on the host's own loopback: it was not started with --private-network"
            )
        self._lock = threading.Lock()
        """Serialises :meth:`serve` (held while a listener is made)."""
        self._books = threading.Lock()
        """Guards the fields below (held briefly, never while waiting on the loop)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._servers: dict[tuple[str, int], asyncio.base_events.Server] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """The ``(address, port)`` pairs relayed now."""
        with self._books:
            return sorted(self._servers)

    def serve(self, urls: Iterable[str], *, what: str = "the endpoint") -> None:
        """Relay the loopback port of each of ``urls`` (once each; ConfigError for a URL that
        is not loopback)."""
        # (family, address inside, port, required, the host to connect to on the host)
        wanted: list[tuple[socket.AddressFamily, str, int, bool, str]] = []
        for url in urls:
            host, port = loopback_endpoint(url, what=what)
            if host == "localhost":
                # Either address inside (the IPv6 one if the kernel has it), each to whichever
                # of them the host's server listens on (tried in turn, as a client would).
                wanted += [(socket.AF_INET, "127.0.0.1", port, True, host),
                           (socket.AF_INET6, "::1", port, False, host)]
            elif ":" in host:
                wanted.append((socket.AF_INET6, host, port, True, host))
            else:
                wanted.append((socket.AF_INET, host, port, True, host))
        with self._lock:  # one serve at a time; the books have their own short lock
            for family, address, port, required, target in wanted:
                with self._books:
                    if self._closed:
                        raise HiveError(f"container {self.name}: its network relay is closed "
                                        "(the container ended)")
                    if (address, port) in self._servers:
                        continue
                try:
                    sock = _listen_in(self._netns, family, address, port)
                except OSError as exc:
                    if not required:
                        continue
                    raise HiveError(
                        f"container {self.name}: cannot listen on {address}:{port} inside its "
                        f"private network to relay it from the host: {exc}"
                    ) from exc
                try:
                    loop = self._running_loop()
                    future = asyncio.run_coroutine_threadsafe(
                        self._listen(sock, (target, port)), loop)
                    server = future.result(_CONNECT_TIMEOUT_S)
                except BaseException:
                    sock.close()
                    raise
                with self._books:
                    closed = self._closed
                    if not closed:
                        self._servers[(address, port)] = server
                if closed:  # the container ended meanwhile: the loop's cleanup missed it
                    sock.close()
                    raise HiveError(f"container {self.name}: its network relay is closed (the "
                                    "container ended)")
                log.info("container %s: relaying %s:%d inside to the host's", self.name,
                         address, port)

    def close(self) -> None:
        """Close the listeners and every connection, and end the thread. Idempotent."""
        with self._books:
            self._closed = True
            loop, thread, stop = self._loop, self._thread, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop ended already (the container's PID 1 exited)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._books:
            if thread is None and self._pidfd >= 0:  # else the thread closed it
                os.close(self._pidfd)
                self._pidfd = -1

    # -- the loop's thread -----------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The relay's loop, its thread started on first use (HiveError once closed)."""
        with self._books:
            if self._closed:
                raise HiveError(f"container {self.name}: its network relay is closed (the "
                                "container ended)")
            if self._loop is not None:
                return self._loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            self._loop = loop
            self._stop = asyncio.Event()  # bound to the loop on first use (3.10+)
            self._thread = threading.Thread(target=self._main, args=(loop, ready),
                                            name=f"relay:{self.name}", daemon=True)
            self._thread.start()
        ready.wait()
        return loop

    def _main(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._run(ready))
        finally:
            ready.set()  # a loop that failed to start does not hang serve
            loop.close()
            with self._books:
                self._closed = True
                if self._pidfd >= 0:
                    os.close(self._pidfd)
                    self._pidfd = -1

    async def _run(self, ready: threading.Event) -> None:
        stop = self._stop
        assert stop is not None
        loop = asyncio.get_running_loop()
        # The container's PID 1 exits: the relay goes with it.
        loop.add_reader(self._pidfd, stop.set)
        ready.set()
        try:
            await stop.wait()
        finally:
            loop.remove_reader(self._pidfd)
            with self._books:
                self._closed = True
                servers = list(self._servers.values())
                self._servers.clear()
            for server in servers:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in servers:
                await server.wait_closed()
            log.info("container %s: network relay closed", self.name)

    async def _listen(self, sock: socket.socket, target: tuple[str, int]) -> asyncio.base_events.Server:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._pair(reader, writer, target)

        return await asyncio.start_server(accepted, sock=sock)

    async def _pair(self, inner_r: asyncio.StreamReader, inner_w: asyncio.StreamWriter,
                    target: tuple[str, int]) -> None:
        self._writers.add(inner_w)
        outer_w: asyncio.StreamWriter | None = None
        try:
            try:
                outer_r, outer = await asyncio.wait_for(
                    asyncio.open_connection(*target), _CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                log.warning("container %s: relay to the host's %s:%d failed: %s", self.name,
                            target[0], target[1], exc)
                return
            outer_w = outer
            self._writers.add(outer)
            await asyncio.gather(_pump(inner_r, outer), _pump(outer_r, inner_w))
        finally:
            for writer in (inner_w, outer_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then half-close it; an error aborts both ways
    (the other pump then sees its end)."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()  # the other pump reads from it: it ends too
