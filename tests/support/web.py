"""Helpers shared by the web tests: a real sqlite event log, a running web server, HTTP and
websocket clients, and free ports."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import select
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from hive_actors.httpd import Fanout, FanoutLimits, Snapshot, WebServer
from hive_actors.httpd.asgi import ASGIApp
from hive_actors.httpd.server import SiteOptions
from tests.support.timeout import TIMEOUT

__all__ = [
    "EventLog",
    "LogEvent",
    "free_port_pair",
    "http_client",
    "make_fanout",
    "raw_request",
    "recv_json",
    "serving",
    "ws_connect",
]


@dataclass(frozen=True)
class LogEvent:
    """An event row, shaped like the store's ``Event``."""

    id: int
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)


class EventLog:
    """A real sqlite event log with the store's contract: AUTOINCREMENT ids in commit order,
    the snapshot and its last id read in one transaction. Publishing happens after commit."""

    def __init__(self, path: Path, fanout: Fanout | None = None) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "kind TEXT NOT NULL, payload TEXT NOT NULL)"
        )
        self._lock = threading.Lock()
        self.fanout = fanout
        self.reads = 0

    def append(self, kind: str = "tick", **payload: Any) -> LogEvent:
        """Commit one event and return it (not published)."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO events (kind, payload) VALUES (?, ?)", (kind, json.dumps(payload))
            )
            assert cur.lastrowid is not None
            return LogEvent(cur.lastrowid, kind, payload)

    def append_and_publish(self, kind: str = "tick", **payload: Any) -> LogEvent:
        """Commit, then publish: the order the real actors follow."""
        event = self.append(kind, **payload)
        assert self.fanout is not None
        self.fanout.publish(event)
        return event

    def events_since(self, after_id: int, limit: int, kind: str | None = None) -> list[LogEvent]:
        """Up to ``limit`` events after ``after_id`` (only those of ``kind``, if given: a
        filtered stream, like an agent's page)."""
        where = "" if kind is None else " AND kind = ?"
        params: tuple[Any, ...] = (after_id,) if kind is None else (after_id, kind)
        with self._lock:
            self.reads += 1
            rows = self._conn.execute(
                f"SELECT id, kind, payload FROM events WHERE id > ?{where} ORDER BY id LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [LogEvent(r[0], r[1], json.loads(r[2])) for r in rows]

    def oldest_event_id(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT min(id), max(id) FROM events").fetchone()
        return int(row[0]) if row[0] is not None else int(row[1] or 0) + 1

    def last_event_id(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT max(id) FROM events").fetchone()
        return int(row[0] or 0)

    def snapshot(self) -> Snapshot:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                count, last = self._conn.execute(
                    "SELECT count(*), coalesce(max(id), 0) FROM events"
                ).fetchone()
            finally:
                self._conn.execute("COMMIT")
        return Snapshot(state={"count": count}, last_event_id=last)

    def close(self) -> None:
        self._conn.close()


def make_fanout(log: EventLog, limits: FanoutLimits | None = None, **kwargs: Any) -> Fanout:
    """A fan-out over ``log``, wired both ways."""
    fanout = Fanout(log.snapshot, log.events_since, limits=limits, **kwargs)
    log.fanout = fanout
    return fanout


@contextlib.contextmanager
def serving(
    app: ASGIApp, *, options: SiteOptions | None = None, name: str = "site"
) -> Iterator[tuple[WebServer, int]]:
    """A started :class:`WebServer` with one site on 127.0.0.1:0; stopped on exit."""
    web = WebServer(name="test-web")
    web.start(timeout=TIMEOUT)
    try:
        port = web.add_site(name, "127.0.0.1", 0, app, options=options, timeout=TIMEOUT)
        yield web, port
    finally:
        web.stop(timeout=TIMEOUT)


def operator_token(state_dir: Path) -> str:
    """The operator token a hive with ``state_dir`` created at its start (default file)."""
    return (state_dir / "operator-token").read_text(encoding="ascii").strip()


def bearer(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header that carries the operator ``token`` (none for None)."""
    return {} if token is None else {"authorization": f"Bearer {token}"}


def http_client(port: int, token: str | None = None) -> httpx.Client:
    """An HTTP client for a local site (environment proxies ignored), sending the operator
    ``token`` when given."""
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=TIMEOUT,
        headers=bearer(token),
    )


def raw_request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send ``path`` exactly as given (httpx would normalise ``..`` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def ws_connect(port: int, path: str = "/ws", *, token: str | None = None, **kwargs: Any) -> Any:
    """A websockets client connection to a local site (use with ``async with``), sending the
    operator ``token`` when given."""
    if token is not None:
        kwargs["additional_headers"] = {**kwargs.get("additional_headers", {}), **bearer(token)}
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", TIMEOUT)
    return connect(f"ws://127.0.0.1:{port}{path}", **kwargs)


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next message, decoded; fails the test after ``timeout``."""
    text = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(text, str)
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def free_port_pair() -> int:
    """A port P with P and P+1 both free right now, outside the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000)
        socks: list[socket.socket] = []
        try:
            for port in (base, base + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no two adjacent free ports in 20000-30000")


async def ws_read_until(sock: ClientConnection, marker: bytes) -> bytes:
    """What a websocket sent (binary frames, e.g. a terminal's output) up to ``marker``; each
    frame waited for at most TIMEOUT."""
    buf = b""
    while marker not in buf:
        data = await asyncio.wait_for(sock.recv(), TIMEOUT)
        if isinstance(data, bytes):
            buf += data
    return buf


def exited(pid: int, timeout: float) -> bool:
    """Wait on a pidfd (no polling) until process ``pid`` has ended; whether it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
