"""One asyncio thread serving every web site of the hive with uvicorn.

The dashboard (127.0.0.1:8000 by default) and one small site per agent page each get a uvicorn
``Server`` on a socket *we* bind (:func:`.binds.bind_listener`: SO_REUSEADDR, bounded retries,
a clear error), all in one event loop on one thread. Sites come and go while the loop runs
(an agent spawned, an agent destroyed), so the API is per site::

    web = WebServer()
    web.start(timeout=5)
    port = web.add_site("dashboard", "127.0.0.1", 8000, app)   # returns the bound port
    web.remove_site("dashboard")
    web.stop(timeout=10)

Every method is thread-safe and bounded by its ``timeout``; the GatewayActor calls them from
its own thread. Binding happens in the caller's thread (its retries may wait), so the loop never
blocks on a busy port.

Protocol choices: HTTP is uvicorn's h11 implementation (httptools is not installed);
websockets use uvicorn's ``websockets-sansio`` implementation (over the ``websockets`` package's
sans-I/O protocol), extended by :class:`.wsframes.HiveWebSocketProtocol` to take frames encoded
once for many connections. uvicorn 0.54's ``ws="websockets"`` is its *legacy* implementation:
it imports ``websockets.legacy`` and warns at import (a DeprecationWarning from websockets and a
UvicornDeprecationWarning), which our ``filterwarnings = error`` turns into failures, and it is
going away. The sans-I/O one also supports the ``websocket.http.response`` extension, which the
security middleware uses to refuse a handshake with a JSON error.

The edge under abuse (header-read and idle timeouts, a connection limit shared by all the
sites, accept errors logged once per interval, escaped and redacted log values, 431 for
oversized heads) is :mod:`.edge`.

A clean stop is quiet. When a site stops, its long-lived connections end rather than being
cancelled: every websocket is closed with 1001 (going away) and its app told so
(:class:`.wsframes.HiveWebSocketProtocol`), every event stream is told its client left and its
response is ended (:class:`.going_away.GoingAway`, which wraps each site's app), idle keep-alive
connections are closed, and ordinary requests get ``graceful_timeout`` to finish — so uvicorn's
"Cancel N running task(s)" and the tracebacks of cancelled requests are left for a handler that
is really stuck.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn

from hive_actors.errors import Conflict, HiveError, NotFound, StartFailure

from .asgi import ASGIApp
from .binds import DEFAULT_ATTEMPTS, DEFAULT_FIRST_DELAY, DEFAULT_MAX_DELAY, bind_listener
from .edge import (
    AcceptErrorLog,
    EdgeState,
    HiveH11Protocol,
    default_max_connections,
    install_log_filter,
)
from .going_away import GoingAway
from .wsframes import HiveWebSocketProtocol

__all__ = ["SiteInfo", "SiteOptions", "WebServer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteOptions:
    """How one site is served."""

    ws_max_size: int = 1024 * 1024
    """Largest websocket message a client may send; larger closes the socket with 1009."""
    ws_ping_interval: float | None = 20.0
    """Seconds between keepalive pings (None: none)."""
    ws_ping_timeout: float | None = 20.0
    """Seconds a client gets to answer a ping before it is dropped."""
    ws_per_message_deflate: bool = False
    """Compression costs CPU on a 2-core host and buys nothing on loopback."""
    graceful_timeout: float = 2.0
    """On stop, seconds open requests get to finish before their tasks are cancelled."""
    lifespan: Literal["on", "off", "auto"] = "off"
    """Run the app's ASGI lifespan (Starlette ``lifespan=``) on start and stop."""
    access_log: bool = False
    """Log every request on the ``uvicorn.access`` logger."""
    header_timeout: float = 10.0
    """Seconds a connection gets to send a request's complete headers (from connecting, or
    from its previous response); then closed, with a 408 if part of a request came
    (:mod:`.edge`)."""
    idle_timeout: float = 5.0
    """Seconds an idle keep-alive connection stays open between requests."""
    max_header_bytes: int = 16 * 1024
    """Largest request head (request line and headers); larger is a 431."""
    bind_attempts: int = DEFAULT_ATTEMPTS
    bind_first_delay: float = DEFAULT_FIRST_DELAY
    bind_max_delay: float = DEFAULT_MAX_DELAY
    bind_fix: str = "set [web] port"
    """The end of a bind error: how the operator moves this site to another port."""


@dataclass(frozen=True)
class SiteInfo:
    """A running site."""

    name: str
    host: str
    port: int
    """The bound port (the real one when 0 was asked for)."""


class _SiteServer(uvicorn.Server):
    """A uvicorn server that reports the end of its startup through a future, and tells its
    app's long-lived handlers to end before its graceful shutdown waits for them."""

    def __init__(
        self,
        config: uvicorn.Config,
        started: asyncio.Future[None],
        going_away: GoingAway | None = None,
    ) -> None:
        super().__init__(config)
        self._started_future = started
        self._going_away = going_away

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn closes the listeners (no await in between: no new stream can start
        # unseen) and waits for the open requests.
        if self._going_away is not None:
            self._going_away.begin()
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self._started_future.done():
            self._started_future.set_result(None)


class _Site:
    """A site's loop-side state."""

    def __init__(self, info: SiteInfo, server: _SiteServer, sock: socket.socket) -> None:
        self.info = info
        self.server = server
        self.sock = sock
        self.task: asyncio.Task[None] | None = None


class WebServer:
    """The web thread: one event loop, many uvicorn sites."""

    def __init__(
        self,
        name: str = "hive-web",
        *,
        sleep: Callable[[float], None] = time.sleep,
        max_connections: int | None = None,
        accept_error_interval: float = 60.0,
    ) -> None:
        """``sleep`` is what bind retries wait with (injected by tests). ``max_connections``
        bounds the open connections of all sites together (default: half the file limit);
        one more is answered 503. ``accept_error_interval``: at most one log line per this
        many seconds when ``accept()`` fails (out of file descriptors)."""
        self.name = name
        self._sleep = sleep
        self.edge = EdgeState(max_connections or default_max_connections())
        self._accept_errors = AcceptErrorLog(self.edge, interval=accept_error_interval)
        install_log_filter()
        self._lock = threading.Lock()
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._sites: dict[str, _Site | None] = {}  # None: reserved, being added
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> None:
        """Start the loop thread; return once it is running."""
        with self._lock:
            if self._state != "new":
                raise HiveError(f"web: server {self.name} was already started ({self._state})")
            self._state = "running"
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        if not self._ready.wait(timeout):
            raise StartFailure(f"web: server thread {self.name} did not start in {timeout}s")
        if self._startup_error is not None:
            with self._lock:
                self._state = "stopped"
            raise StartFailure(
                f"web: server thread {self.name} failed to start: {self._startup_error}"
            ) from self._startup_error
        log.info("web: server thread %s running", self.name)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every site, then the loop; return once the thread has exited.

        Open connections get each site's ``graceful_timeout``; whatever is left is cancelled.
        Raises :class:`HiveError` if the thread did not exit within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        if threading.current_thread() is self._thread:
            raise HiveError("web: WebServer.stop() blocks; call it from another thread")
        with self._lock:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            if self._state == "stopping":
                raise HiveError(f"web: server {self.name} is already being stopped")
            self._state = "stopping"
            sites = [s for s in self._sites.values() if s is not None]
            self._sites.clear()
        loop, thread = self._loop, self._thread
        assert loop is not None and thread is not None
        try:
            if sites:
                self._call(
                    self._stop_sites(sites), deadline - time.monotonic(), what="stopping sites"
                )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(max(0.0, deadline - time.monotonic()))
            with self._lock:
                self._state = "stopped"
        if thread.is_alive():
            raise HiveError(
                f"web: server thread {self.name} did not exit within {timeout}s; a request "
                "handler or a blocking call in the loop is stuck (see the thread dump)"
            )
        log.info("web: server thread %s stopped", self.name)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        with self._lock:
            return self._state == "running"

    # -- sites -----------------------------------------------------------------------------

    def add_site(
        self,
        name: str,
        host: str,
        port: int,
        app: ASGIApp,
        *,
        options: SiteOptions | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Bind ``host:port`` (0: any free port), serve ``app`` on it, return the bound port.

        Raises :class:`Conflict` for a name already in use, :class:`HiveError` when the port
        cannot be bound (after the retries of ``options``), :class:`StartFailure` when uvicorn
        did not start within ``timeout``.
        """
        opts = options or SiteOptions()
        with self._lock:
            self._require_running()
            if name in self._sites:
                raise Conflict(f"web: a site named {name!r} is already served; remove it first")
            self._sites[name] = None  # reserve the name while we bind outside the lock
        try:
            sock = bind_listener(
                host,
                port,
                fix=opts.bind_fix,
                attempts=opts.bind_attempts,
                first_delay=opts.bind_first_delay,
                max_delay=opts.bind_max_delay,
                sleep=self._sleep,
            )
        except BaseException:
            with self._lock:
                self._sites.pop(name, None)
            raise
        info = SiteInfo(name=name, host=host, port=sock.getsockname()[1])
        try:
            site = self._call(
                self._start_site(info, sock, app, opts),
                timeout,
                StartFailure,
                f"starting site {name!r}",
            )
        except BaseException:
            sock.close()  # a no-op if the loop side closed it already
            with self._lock:
                self._sites.pop(name, None)
            raise
        with self._lock:
            if self._state != "running":
                # stop() began while we were starting: it did not see this site, so undo it.
                stopping = True
            else:
                self._sites[name] = site
                stopping = False
        if stopping:
            self._call(self._stop_sites([site]), timeout)
            raise HiveError(f"web: server {self.name} is stopping; site {name!r} not added")
        log.info("web: site %s serving on %s:%d", name, host, info.port)
        return info.port

    def remove_site(self, name: str, timeout: float = 10.0) -> None:
        """Stop serving a site and free its port."""
        with self._lock:
            self._require_running()
            site = self._sites.get(name)
            if site is None:
                if name in self._sites:
                    raise Conflict(f"web: site {name!r} is still starting; remove it later")
                raise NotFound(f"web: no site named {name!r}; known: {sorted(self._sites)}")
            del self._sites[name]
        self._call(self._stop_sites([site]), timeout, what=f"removing site {name!r}")
        log.info("web: site %s removed", name)

    def sites(self) -> dict[str, SiteInfo]:
        """The running sites by name."""
        with self._lock:
            return {n: s.info for n, s in self._sites.items() if s is not None}

    # -- loop side -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.set_exception_handler(self._accept_errors)
            self._loop = loop
        except OSError as exc:  # e.g. out of file descriptors
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(self._drain(loop))
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel what is left (a stuck handler), then close generators and the executor."""
        pending = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        if pending:
            done, still = await asyncio.wait(pending, timeout=2.0)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("web: task %s failed: %r", task.get_name(), task.exception())
            if still:
                log.error("web: %d task(s) ignored cancellation: %s", len(still), still)
        await loop.shutdown_asyncgens()
        try:
            # A blocking call still running in the executor (a stuck snapshot read) must not
            # hang the hive's shutdown: wait a bounded time, then leave it behind.
            await asyncio.wait_for(loop.shutdown_default_executor(), timeout=2.0)
        except TimeoutError:
            log.error("web: a blocking call in the web executor did not finish; left behind")

    async def _start_site(
        self, info: SiteInfo, sock: socket.socket, app: ASGIApp, opts: SiteOptions
    ) -> _Site:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        going_away = GoingAway(app)
        config = uvicorn.Config(
            going_away,
            host=info.host,
            port=info.port,
            http=HiveH11Protocol,
            h11_max_incomplete_event_size=opts.max_header_bytes,
            timeout_keep_alive=max(1, round(opts.idle_timeout)),
            ws=HiveWebSocketProtocol,
            ws_max_size=opts.ws_max_size,
            ws_ping_interval=opts.ws_ping_interval,
            ws_ping_timeout=opts.ws_ping_timeout,
            ws_per_message_deflate=opts.ws_per_message_deflate,
            lifespan=opts.lifespan,
            log_config=None,
            access_log=opts.access_log,
            # No proxy in front of the hive: X-Forwarded-* from a local client is a lie.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, round(opts.graceful_timeout)),
        )
        # Read by HiveH11Protocol and HiveWebSocketProtocol (uvicorn passes them the config).
        config.hive_edge = self.edge  # type: ignore[attr-defined]
        config.hive_header_timeout = opts.header_timeout  # type: ignore[attr-defined]
        site = _Site(info, _SiteServer(config, started, going_away), sock)
        site.task = loop.create_task(self._serve(site, started), name=f"web-site-{info.name}")
        try:
            await started
        except BaseException:
            await self._stop_sites([site])
            raise
        return site

    async def _serve(self, site: _Site, started: asyncio.Future[None]) -> None:
        try:
            await site.server.serve(sockets=[site.sock])
        except SystemExit as exc:
            # uvicorn exits the process when the app's lifespan startup fails; here that is
            # one site failing to start, not the hive exiting.
            if not started.done():
                started.set_exception(
                    StartFailure(
                        f"web: site {site.info.name} failed to start (uvicorn exit {exc.code}); "
                        "see the log above for the app's startup error"
                    )
                )
            else:
                log.error("web: site %s stopped with uvicorn exit %s", site.info.name, exc.code)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not started.done():
                started.set_exception(
                    StartFailure(f"web: site {site.info.name} failed to start: {exc!r}")
                )
            else:
                log.exception("web: site %s crashed", site.info.name)
        finally:
            if not started.done():
                started.set_exception(
                    StartFailure(f"web: site {site.info.name} stopped before it started")
                )
            site.sock.close()

    async def _stop_sites(self, sites: list[_Site]) -> None:
        await asyncio.gather(*(self._stop_site(s) for s in sites))

    async def _stop_site(self, site: _Site) -> None:
        task = site.task
        site.server.should_exit = True
        if task is None:
            site.sock.close()
            return
        # uvicorn notices should_exit within 0.1 s, closes the listener, asks every connection
        # to close, waits graceful_timeout for them, then cancels their tasks.
        limit = site.server.config.timeout_graceful_shutdown or 1
        done, _ = await asyncio.wait({task}, timeout=limit + 2.0)
        if not done:
            log.error("web: site %s did not stop in time; cancelling it", site.info.name)
            site.server.force_exit = True
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        # uvicorn cancels lingering request tasks without awaiting them: let them finish here,
        # so nothing of this site still runs once remove_site returns.
        leftovers = list(site.server.server_state.tasks)
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)
        site.sock.close()

    # -- helpers ---------------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._state != "running":
            raise HiveError(
                f"web: server {self.name} is {self._state}, not running; call start() first"
            )

    def _call(
        self, coro: Any, timeout: float, error: type[HiveError] = HiveError, what: str = "the call"
    ) -> Any:
        """Run ``coro`` on the loop and wait for it at most ``timeout`` seconds."""
        loop = self._loop
        assert loop is not None
        if threading.current_thread() is self._thread:
            coro.close()
            raise HiveError(
                "web: WebServer methods block; call them from another thread, not the loop"
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(max(0.0, timeout))
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise error(
                f"web: server {self.name}: {what} did not finish in {timeout}s; the loop is "
                "busy or stuck (see the thread dump)"
            ) from exc
