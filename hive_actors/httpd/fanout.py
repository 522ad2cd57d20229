"""Live events to browsers over ``/ws``: never blocks a publisher, never skips an event.

Protocol (JSON text messages)::

    server → client
      {"type": "snapshot", "snapshot": <state>, "last_event_id": N}   replace your state
      {"type": "event", "event": {"id": N, ...}}                     apply, in id order
      {"type": "resync", "reason": "...", "after_id": N}             you fell behind; the events
                                                                     after N follow from the log
                                                                     (or a snapshot, if too many)
      {"type": "pong"}                                               answer to a ping
    client → server
      {"type": "ping"}

A client connects to ``/ws`` and gets a snapshot, then live events; or connects to
``/ws?since=N`` (the last id it applied) and gets the events after N from the log, then live
ones. Junk closes only that client: a binary or non-JSON message 1003, a message over
``max_message`` bytes 1009 (over the server's ``ws_max_size``, uvicorn closes with 1009 itself),
an unknown type 1008.

Publishing. :meth:`Fanout.publish` appends to a list under a lock and, if no wake-up is already
pending, schedules one with ``call_soon_threadsafe``: O(1), no I/O, never waits for a browser.
A live event is encoded once: its JSON text, and (for every connection served by
:class:`.wsframes.HiveWebSocketProtocol`) its websocket frame, which is written straight to
each idle client's transport (:mod:`.wsframes`). A client that is busy — sending, or with a
full socket buffer — gets the text in its queue and its own task sends it through ASGI.
Each client has a bounded queue; a client whose queue is full is *resynced* — its queue is
dropped, it is told (``resync``), and it is fed from the event log at its own pace, so a slow
browser costs one page of events and no memory growth, and never misses an event.

Contract with the event source: every event is committed to the log that ``events_since``
reads *before* it is published, ids grow in commit order without holes (one sqlite writer,
AUTOINCREMENT), and ``snapshot()`` returns the state and the last event id it includes, read
in one transaction. Publish every event the log gets: one that is never published is still
delivered (the next one reveals the hole and the log fills it), but costs every client a read.

The replay/live race, and why there are no gaps or duplicates. Each client is LIVE or CATCHUP.
All of its state is touched only on the loop thread.

* CATCHUP: the client's task reads the log from ``sent_id`` (the last id handed to its socket)
  in pages. A live event dispatched meanwhile is not queued; it only sets ``dirty``. Before each
  read ``dirty`` is cleared. The switch to LIVE happens on the loop thread right after a read
  that was short (or empty) *and* saw ``dirty`` still clear, with ``queued_id`` set to the last
  id of that read. Why that is safe: an event missing from the read was committed after the
  read began, so it is dispatched after ``dirty`` was cleared; if that dispatch ran before the
  switch it set ``dirty`` (and we read again), otherwise it runs after the switch and is
  queued. Nothing falls between.
* LIVE: a dispatched event with ``id <= queued_id`` was already read from the log: dropped (no
  duplicate). One that follows on (``after <= queued_id``, see below) is queued. Otherwise one
  is missing (two threads published out of commit order, or an event was never published):
  the client goes to CATCHUP and the log fills the hole, so order holds too.

A filtered stream (an agent's page: the log's events about that agent) has gaps in its ids.
Its publisher passes ``after``: an id such that the stream has no event between ``after`` and
this one (the previous event it published to it). The event follows on from what a client
holds when ``after <= queued_id < id``; for the whole log ``after`` is ``id - 1``, and that is
``id == queued_id + 1``.
* A full queue (LIVE, slow client): the queue is cleared, the client goes to CATCHUP with a
  resync notice; events up to ``sent_id`` were handed to the socket, the rest come from the log.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from hive_actors.errors import HiveError

from .asgi import Receive, Scope, Send, send_json_error
from .fanout_types import ClientInfo, EventLike, FanoutLimits, Snapshot, event_to_dict
from .wsframes import FRAMES_EXTENSION, FrameWriter, text_frame

__all__ = [
    "ClientInfo",
    "EventLike",
    "Fanout",
    "FanoutCounters",
    "FanoutLimits",
    "Snapshot",
    "event_to_dict",
]

log = logging.getLogger(__name__)


_LIVE = "live"
_CATCHUP = "catchup"


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_RESYNC = _Marker("resync")  # queue overflowed: tell the client, then catch up
_FILL = _Marker("fill")  # a hole in the live ids: catch up silently


class _Closing(Exception):
    """The connection must close with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


@dataclass
class FanoutCounters:
    """What a fan-out did (written on its loop thread, read by scrapes)."""

    shared: int = 0
    """Live events written as one shared frame to an idle client."""
    queued: int = 0
    """Live events handed to a client's queue (busy, or a connection without shared frames)."""
    resyncs: int = 0
    """Clients that fell behind and were resynced from the log."""


class _Client:
    """One websocket's fan-out state; loop thread only."""

    def __init__(self, label: str, send: Send, writer: FrameWriter | None = None) -> None:
        self.label = label
        self._send = send
        self.writer = writer
        self.send_lock = asyncio.Lock()
        self.mode = _CATCHUP
        self.dirty = False
        self.queue: collections.deque[tuple[int, str] | _Marker] = collections.deque()
        self.wake = asyncio.Event()
        self.queued_id = 0
        self.sent_id = 0

    @property
    def idle(self) -> bool:
        """Nothing queued and no send in progress: a frame written now keeps the order."""
        return not self.queue and not self.send_lock.locked()

    def push(self, item: tuple[int, str] | _Marker) -> None:
        self.queue.append(item)
        self.wake.set()

    async def next_item(self) -> tuple[int, str] | _Marker:
        while not self.queue:
            self.wake.clear()
            await self.wake.wait()
        return self.queue.popleft()

    async def send_text(self, text: str) -> None:
        async with self.send_lock:
            await self._send({"type": "websocket.send", "text": text})

    async def send_json(self, message: Mapping[str, Any]) -> None:
        await self.send_text(json.dumps(message))

    async def close(self, code: int, reason: str) -> None:
        # No send lock: the feeding task is cancelled before a close. The reason must fit in
        # a control frame (123 bytes).
        reason = reason.encode("utf-8")[:120].decode("utf-8", errors="ignore")
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


class Fanout:
    """Push path from actors to browsers; an ASGI websocket endpoint (mount it at ``/ws``).

    ``snapshot()`` and ``events_since(after_id, limit)`` are blocking callables (sqlite reads);
    they run in the loop's executor, never on the loop thread. ``last_event_id()``, if given,
    lets a resume notice that the client's ``since`` is ahead of the log (a replaced
    database) and send it a snapshot; ``oldest_event_id()`` (the oldest id the whole log
    holds), that the events after ``since`` were pruned — without it, a resume checks that
    ``events_since`` goes on right after ``since``, which only an unfiltered stream does. ``encode`` turns an event into a JSON-able dict.
    ``on_resync`` is called (loop thread, must not block) when a client is resynced.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        events_since: Callable[[int, int], Sequence[EventLike]],
        *,
        last_event_id: Callable[[], int] | None = None,
        oldest_event_id: Callable[[], int] | None = None,
        limits: FanoutLimits | None = None,
        encode: Callable[[Any], Mapping[str, Any]] = event_to_dict,
        on_resync: Callable[[ClientInfo], None] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._events_since = events_since
        self._last_event_id = last_event_id
        self._oldest_event_id = oldest_event_id
        self.limits = limits or FanoutLimits()
        self._encode = encode
        self._on_resync = on_resync
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[_Client] = set()
        # The cross-thread hand-off: publishers append, the loop drains.
        self._inbox_lock = threading.Lock()
        self._inbox: list[tuple[EventLike, int | None]] = []
        self._inbox_overflow = False
        self._wakeup_pending = False
        self.counters = FanoutCounters()

    # -- publishing (any thread) -----------------------------------------------------------

    def publish(self, event: EventLike, after: int | None = None) -> None:
        """Hand ``event`` to the browsers; returns at once, whatever the browsers do.

        Publish only after the event is committed to the log. Before any browser ever
        connected there is no loop yet and the event is not needed: a client starts from the
        snapshot and the log. ``after`` (a filtered stream's): the stream has no event between
        it and this one; None: the previous id.
        """
        loop = self._loop
        if loop is None:
            return
        with self._inbox_lock:
            if len(self._inbox) >= self.limits.inbox_size:
                self._inbox_overflow = True
                return
            self._inbox.append((event, after))
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:
            # The loop is closed (server stopped): no client is left to tell.
            with self._inbox_lock:
                self._inbox.clear()
                self._wakeup_pending = False

    @property
    def client_count(self) -> int:
        """Connected clients (a snapshot of a number that changes on the loop thread)."""
        return len(self._clients)

    @property
    def shared_sends(self) -> int:
        """Live events written to a client as the one shared frame."""
        return self.counters.shared

    @property
    def queued_sends(self) -> int:
        """Live events handed to a client's queue."""
        return self.counters.queued

    # -- loop side: dispatch ---------------------------------------------------------------

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            events, self._inbox = self._inbox, []
            overflow, self._inbox_overflow = self._inbox_overflow, False
            self._wakeup_pending = False
        if overflow:
            log.error("web: fan-out inbox overflowed; every client catches up from the log")
            for client in self._clients:
                self._to_catchup(client, _FILL)
        for event, after in events:
            try:
                event_id = int(event.id)
                text = json.dumps({"type": "event", "event": self._encode(event)})
            except (TypeError, ValueError, AttributeError):
                # Clients are not harmed: the next event reveals the hole, the log fills it.
                log.exception("web: cannot encode published event %r; dropped", event)
                continue
            self._dispatch(event_id, event_id - 1 if after is None else after, text)

    def _dispatch(self, event_id: int, after: int, text: str) -> None:
        frame: bytes | None = None  # built once, for every client that can take it
        for client in self._clients:
            if client.mode == _CATCHUP:
                client.dirty = True
            elif event_id <= client.queued_id:
                continue  # already replayed from the log
            elif after > client.queued_id:
                self._to_catchup(client, _FILL)  # something in between is missing
            elif len(client.queue) >= self.limits.queue_size:
                client.queue.clear()
                self._to_catchup(client, _RESYNC)
                self.counters.resyncs += 1
                log.warning(
                    "web: client %s fell behind (%d events queued); resyncing it from the log",
                    client.label,
                    self.limits.queue_size,
                )
                if self._on_resync is not None:
                    try:
                        self._on_resync(ClientInfo(client.label, client.sent_id))
                    except Exception:
                        log.exception("web: on_resync hook failed")
            else:
                client.queued_id = event_id
                if client.writer is not None and client.idle:
                    if frame is None:
                        frame = text_frame(text)
                    if client.writer.write(frame):
                        client.sent_id = event_id
                        self.counters.shared += 1
                        continue
                client.push((event_id, text))
                self.counters.queued += 1

    @staticmethod
    def _to_catchup(client: _Client, marker: _Marker) -> None:
        if client.mode == _CATCHUP:
            return
        client.mode = _CATCHUP
        client.dirty = True
        client.push(marker)

    # -- loop side: one connection ---------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI endpoint: one websocket connection."""
        if scope["type"] != "websocket":
            await send_json_error(
                scope,
                send,
                426,
                "this is the live events websocket; connect with ws://",
                (("upgrade", "websocket"),),
            )
            return
        self._loop = asyncio.get_running_loop()
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        peer = scope.get("client") or ("?", 0)
        writer = scope.get("extensions", {}).get(FRAMES_EXTENSION)
        client = _Client(f"{peer[0]}:{peer[1]}", send, writer)
        since, bad = _parse_since(scope)
        if bad is not None:
            await self._close(client, 1008, bad)
            return
        # Registered (in CATCHUP) before the first read: from here on every dispatch either
        # marks it dirty or, once LIVE, queues for it.
        self._clients.add(client)
        sender = asyncio.create_task(self._feed(client, since), name=f"ws-feed-{client.label}")
        reader = asyncio.create_task(self._read_client(client, receive))
        try:
            await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._clients.discard(client)
            for task in (sender, reader):
                task.cancel()
            # Bounded: a task that ignored its cancellation must not pin the connection.
            _, stuck = await asyncio.wait({sender, reader}, timeout=self.limits.close_timeout)
            if stuck:
                log.error("web: client %s: tasks ignored cancellation: %s", client.label, stuck)
        closing = _closing_of(sender) or _closing_of(reader)
        if closing is not None:
            await self._close(client, closing.code, closing.reason)

    async def _read_client(self, client: _Client, receive: Receive) -> None:
        """Read what the client sends; return on disconnect, raise _Closing on junk."""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                raise _Closing(1003, "binary messages are not supported; send JSON text")
            if len(text) > self.limits.max_message or (
                len(text.encode("utf-8")) > self.limits.max_message
            ):
                raise _Closing(1009, f"message over {self.limits.max_message} bytes")
            try:
                data = json.loads(text)
            except ValueError:
                raise _Closing(1003, "message is not JSON") from None
            kind = data.get("type") if isinstance(data, dict) else None
            if kind == "ping":
                await client.send_json({"type": "pong"})
            else:
                raise _Closing(1008, f"unknown message type {str(kind)[:40]!r}; known: ping")

    async def _feed(self, client: _Client, since: int | None) -> None:
        """Everything the client receives, in order."""
        try:
            if since is None:
                await self._send_snapshot(client)
            else:
                await self._start_resume(client, since)
            await self._catch_up(client)
            while True:
                item = await client.next_item()
                if item is _RESYNC:
                    await client.send_json(
                        {
                            "type": "resync",
                            "reason": f"you fell more than {self.limits.queue_size} events "
                            "behind; the missed events follow from the log",
                            "after_id": client.sent_id,
                        }
                    )
                    await self._catch_up(client)
                elif item is _FILL:
                    await self._catch_up(client)
                else:
                    assert isinstance(item, tuple)
                    # sent_id moves before the await: if the queue overflows while this send
                    # waits, the catch-up must start after this event, which the socket has.
                    client.sent_id = item[0]
                    await client.send_text(item[1])
        except HiveError as exc:
            log.error("web: client %s: %s", client.label, exc)
            raise _Closing(1011, "the hive's event log is unavailable; reconnect later") from exc
        except OSError:
            raise  # the client is gone (uvicorn's ClientDisconnected): nothing to close
        except Exception as exc:
            log.exception("web: feeding client %s failed", client.label)
            raise _Closing(1011, "internal error in the hive; reconnect") from exc

    async def _start_resume(self, client: _Client, since: int) -> None:
        """A resume starts after ``since``, unless the log cannot serve it: then a snapshot."""
        client.sent_id = since
        if self._last_event_id is not None:
            last = await self._blocking(self._last_event_id)
            if since > last:
                log.info("web: client %s resumes at %d > log head %d", client.label, since, last)
                await self._send_snapshot(client)
                return
        if since == 0:
            return
        if self._oldest_event_id is not None:
            pruned = await self._blocking(self._oldest_event_id) > since + 1
        else:
            first = await self._blocking(self._events_since, since, 1)
            pruned = bool(first) and first[0].id > since + 1
        if pruned:
            # The log no longer holds the events right after `since`: the client's state
            # cannot be brought forward event by event.
            await self._send_snapshot(client)

    async def _send_snapshot(self, client: _Client) -> None:
        snap = await self._blocking(self._snapshot)
        await client.send_json(
            {"type": "snapshot", "snapshot": snap.state, "last_event_id": snap.last_event_id}
        )
        client.sent_id = snap.last_event_id

    async def _catch_up(self, client: _Client) -> None:
        """Feed the client from the log until it can go LIVE (see the module docstring)."""
        page_size = self.limits.page_size
        replayed = 0
        while True:
            client.dirty = False
            page = await self._blocking(self._events_since, client.sent_id, page_size)
            fresh = [e for e in page if e.id > client.sent_id]
            texts = [
                (int(e.id), json.dumps({"type": "event", "event": self._encode(e)})) for e in fresh
            ]
            if len(page) < page_size and not client.dirty:
                # Nothing was dispatched during the read: everything newer will be dispatched
                # from now on, to a LIVE client. Switch before the first await below.
                client.mode = _LIVE
                client.queued_id = texts[-1][0] if texts else client.sent_id
                await self._send_events(client, texts)
                return
            await self._send_events(client, texts)
            replayed += len(texts)
            if replayed >= self.limits.max_replay:
                log.info(
                    "web: client %s is %d+ events behind; sending a snapshot",
                    client.label,
                    replayed,
                )
                await self._send_snapshot(client)
                replayed = 0

    @staticmethod
    async def _send_events(client: _Client, texts: list[tuple[int, str]]) -> None:
        for event_id, text in texts:
            client.sent_id = event_id
            await client.send_text(text)

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking read off the loop, with a deadline."""
        name = getattr(fn, "__name__", repr(fn))
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that arrives as the read completes, and the feed task would then outlive its
            # connection.
            async with asyncio.timeout(self.limits.read_timeout):
                return await asyncio.to_thread(fn, *args)
        except TimeoutError as exc:
            raise HiveError(
                f"{name}{args} took over {self.limits.read_timeout}s; the store is stuck or "
                "overloaded"
            ) from exc
        except HiveError:
            raise
        except Exception as exc:
            raise HiveError(f"{name}{args} failed: {exc!r}") from exc

    async def _close(self, client: _Client, code: int, reason: str) -> None:
        log.info("web: closing client %s: %d %s", client.label, code, reason)
        try:
            # Bounded: a client that stopped reading cannot take the close frame.
            async with asyncio.timeout(self.limits.close_timeout):
                await client.close(code, reason)
        except TimeoutError:
            log.info("web: client %s did not take the close frame; dropping it", client.label)
        except (OSError, RuntimeError) as exc:  # the client is already gone
            log.debug("web: close of %s failed: %r", client.label, exc)


def _parse_since(scope: Scope) -> tuple[int | None, str | None]:
    """``?since=N`` → (N, None); absent → (None, None); malformed → (None, reason)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("since")
    if not values:
        return None, None
    raw = values[0].strip()
    if not raw.isdigit() or not raw.isascii() or len(raw) > 18:
        return None, "since must be a non-negative integer event id"
    return int(raw), None


def _closing_of(task: asyncio.Task[None]) -> _Closing | None:
    if not task.done() or task.cancelled():
        return None
    exc = task.exception()
    if isinstance(exc, _Closing):
        return exc
    if exc is not None:
        log.debug("web: websocket task ended with %r", exc)
    return None
