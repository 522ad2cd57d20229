"""``/ws/pty`` on an agent's page: an xterm.js terminal on a shell in the agent's container.

One websocket, one shell (``backend.pty_shell(name)``: the process backend starts a login shell
in the agent's state directory, the nixos backend a shell inside the container). Protocol::

    server → client   binary frames: what the terminal printed
                      {"type": "pong"}
    client → server   binary frames: keystrokes, as bytes
                      {"type": "input", "data": "<text>"}
                      {"type": "resize", "cols": C, "rows": R}      (1..1000 each)
                      {"type": "ping"}

The terminal is the operator's alone: the security middleware in front of it already refused a
cross-origin upgrade and, when a token is configured, an upgrade without it; on a non-loopback
bind *without* a token this endpoint refuses by itself too (belt and braces: a shell must never
be one misconfiguration away from the network).

Closing codes: 1000 the shell exited; 1003 a non-JSON text message; 1008 an unknown or malformed
control message; 1009 a message over ``max_message`` bytes; 1011 the shell stopped reading
input; 4404 no such agent; 4409 the agent's container is not running; 4429 too many terminals
open on this agent; 4500 the shell could not be started. When the websocket closes, the shell's
session gets SIGHUP (then SIGKILL if it lingers) and is reaped.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import signal
import struct
import termios
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hive_actors.errors import Conflict, HiveError, NotFound
from hive_actors.httpd.asgi import Receive, Scope, Send, send_json_error
from hive_actors.httpd.security import SecurityPolicy, is_loopback

__all__ = ["PtyEndpoint", "PtyLimits"]

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
_QUEUE_HIGH = 64
"""Output chunks queued for the browser before the PTY is no longer read (backpressure)."""
_QUEUE_LOW = 16
_EOF = b""


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class PtyLimits:
    """Bounds of the terminal endpoint."""

    max_sessions: int = 4
    """Shells open at once on one agent."""
    max_message: int = 64 * 1024
    """Largest client message, in bytes."""
    open_timeout: float = 10.0
    """Deadline for starting the shell."""
    write_timeout: float = 10.0
    """How long keystrokes may wait for a shell that does not read them."""
    hangup_grace: float = 3.0
    """Seconds between SIGHUP and SIGKILL when the terminal closes."""


class PtyEndpoint:
    """The ASGI websocket endpoint of one agent's terminal."""

    def __init__(
        self,
        agent: str,
        open_shell: Callable[[], tuple[int, int]],
        *,
        host: str,
        policy: SecurityPolicy,
        limits: PtyLimits | None = None,
        release_shell: Callable[[int], None] | None = None,
    ) -> None:
        """``open_shell()`` starts the shell and returns ``(pid, master_fd)`` (blocking);
        ``release_shell(pid)`` forgets and reaps a shell that exited (default: reap it)."""
        self.agent = agent
        self._open_shell = open_shell
        self._release_shell = release_shell or _reap_pid
        self._host = host
        self._policy = policy
        self.limits = limits or PtyLimits()
        self._sessions: set[int] = set()
        self._starting = 0
        """Terminals past the limit check whose shell is still starting: they count against
        the limit from the check on (no await in between), so a burst of connections cannot
        overshoot it."""

    @property
    def sessions(self) -> int:
        """Shells open right now."""
        return len(self._sessions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await send_json_error(
                scope, send, 426, "this is the agent's terminal websocket; connect with ws://",
                (("upgrade", "websocket"),),
            )
            return
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        if self._policy.token is None and not is_loopback(self._host):
            await send_json_error(
                scope, send, 403,
                f"the terminal is refused on a non-loopback bind ({self._host}) without the "
                "operator token; bind [web] host to 127.0.0.1 or configure the token",
            )
            return
        await send({"type": "websocket.accept"})
        if len(self._sessions) + self._starting >= self.limits.max_sessions:
            await _send_close(
                send, 4429, f"{self.limits.max_sessions} terminals are open on {self.agent}; "
                "close one first"
            )
            return
        self._starting += 1  # reserved with the check, before any await
        try:
            pid, fd = await self._start()
        except _Close as close:
            await _send_close(send, close.code, close.reason)
            return
        else:
            self._sessions.add(pid)
        finally:
            self._starting -= 1
        try:
            code, reason = await self._serve(pid, fd, receive, send)
        finally:
            self._sessions.discard(pid)
            _hang_up(pid, fd, self.limits.hangup_grace, self.agent, self._release_shell)
        if code is not None:
            await _send_close(send, code, reason)

    async def _start(self) -> tuple[int, int]:
        try:
            async with asyncio.timeout(self.limits.open_timeout):
                pid, fd = await asyncio.to_thread(self._open_shell)
        except TimeoutError:
            raise _Close(4500, f"the shell of {self.agent} did not start within "
                               f"{self.limits.open_timeout:g} s") from None
        except NotFound as exc:
            raise _Close(4404, str(exc)) from None
        except Conflict as exc:
            raise _Close(4409, str(exc)) from None
        except (HiveError, OSError) as exc:
            log.error("gateway: terminal of %s: %s", self.agent, exc)
            raise _Close(4500, f"cannot start a shell in {self.agent}: {exc}") from None
        os.set_blocking(fd, False)
        log.info("gateway: terminal opened on %s (shell pid %d)", self.agent, pid)
        return pid, fd

    async def _serve(
        self, pid: int, fd: int, receive: Receive, send: Send
    ) -> tuple[int | None, str]:
        """Pump bytes both ways until one side ends; the close to send (None: client left)."""
        loop = asyncio.get_running_loop()
        output: asyncio.Queue[bytes] = asyncio.Queue()
        reading = True
        ended = False

        def readable() -> None:
            nonlocal reading, ended
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                # EIO: every slave fd is closed, the shell and its children are gone.
                if exc.errno != errno.EIO:
                    log.warning("gateway: terminal of %s: read failed: %s", self.agent, exc)
                data = _EOF
            if not data:
                ended = True
            if not data or output.qsize() + 1 >= _QUEUE_HIGH:
                # At the end, or the browser is slow: stop reading (the shell then blocks on
                # its writes until the browser caught up).
                loop.remove_reader(fd)
                reading = False
            output.put_nowait(data)

        async def to_client() -> None:
            nonlocal reading
            while True:
                data = await output.get()
                if data == _EOF:
                    raise _Close(1000, "the shell exited")
                await send({"type": "websocket.send", "bytes": data})
                if not reading and not ended and output.qsize() <= _QUEUE_LOW:
                    reading = True
                    loop.add_reader(fd, readable)

        loop.add_reader(fd, readable)
        sender = asyncio.create_task(to_client(), name=f"pty-out-{self.agent}")
        reader = asyncio.create_task(self._from_client(fd, receive, send))
        try:
            await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(fd)
            for task in (sender, reader):
                task.cancel()
            await asyncio.wait({sender, reader}, timeout=2.0)
        for task in (sender, reader):
            if task.done() and not task.cancelled():
                exc = task.exception()
                if isinstance(exc, _Close):
                    return exc.code, exc.reason
                if exc is not None and not isinstance(exc, OSError):
                    log.error("gateway: terminal of %s failed: %r", self.agent, exc)
                    return 1011, "internal error in the terminal; reconnect"
        return None, ""

    async def _from_client(self, fd: int, receive: Receive, send: Send) -> None:
        """Keystrokes and control messages from the browser; returns when it disconnects."""
        limit = self.limits.max_message
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] != "websocket.receive":
                continue
            data = message.get("bytes")
            if data is not None:
                if len(data) > limit:
                    raise _Close(1009, f"message over {limit} bytes")
                await self._write(fd, data)
                continue
            text = message.get("text") or ""
            if len(text) > limit or len(text.encode("utf-8")) > limit:
                raise _Close(1009, f"message over {limit} bytes")
            await self._control(fd, text, send)

    async def _control(self, fd: int, text: str, send: Send) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            raise _Close(1003, "text messages must be JSON; send keystrokes as binary") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "input" and isinstance(data.get("data"), str):
            await self._write(fd, data["data"].encode("utf-8"))
        elif kind == "resize":
            cols, rows = data.get("cols"), data.get("rows")
            if not (_size_ok(cols) and _size_ok(rows)):
                raise _Close(1008, "resize needs whole numbers cols and rows in 1..1000")
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        elif kind == "ping":
            await send({"type": "websocket.send", "text": json.dumps({"type": "pong"})})
        else:
            raise _Close(
                1008, f"unknown message {str(kind)[:40]!r}; known: input, resize, ping"
            )

    async def _write(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` to the PTY, waiting (bounded) while the shell does not read."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                while view:
                    try:
                        view = view[os.write(fd, view):]
                    except BlockingIOError:
                        ready = loop.create_future()
                        loop.add_writer(fd, ready.set_result, None)
                        try:
                            await ready
                        finally:
                            loop.remove_writer(fd)
        except TimeoutError:
            raise _Close(1011, "the shell is not reading its input; reconnect") from None
        except OSError as exc:
            raise _Close(1000, f"the shell is gone ({exc.strerror})") from None


def _size_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000


async def _send_close(send: Send, code: int, reason: str) -> None:
    reason = reason.encode("utf-8")[:120].decode("utf-8", errors="ignore")
    try:
        await send({"type": "websocket.close", "code": code, "reason": reason})
    except (OSError, RuntimeError) as exc:  # the client is gone already
        log.debug("gateway: terminal close not sent: %r", exc)


def _reap_pid(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # reaped elsewhere


def _hang_up(
    pid: int, fd: int, grace: float, agent: str, release: Callable[[int], None] = _reap_pid
) -> None:
    """Close the terminal: SIGHUP the shell's session, SIGKILL it after ``grace``, reap it.

    The reaping waits in a thread of its own: it must not block the loop, and it must not be
    cancelled half-way by a server that is stopping (that would leave a zombie). It waits for
    the exit without reaping (``WNOWAIT``: the zombie keeps the pid, so the SIGKILL cannot hit
    a stranger), then ``release`` forgets and reaps the shell (the backend's, which stops
    tracking it before its pid can be reused).
    """
    try:
        os.close(fd)
    except OSError:
        pass
    _signal_group(pid, signal.SIGHUP)

    def reap() -> None:
        guard = threading.Lock()
        reaped = False

        def kill() -> None:
            with guard:
                if not reaped:
                    _signal_group(pid, signal.SIGKILL)

        timer = threading.Timer(grace, kill)
        timer.daemon = True
        timer.start()
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # reaped elsewhere
        finally:
            timer.cancel()
        with guard:
            reaped = True
            try:
                release(pid)
            except Exception as exc:  # noqa: BLE001 - a reap thread must log, not die silently
                log.error("gateway: terminal of %s: releasing shell %d failed: %r", agent, pid, exc)
        log.info("gateway: terminal of %s closed (shell pid %d reaped)", agent, pid)

    threading.Thread(target=reap, name=f"pty-reap-{pid}", daemon=True).start()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the shell leads its own session and process group
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        log.warning("gateway: cannot signal the terminal's group %d: %s", pid, exc)
