"""The websocket fan-out against a real server, real `websockets` clients and a real sqlite log.

The hard parts: a stalled browser is resynced while the others get everything in order, and a
resume (``?since=``) under concurrent publishing has no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hive_actors.httpd import Fanout, FanoutLimits, SecurityMiddleware, SecurityPolicy
from hive_actors.httpd.fanout import ClientInfo
from hive_actors.httpd.server import SiteOptions
from tests.support.timeout import TIMEOUT
from tests.support.web import (
    EventLog,
    LogEvent,
    make_fanout,
    recv_json,
    serving,
    ws_connect,
)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    events = EventLog(tmp_path / "events.db")
    yield events
    events.close()


def site(fanout: Fanout) -> SecurityMiddleware:
    """The fan-out as the gateway mounts it: under the security middleware, at /ws."""
    return SecurityMiddleware(Starlette(routes=[WebSocketRoute("/ws", fanout)]), SecurityPolicy())


async def read_events_until(
    ws: ClientConnection, last_id: int, seen: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every message up to and including the event ``last_id``."""
    messages = [] if seen is None else seen
    while True:
        message = await recv_json(ws)
        messages.append(message)
        if message["type"] == "event" and message["event"]["id"] >= last_id:
            return messages
        if message["type"] == "snapshot" and message["last_event_id"] >= last_id:
            return messages


def event_ids(messages: list[dict[str, Any]]) -> list[int]:
    return [m["event"]["id"] for m in messages if m["type"] == "event"]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def in_thread(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, name="test-publisher")
    thread.start()
    return thread


# -- the basics -------------------------------------------------------------------------------


@pytest.mark.parametrize("deflate", [False, True], ids=["shared-frames", "per-message-deflate"])
def test_snapshot_then_live_events_in_order(log: EventLog, deflate: bool) -> None:
    for i in range(3):
        log.append(n=i)  # history before the client: in the snapshot, not replayed
    fanout = make_fanout(log)
    # With deflate negotiated a connection cannot take the shared (uncompressed) frame: every
    # live event goes through its queue and ASGI instead.
    options = SiteOptions(ws_per_message_deflate=deflate)
    with serving(site(fanout), options=options) as (_, port):

        async def client() -> list[dict[str, Any]]:
            async with ws_connect(port, compression="deflate") as ws:
                first = await recv_json(ws)
                assert first == {"type": "snapshot", "snapshot": {"count": 3}, "last_event_id": 3}
                publisher = in_thread(lambda: [log.append_and_publish(n=i) for i in range(50)])
                try:
                    messages = await read_events_until(ws, 53)
                finally:
                    publisher.join(TIMEOUT)
                # Then one at a time, each read before the next: the client ends its catch-up
                # and is live within a few, and a live event leaves a counted trace.
                for last in range(54, 104):
                    event = await asyncio.to_thread(log.append_and_publish, n=last)
                    await read_events_until(ws, event.id, messages)
                    if (fanout.queued_sends if deflate else fanout.shared_sends) >= 3:
                        break
                return messages

        messages = run(client())
    ids = event_ids(messages)
    assert ids == list(range(4, ids[-1] + 1)) and ids[-1] < 104
    assert messages[0]["event"] == {"id": 4, "kind": "tick", "payload": {"n": 0}}
    if deflate:
        assert fanout.shared_sends == 0 and fanout.queued_sends >= 3
    else:
        # A client that reads as fast as events come is idle each time: the shared frame.
        assert fanout.shared_sends >= 3


def test_ping_pong_and_publish_without_clients(log: EventLog) -> None:
    fanout = make_fanout(log)
    fanout.publish(log.append())  # no loop yet: nothing to do, nothing raised
    with serving(site(fanout)) as (_, port):

        async def client() -> dict[str, Any]:
            async with ws_connect(port) as ws:
                await recv_json(ws)
                await ws.send('{"type": "ping"}')
                return await recv_json(ws)

        assert run(client()) == {"type": "pong"}
    fanout.publish(log.append())  # the loop is closed now: still nothing raised
    assert fanout.client_count == 0


def test_out_of_order_and_repeated_publishes_are_delivered_once_in_order(log: EventLog) -> None:
    fanout = make_fanout(log)
    with serving(site(fanout)) as (_, port):

        async def client() -> list[dict[str, Any]]:
            async with ws_connect(port) as ws:
                await recv_json(ws)
                first, second, third = log.append(), log.append(), log.append()
                # Two threads committed 1, 2, 3 but published in another order, one twice.
                for event in (second, first, second, third, first):
                    fanout.publish(event)
                return await read_events_until(ws, third.id)

        messages = run(client())
    assert event_ids(messages) == [1, 2, 3]


def test_an_event_committed_during_the_replay_read_is_not_lost(log: EventLog) -> None:
    """The replay/live race, forced: events commit and publish while the replay read runs,
    after the read saw the log, and nothing is published after them."""
    for i in range(5):
        log.append(n=i)
    injected = threading.Event()

    def racing_events_since(after_id: int, limit: int) -> list[LogEvent]:
        page = log.events_since(after_id, limit)
        if limit > 1 and not injected.is_set():  # the replay read, not the resume probe
            injected.set()
            for i in range(3):
                log.append_and_publish(late=i)  # lands while this client is in CATCHUP
        return page

    fanout = Fanout(log.snapshot, racing_events_since)
    log.fanout = fanout
    with serving(site(fanout)) as (_, port):

        async def client() -> list[dict[str, Any]]:
            async with ws_connect(port, "/ws?since=2") as ws:
                return await read_events_until(ws, 8)

        messages = run(client())
    assert injected.is_set()
    assert event_ids(messages) == [3, 4, 5, 6, 7, 8]


def test_an_event_published_while_the_replay_is_sent_is_not_lost(log: EventLog) -> None:
    """The other side of the hand-over: events published while the last replayed page is
    being written to the socket, and nothing published after them."""
    for i in range(5):
        log.append(n=i)
    fanout = make_fanout(log)
    injected: list[int] = []
    inner = site(fanout)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def racing_send(message: Any) -> None:
            if not injected and '"type": "event"' in message.get("text", ""):
                injected.extend(log.append_and_publish(late=i).id for i in range(3))
                for _ in range(3):
                    await asyncio.sleep(0)  # let the loop dispatch them mid-replay
            await send(message)

        await inner(scope, receive, racing_send)

    with serving(app) as (_, port):

        async def client() -> list[dict[str, Any]]:
            async with ws_connect(port, "/ws?since=2") as ws:
                return await read_events_until(ws, 8)

        messages = run(client())
    assert injected == [6, 7, 8]
    assert event_ids(messages) == [3, 4, 5, 6, 7, 8]


# -- slow clients -----------------------------------------------------------------------------


def stalled_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so a client that never reads stalls fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def test_a_stalled_client_is_resynced_while_the_others_get_everything(log: EventLog) -> None:
    resynced = threading.Event()
    resyncs: list[ClientInfo] = []

    def on_resync(info: ClientInfo) -> None:
        resyncs.append(info)
        resynced.set()

    limits = FanoutLimits(queue_size=16, page_size=64)
    fanout = make_fanout(log, limits, on_resync=on_resync)
    padding = "x" * 8192
    published: list[int] = []
    # The healthy clients report how far they got; the publisher sends batches (15) smaller
    # than the queue (16) and waits for them, so only the stalled client can fall behind.
    progress = threading.Condition()
    reached: dict[int, int] = {}

    def wait_for_healthy(event_id: int) -> None:
        with progress:
            ok = progress.wait_for(
                lambda: len(reached) == 5 and min(reached.values()) >= event_id, TIMEOUT
            )
        assert ok, f"healthy clients stuck before event {event_id}: {reached}"

    def batch(size: int) -> None:
        for _ in range(size):
            published.append(log.append_and_publish(pad=padding).id)
        wait_for_healthy(published[-1])

    def publish_until_resync() -> None:
        deadline = time.monotonic() + TIMEOUT * 3
        while not resynced.is_set() and time.monotonic() < deadline:
            batch(15)
        for _ in range(7):  # more after the resync: they must arrive too, in order
            batch(15)
        published.append(log.append_and_publish(last=True).id)

    with serving(site(fanout)) as (_, port):

        async def drain(ws: ClientConnection, index: int | None) -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            while True:
                message = await recv_json(ws, TIMEOUT * 3)
                seen.append(message)
                if message["type"] != "event":
                    continue
                if index is not None:
                    with progress:
                        reached[index] = message["event"]["id"]
                        progress.notify_all()
                if message["event"]["payload"].get("last"):
                    return seen

        async def scenario() -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
            stalled_ws = await ws_connect(
                port, sock=stalled_socket(port), max_queue=1, max_size=None
            ).__aenter__()
            try:
                normal = [await ws_connect(port, max_size=None).__aenter__() for _ in range(5)]
                try:
                    for ws in normal:
                        assert (await recv_json(ws))["type"] == "snapshot"
                    with progress:
                        reached.update({i: 0 for i in range(5)})
                    publisher = in_thread(publish_until_resync)
                    results = await asyncio.gather(*(drain(ws, i) for i, ws in enumerate(normal)))
                    await asyncio.to_thread(publisher.join, TIMEOUT * 3)
                    assert resynced.is_set(), "the stalled client was never resynced"
                    # Only now does the stalled client read: all of it, in order.
                    stalled = await drain(stalled_ws, None)
                    return list(results), stalled
                finally:
                    for ws in normal:
                        await ws.close()
            finally:
                await stalled_ws.close()

        normal, stalled = run(scenario())

    expected = list(range(1, published[-1] + 1))
    for seen in normal:
        assert event_ids(seen) == expected
        assert not [m for m in seen if m["type"] == "resync"]
    assert stalled[0] == {"type": "snapshot", "snapshot": {"count": 0}, "last_event_id": 0}
    assert event_ids(stalled) == expected  # nothing skipped, nothing twice
    kinds = [m["type"] for m in stalled]
    assert "resync" in kinds
    notice = stalled[kinds.index("resync")]
    # The notice sits exactly where the live stream broke off: the log resumes after it.
    before = event_ids(stalled[: kinds.index("resync")])
    assert notice["after_id"] == (before[-1] if before else 0)
    assert len(resyncs) >= 1 and resyncs[0].client.startswith("127.0.0.1:")


def test_a_client_far_behind_gets_a_snapshot_instead_of_a_long_replay(log: EventLog) -> None:
    for i in range(50):
        log.append(n=i)
    fanout = make_fanout(log, FanoutLimits(page_size=5, max_replay=10))
    with serving(site(fanout)) as (_, port):

        async def client() -> list[dict[str, Any]]:
            async with ws_connect(port, "/ws?since=0") as ws:
                return await read_events_until(ws, 50)

        messages = run(client())
    assert event_ids(messages)[:10] == list(range(1, 11))
    assert messages[-1] == {"type": "snapshot", "snapshot": {"count": 50}, "last_event_id": 50}


# -- resume -----------------------------------------------------------------------------------


def test_resume_under_concurrent_publishing_has_no_gap_and_no_duplicate(log: EventLog) -> None:
    """Each round: two publishers burst while a client resumes from a random point; then the
    publishing stops, so an event lost in the replay/live hand-over is never covered up by a
    later one, and the client must still reach the last id."""
    fanout = make_fanout(log, FanoutLimits(page_size=7))  # small pages: more replay rounds
    for i in range(150):
        log.append(seed=i)
    rng = random.Random(7)

    def burst(tag: int, count: int) -> None:
        for _ in range(count):
            log.append_and_publish(tag=tag)

    outcomes: list[tuple[int, list[int]]] = []
    with serving(site(fanout)) as (_, port):

        async def rounds() -> None:
            for _ in range(15):
                since = max(0, log.last_event_id() - rng.randrange(0, 150))
                threads: list[threading.Thread] = []
                try:
                    async with ws_connect(port, f"/ws?since={since}") as ws:
                        # The server is replaying now: publish during it. Two publishers,
                        # whose publishes also interleave out of commit order.
                        threads = [
                            in_thread(functools.partial(burst, t, rng.randrange(20, 80)))
                            for t in (1, 2)
                        ]
                        for t in threads:
                            await asyncio.to_thread(t.join, TIMEOUT)
                        final = log.last_event_id()
                        messages = await read_events_until(ws, final)
                finally:
                    for t in threads:
                        t.join(TIMEOUT)
                assert not [m for m in messages if m["type"] != "event"]
                outcomes.append((since, event_ids(messages)))

        run(rounds())
    assert len(outcomes) == 15
    for since, ids in outcomes:
        assert ids == list(range(since + 1, ids[-1] + 1)), f"gap or duplicate after {since}"


def test_resume_ahead_of_the_log_gets_a_snapshot(log: EventLog) -> None:
    for _ in range(4):
        log.append()
    fanout = Fanout(log.snapshot, log.events_since, last_event_id=log.last_event_id)
    log.fanout = fanout
    with serving(site(fanout)) as (_, port):

        async def client() -> dict[str, Any]:
            async with ws_connect(port, "/ws?since=999") as ws:  # a database since replaced
                return await recv_json(ws)

        assert run(client()) == {"type": "snapshot", "snapshot": {"count": 4}, "last_event_id": 4}


# -- junk and failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk,code",
    [
        ("not json at all", 1003),
        (b"\x00\x01binary", 1003),
        ('{"type": "ping", "pad": "' + "x" * 20000 + '"}', 1009),
        ('{"type": "launch-missiles"}', 1008),
        ("[1, 2, 3]", 1008),
    ],
)
def test_junk_closes_only_its_sender(log: EventLog, junk: str | bytes, code: int) -> None:
    fanout = make_fanout(log)
    with serving(site(fanout)) as (_, port):

        async def scenario() -> tuple[int | None, str, list[dict[str, Any]]]:
            async with ws_connect(port) as bystander, ws_connect(port) as offender:
                await recv_json(bystander)
                await recv_json(offender)
                await offender.send(junk)
                try:
                    await asyncio.wait_for(offender.recv(), TIMEOUT)
                    raise AssertionError("the offender was not closed")
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    closed = (exc.rcvd.code, exc.rcvd.reason)
                event = log.append_and_publish(after="junk")
                return closed[0], closed[1], await read_events_until(bystander, event.id)

        closed_code, reason, seen = run(scenario())
    assert closed_code == code
    assert reason  # says what was wrong
    assert event_ids(seen) == [1]


def test_oversized_past_the_server_limit_is_1009_too(log: EventLog) -> None:
    from hive_actors.httpd import SiteOptions

    fanout = make_fanout(log)
    with serving(site(fanout), options=SiteOptions(ws_max_size=4096)) as (_, port):

        async def scenario() -> int | None:
            async with ws_connect(port) as ws:
                await recv_json(ws)
                await ws.send("x" * 10000)
                try:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None
            return None

        assert run(scenario()) == 1009


def test_bad_since_is_1008(log: EventLog) -> None:
    fanout = make_fanout(log)
    with serving(site(fanout)) as (_, port):

        async def scenario() -> tuple[int, str] | None:
            async with ws_connect(port, "/ws?since=-5") as ws:
                try:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                except ConnectionClosed as exc:
                    return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
            return None

        assert run(scenario()) == (1008, "since must be a non-negative integer event id")


def test_a_failing_event_log_closes_with_1011(log: EventLog) -> None:
    def broken(after_id: int, limit: int) -> list[LogEvent]:
        raise OSError("disk on fire")

    fanout = Fanout(log.snapshot, broken)
    with serving(site(fanout)) as (_, port):

        async def scenario() -> tuple[str, int | None]:
            async with ws_connect(port) as ws:
                first = await recv_json(ws)  # the snapshot works; the catch-up read fails
                try:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                except ConnectionClosed as exc:
                    return first["type"], exc.rcvd.code if exc.rcvd else None
            return first["type"], None

        assert run(scenario()) == ("snapshot", 1011)


def test_plain_http_to_the_endpoint_is_told_to_upgrade(log: EventLog) -> None:
    from tests.support.web import http_client

    with serving(make_fanout(log)) as (_, port), http_client(port) as c:
        response = c.get("/ws")
    assert response.status_code == 426
    assert "websocket" in response.json()["error"]


# -- a filtered stream (an agent's page) ----------------------------------------------------------


def filtered_fanout(log: EventLog, **kwargs: Any) -> Fanout:
    """A fan-out of the log's ``mine`` events only, as an agent's page streams its agent's."""
    return Fanout(
        log.snapshot,
        lambda after, limit: log.events_since(after, limit, kind="mine"),
        last_event_id=log.last_event_id,
        **kwargs,
    )


def test_a_filtered_stream_bridges_its_gaps_without_reading_the_log(log: EventLog) -> None:
    """The publisher says where each event follows on from (``after``): the gaps of a filtered
    stream are not holes, so live events are not fetched again from the log."""
    fanout = filtered_fanout(log)
    last_mine = [0]

    def publish(kind: str, n: int) -> LogEvent:
        event = log.append(kind, n=n)
        if kind == "mine":
            fanout.publish(event, after=last_mine[0])
            last_mine[0] = event.id
        return event

    with serving(site(fanout)) as (_, port):

        async def client() -> tuple[list[dict[str, Any]], int]:
            async with ws_connect(port) as ws:
                assert (await recv_json(ws))["type"] == "snapshot"
                seen: list[dict[str, Any]] = []
                reads = 0
                for n in range(20):
                    await asyncio.to_thread(publish, "other", n)  # a gap in the stream
                    mine = await asyncio.to_thread(publish, "mine", n)
                    await read_events_until(ws, mine.id, seen)
                    if n == 4:
                        reads = log.reads  # live by now: from here on, no reads
                return seen, log.reads - reads

        seen, reads = run(client())
    ids = event_ids(seen)
    assert ids == list(range(2, 41, 2))  # every `mine` event, in order, none twice
    assert reads == 0
    assert fanout.shared_sends >= 15


def test_a_filtered_stream_resumes_across_its_gaps_without_a_snapshot(log: EventLog) -> None:
    for n in range(6):
        log.append("mine" if n % 2 else "other", n=n)  # mine: 2, 4, 6
    fanout = filtered_fanout(log, oldest_event_id=log.oldest_event_id)
    with serving(site(fanout)) as (_, port):

        async def client() -> list[dict[str, Any]]:
            async with ws_connect(port, "/ws?since=2") as ws:
                return await read_events_until(ws, 6)

        messages = run(client())
    # Not a snapshot: the log still holds everything after 2; the stream's own events follow.
    assert [m["type"] for m in messages] == ["event", "event"]
    assert event_ids(messages) == [4, 6]
