"""Live events to many browsers: the hive's push path vs a bare ``websockets`` broadcast.

In one run, on loopback, ``--clients`` websocket clients (spread over ``--procs`` client
processes, so the clients' CPU is not the server's) receive ``--events`` events published at
``--rate`` per second, twice:

  - the hive: a real store (sqlite file, WAL, ``synchronous=FULL``); a publisher thread plays an
    actor: it commits a ``turn.log`` event (``store.events.record``) and rings the hive's bell.
    The gateway's push path does the rest exactly as in the hive: the :class:`EventPump`
    thread wakes on the bell, reads the event on its own connection (a read transaction,
    :class:`HiveReader`), publishes it to the :class:`Fanout`, which hands it to every
    ``/ws`` client of a uvicorn site (security middleware, Starlette route) on the web thread.
    Each client connected with a snapshot first, as a browser does.
  - the ceiling: a bare ``websockets`` server (``websockets.asyncio.server``) whose publisher
    thread hands the same JSON text to ``websockets.broadcast`` on the server's loop.

Latency of one event = from the bell ring (bare: the hand-over to the loop) to its arrival at
*every* client (the last one). Arrival is the kernel's receive timestamp of the data
(``SO_TIMESTAMPNS``, CLOCK_REALTIME, read with each ``recvmsg``), not the moment a client
process got around to reading it: 100,000 messages a second keep two cores busy, and a client
process scheduled late must not be counted against the server it measures. The ring is
stamped with the same system-wide clock (``time.time()``).

It prints the parameters, p50/p90/p99/max of both, the ratio hive / bare (the target: p99 at
most 1.5 x), and what the server process spent in CPU. The first ``--warmup`` events of each
side are not counted. It asserts nothing.

    python benchmarks/fanout.py [--clients 500] [--rate 200] [--events 1000] [--procs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import queue
import re
import resource
import selectors
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.asyncio.server import ServerConnection, broadcast, serve

from hive_actors import heap
from hive_actors.gateway.pump import EventPump
from hive_actors.gateway.reads import HiveReader
from hive_actors.httpd import Fanout, SecurityMiddleware, SecurityPolicy, WebServer
from hive_actors.services.bell import Bell
from hive_actors.store import Role, Store
from hive_actors.store.events import EventKind

TIMEOUT = 120.0
"""Deadline of every wait: a stuck side ends the benchmark instead of hanging it."""
END = "bench-end"


# -- the clients (child processes) -----------------------------------------------------------
#
# 500 clients x 200 events/s is 100,000 websocket messages a second: more than a Python
# websocket client library parses on this machine's two cores, and the clients would measure
# themselves. So a client here does the real opening handshake on a plain socket, then finds
# the event ids in the raw stream of (unmasked) server frames with one regex per read.

_EVENT_ID = re.compile(rb'"event": \{"id": (\d+)')
_HANDSHAKE_END = b"\r\n\r\n"
SO_TIMESTAMPNS = 35
"""Linux's SO_TIMESTAMPNS (asm-generic/socket.h); Python's socket module does not name it. The
control message it adds to each read is a ``struct timespec`` of the receive time."""
_TIMESPEC = struct.Struct("@qq")


def _open(host: str, port: int, path: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )
    head = b""
    while _HANDSHAKE_END not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"{host}:{port}{path} closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head[:80]!r}")
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return sock


def _received_at(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time of the data a ``recvmsg`` returned (None if it gave none)."""
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            seconds, nanoseconds = _TIMESPEC.unpack(payload[:16])
            return seconds + nanoseconds / 1e9
    return None


def client_process(url: str, count: int, ready: Any, results: Any, index: int) -> None:
    """One client process: ``count`` websocket connections, the arrival time of every event."""
    # The clients are the measuring apparatus, not the system under test: the kernel stamps
    # arrivals, so a client that reads late measures the same; the server must not wait for CPU
    # behind them.
    os.nice(19)
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    selector = selectors.DefaultSelector()
    tails: dict[socket.socket, bytes] = {}
    for _ in range(count):
        sock = _open(host, port, path)
        selector.register(sock, selectors.EVENT_READ)
        tails[sock] = b""
    ready.put(index)
    arrivals: dict[int, float] = {}
    counts: dict[int, int] = {}
    resyncs = 0
    unstamped = 0
    control = socket.CMSG_SPACE(_TIMESPEC.size)
    open_ = set(tails)
    deadline = time.monotonic() + TIMEOUT
    while open_ and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = cast(socket.socket, key.fileobj)
            try:
                data, ancdata, _, _ = sock.recvmsg(1 << 16, control)
            except BlockingIOError:
                continue
            now = _received_at(ancdata)
            if now is None:
                unstamped += 1
                now = time.time()
            if not data:
                selector.unregister(sock)
                open_.discard(sock)
                continue
            buf = tails[sock] + data
            end = 0
            for match in _EVENT_ID.finditer(buf):
                event_id = int(match.group(1))
                arrivals[event_id] = now  # later reads are later: the max over connections
                counts[event_id] = counts.get(event_id, 0) + 1
                end = match.end()
            resyncs += buf.count(b'{"type": "resync"')
            if END.encode() in buf:
                selector.unregister(sock)
                open_.discard(sock)
            tails[sock] = buf[max(end, len(buf) - 64):]
    for sock in tails:
        sock.close()
    results.put((index, {k: (arrivals[k], counts[k]) for k in arrivals}, resyncs, unstamped))


# -- the two servers ---------------------------------------------------------------------------


class HiveSide:
    """The gateway's push path over a real store, served as the gateway serves it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "hive.db"
        with Store.open(self.path) as store:
            store.registry.register("alice", role=Role.AGENT)
        self.writer = Store.open(self.path)
        self.bell = Bell()
        self.reader = HiveReader(lambda: Store.open(self.path), lambda name: directory / name)
        self.fanout = Fanout(
            self.reader.snapshot, self.reader.events_since, last_event_id=self.reader.last_event_id
        )
        app = SecurityMiddleware(
            Starlette(routes=[WebSocketRoute("/ws", self.fanout)]), SecurityPolicy()
        )
        self.web = WebServer(name="bench-web")
        self.web.start(timeout=TIMEOUT)
        self.port = self.web.add_site("dashboard", "127.0.0.1", 0, app, timeout=TIMEOUT)
        self.pump = EventPump(
            self.bell, self.reader.events_since, self._publish,
            after=self.reader.last_event_id(), on_failure=lambda exc: print(f"pump: {exc!r}"),
        )
        self.pump.start()
        heap.settle()  # as the daemon does once its tree is up

    def _publish(self, events: Any) -> None:
        for event in events:
            self.fanout.publish(event)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def publish(self, n: int, last: bool) -> tuple[int, float]:
        """Play an actor: commit one event, then ring the bell; (id, ring time)."""
        line = f"{END} {n}" if last else f"tool call {n}: Read notes.md (1234 bytes)"
        event_id = self.writer.events.record(EventKind.TURN_LOG, "alice", {"line": line})
        rung = time.time()
        self.bell.ring()
        return event_id, rung

    def close(self) -> None:
        self.pump.stop()
        self.web.stop(timeout=TIMEOUT)
        self.reader.close()
        self.writer.close()


class BareSide:
    """A bare ``websockets`` server: ``broadcast`` of the same text to every client."""

    def __init__(self) -> None:
        self.clients: set[ServerConnection] = set()
        self.loop = asyncio.new_event_loop()
        started: queue.Queue[int] = queue.Queue()
        self._stop: asyncio.Future[None] | None = None
        self.thread = threading.Thread(target=self._run, args=(started,), name="bench-bare")
        self.thread.start()
        self.port = started.get(timeout=TIMEOUT)
        self._next_id = 0

    def _run(self, started: queue.Queue[int]) -> None:
        asyncio.set_event_loop(self.loop)

        async def handler(sock: ServerConnection) -> None:
            self.clients.add(sock)
            try:
                await sock.send(json.dumps({"type": "hello"}))
                await sock.wait_closed()
            finally:
                self.clients.discard(sock)

        async def main() -> None:
            self._stop = self.loop.create_future()
            async with serve(
                handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=2**20
            ) as server:
                started.put(next(iter(server.sockets)).getsockname()[1])
                await self._stop

        self.loop.run_until_complete(main())
        self.loop.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def publish(self, n: int, last: bool) -> tuple[int, float]:
        """The same JSON text a hive client gets, broadcast from the loop; (id, hand-over)."""
        self._next_id += 1
        line = f"{END} {n}" if last else f"tool call {n}: Read notes.md (1234 bytes)"
        text = json.dumps({"type": "event", "event": {
            "id": self._next_id, "ts": time.time(), "kind": "turn.log", "agent": "alice",
            "payload": {"line": line}, "view": {}}})
        rung = time.time()
        self.loop.call_soon_threadsafe(broadcast, self.clients, text)
        return self._next_id, rung

    def close(self) -> None:
        def stop() -> None:
            if self._stop is not None and not self._stop.done():
                self._stop.set_result(None)

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(TIMEOUT)


# -- one measured phase ------------------------------------------------------------------------


def phase(
    name: str, url: str, publish: Callable[[int, bool], tuple[int, float]], args: argparse.Namespace
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    share = [args.clients // args.procs + (i < args.clients % args.procs) for i in range(args.procs)]
    procs = [
        ctx.Process(target=client_process, args=(url, n, ready, results, i), daemon=True)
        for i, n in enumerate(share)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=TIMEOUT)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    rung: dict[int, float] = {}
    interval = 1.0 / args.rate
    start = time.monotonic()
    for n in range(args.events):
        # Paced on the schedule (not on the previous send): a slow commit is caught up.
        delay = start + n * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event_id, at = publish(n, n == args.events - 1)
        rung[event_id] = at
    elapsed = time.monotonic() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    arrivals: dict[int, float] = {}
    counts: dict[int, int] = {}
    resyncs = unstamped = 0
    for _ in procs:
        _, got, resynced, late = results.get(timeout=TIMEOUT)
        resyncs += resynced
        unstamped += late
        for event_id, (last, count) in got.items():
            arrivals[event_id] = max(arrivals.get(event_id, 0.0), last)
            counts[event_id] = counts.get(event_id, 0) + count
    for proc in procs:
        proc.join(TIMEOUT)
    ids = sorted(rung)[args.warmup:]
    complete = [i for i in ids if counts.get(i) == args.clients]
    latencies = sorted((arrivals[i] - rung[i]) * 1000 for i in complete)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "name": name, "latencies": latencies, "missing": len(ids) - len(complete),
        "resyncs": resyncs, "rate": args.events / elapsed, "cpu": cpu / elapsed,
        "unstamped": unstamped,
    }


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def report(result: dict[str, Any]) -> None:
    lat = result["latencies"]
    print(
        f"  {result['name']:<5} p50 {pct(lat, 0.5):7.2f} ms  p90 {pct(lat, 0.9):7.2f} ms  "
        f"p99 {pct(lat, 0.99):7.2f} ms  max {lat[-1]:7.2f} ms  mean {statistics.fmean(lat):6.2f} ms"
        f"  | {result['rate']:.0f} events/s published, server CPU {result['cpu'] * 100:.0f} %"
        f" of a core, {result['missing']} incomplete, {result['resyncs']} resyncs"
        + (f", {result['unstamped']} reads without a kernel timestamp" if result["unstamped"]
           else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100, help="first events not counted")
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--dir", default=None, help="where the sqlite file goes")
    args = parser.parse_args(argv)
    print(
        f"fanout: {args.clients} websocket clients in {args.procs} processes on loopback, "
        f"{args.events} events at {args.rate:g}/s ({args.warmup} warm-up), "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        hive = HiveSide(Path(tmp))
        try:
            hive_result = phase("hive", hive.url, hive.publish, args)
        finally:
            hive.close()
        bare = BareSide()
        try:
            bare_result = phase("bare", bare.url, bare.publish, args)
        finally:
            bare.close()
    print("latency from the ring (bare: the hand-over) to the event's arrival at every client:")
    report(hive_result)
    report(bare_result)
    ratio = pct(hive_result["latencies"], 0.99) / pct(bare_result["latencies"], 0.99)
    ratio50 = pct(hive_result["latencies"], 0.5) / pct(bare_result["latencies"], 0.5)
    print(f"ratio hive / bare: p99 {ratio:.2f} x (target <= 1.5), p50 {ratio50:.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
