"""Durable messages per second: the BusActor end to end vs raw apsw inserts, on one disk.

In one run, in one temporary directory (``--dir``, default: the system temp dir, /tmp here),
for each round:

  - the bus: a real tree (store, bus, approvals) on a fresh sqlite file; ``--senders`` threads
    each ask ``Send`` ``--messages`` times (the ask returns after the commit), while a consumer
    is woken by ``MailArrived``, claims everything queued for its turn and acks it. The rate is
    messages / the time from the first send to the last ack: send → commit → deliver → ack.
  - the ceiling the issue names — "the raw insert rate at 16 concurrent senders": ``--senders``
    threads, each on its own apsw connection, inserting into the same schema with the same
    pragmas (WAL, ``synchronous=FULL``), one commit per insert;
  - two single-writer references: ``hive_actors.store.raw.raw_insert_messages`` with
    ``batch=1`` (one commit, one fsync, per message) and ``batch=16`` (one commit per 16 — the
    group-commit ideal, with no actor, no validation, no events and no claim/ack hand-over).

Two diagnostics split the bus's cost in its parts, also per round:

  - ``bus store work``: the bus's own writes without actors, on one thread — per commit the
    ``enqueue_many`` of 16 messages (with their events) plus, in turn, a claim of everything
    queued or the ack of that claim, as the consumer does;
  - ``ask round trip``: 16 threads asking a no-op actor that has the bus's mailbox and futures
    — what the actor hand-over alone costs per message on this machine.

It prints the parameters, the disk, each rate (median of the rounds), the bus's commits and
its CPU time and context switches per message, and the ratios: bus / raw(16 concurrent writers)
(the target: >= 0.5, reached through group commit), bus / raw(batch=1) and bus / raw(batch=16)
(how far the bus is from the ideal). It asserts nothing.

    python benchmarks/bus.py [--senders 16] [--messages 250] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import apsw

from hive_actors.actor import HiveActor
from hive_actors.config import load_config
from hive_actors.protocol import Ack, Claim, MailArrived, Send, Subscribe
from hive_actors.services.bus import BusActor
from hive_actors.store import AgentState, Role, SendRequest, Store
from hive_actors.store.raw import raw_insert_messages
from hive_actors.supervisors.root import start_root
from hive_actors.testing.counting import CountingHive

TIMEOUT = 60.0
"""Deadline of every blocking call: a hung bus ends the benchmark instead of hanging it."""
SENDER, RECIPIENT = "alice", "bob"


class MailProbe(HiveActor):
    """Hands each ``MailArrived`` to the consumer thread (an actor must not block on asks)."""

    def __init__(self, inbox: queue.SimpleQueue[Any]) -> None:
        super().__init__(name="bench-mail")
        self.inbox = inbox

    def receive(self, message: Any) -> Any:
        match message:
            case MailArrived():
                self.inbox.put(message)
                return None
        return super().receive(message)


@dataclass(frozen=True)
class BusRun:
    messages: int
    sent_seconds: float
    """First send to the last send's acknowledgement (every message committed)."""
    acked_seconds: float
    """First send to the last ack (every message delivered)."""
    turns: int
    """How many claims the consumer made (the empty ones that end a wake-up included)."""
    acks: int
    commits: int
    """Commits of every store connection during the run (the bus's claims and acks ride in the
    commits of its send batches)."""
    cpu_seconds: float
    """Process CPU time (user + system) from the first send to the last ack."""
    system_seconds: float
    """The system (kernel) part of ``cpu_seconds``."""
    switches: int
    """Voluntary context switches of the process over the same span."""

    @property
    def messages_per_commit(self) -> float:
        """Messages made durable per commit (per fsync)."""
        return self.messages / max(1, self.commits)


def _register(store: Store, names: tuple[str, ...]) -> int:
    """Register (and spawn) ``names``; the last one's generation."""
    generation = 0
    for name in names:
        store.registry.register(name, role=Role.AGENT)
        generation = store.registry.spawn(name).generation
        store.registry.set_state(name, AgentState.IDLE)
    return generation


def bench_bus(state_dir: Path, senders: int, per_sender: int, body: str) -> BusRun:
    """One end-to-end run of the bus on a fresh file under ``state_dir``."""
    hive = CountingHive(load_config(None, state_dir=str(state_dir)))
    children, flags = hive.tree()
    root = start_root(children, flags, ready_timeout=TIMEOUT)
    mail: queue.SimpleQueue[Any] = queue.SimpleQueue()
    probe = MailProbe.start(mail)
    try:
        with hive.open_store() as store:
            generation = _register(store, (SENDER, RECIPIENT))
        bus = hive.directory.wait("bus", TIMEOUT)
        bus.ask(Subscribe(RECIPIENT, probe), timeout=TIMEOUT)
        total = senders * per_sender
        go = threading.Barrier(senders + 1, timeout=TIMEOUT)
        sent_at: list[float] = []
        failures: list[BaseException] = []

        def send(k: int) -> None:
            try:
                go.wait()
                for _ in range(per_sender):
                    bus.ask(Send(SENDER, RECIPIENT, body), timeout=TIMEOUT)
                sent_at.append(time.perf_counter())
            except BaseException as exc:  # reported below, never lost in a thread
                failures.append(exc)

        threads = [threading.Thread(target=send, args=(k,), name=f"sender-{k}")
                   for k in range(senders)]
        for thread in threads:
            thread.start()
        delivered = turns = acks = 0
        go.wait()
        # Read before the clock starts and after it stops: the figures' span is unchanged.
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        commits_before = hive.commits
        while delivered < total:
            mail.get(timeout=TIMEOUT)  # woken after a commit that gave bob mail
            while True:
                turns += 1
                turn = f"bench-{turns}"
                claimed = bus.ask(Claim(RECIPIENT, generation, turn), timeout=TIMEOUT)
                if not claimed:
                    break
                delivered += cast(int, bus.ask(Ack(turn), timeout=TIMEOUT))
                acks += 1
        acked = time.perf_counter()
        commits = hive.commits - commits_before
        usage = resource.getrusage(resource.RUSAGE_SELF)
        for thread in threads:
            thread.join(TIMEOUT)
        if failures:
            raise RuntimeError(f"a sender failed: {failures[0]!r}") from failures[0]
        system = usage.ru_stime - usage_before.ru_stime
        return BusRun(
            total, max(sent_at) - start, acked - start, turns, acks, commits,
            cpu_seconds=usage.ru_utime - usage_before.ru_utime + system,
            system_seconds=system,
            switches=usage.ru_nvcsw - usage_before.ru_nvcsw,
        )
    finally:
        probe.stop(block=True, timeout=TIMEOUT)
        root.stop(block=True, timeout=TIMEOUT)


def bench_store(path: Path, messages: int, body: str, batch: int) -> float:
    """``Messages.send_many`` of ``batch`` requests per call, one thread, no actor: the store's
    own share of the bus's cost (validation, savepoints, events)."""
    with Store.open(path) as store:
        _register(store, (SENDER, RECIPIENT))
        requests = [SendRequest(SENDER, RECIPIENT, body)] * batch
        start = time.perf_counter()
        for _ in range(messages // batch):
            store.messages.send_many(requests)
        return (messages // batch) * batch / (time.perf_counter() - start)


def bench_store_work(path: Path, messages: int, body: str, batch: int) -> float:
    """The bus's writes without actors, one thread: per commit ``batch`` sends and, in turn, a
    claim of everything queued or the ack of that claim (what the benchmark's consumer does)."""
    with Store.open(path) as store:
        generation = _register(store, (SENDER, RECIPIENT))
        requests = [SendRequest(SENDER, RECIPIENT, body)] * batch
        commits = messages // batch
        start = time.perf_counter()
        for k in range(commits):
            with store.db.transaction():
                store.messages.enqueue_many(requests)
                if k % 2 == 0:
                    store.messages.claim(RECIPIENT, generation, f"turn-{k}")
                else:
                    store.messages.ack(f"turn-{k - 1}")
        return commits * batch / (time.perf_counter() - start)


class NoopActor(HiveActor):
    """Answers every ask at once, through the bus's own mailbox and reply futures."""

    _create_actor_inbox = staticmethod(BusActor._create_actor_inbox)
    _create_future = staticmethod(BusActor._create_future)

    def receive(self, message: Any) -> Any:
        return None


def bench_ask(senders: int, per_sender: int) -> float:
    """Asks/s of ``senders`` threads asking a no-op actor: the hand-over alone."""
    ref = NoopActor.start()
    try:
        go = threading.Barrier(senders + 1, timeout=TIMEOUT)

        def ask() -> None:
            go.wait()
            for _ in range(per_sender):
                ref.ask(None, timeout=TIMEOUT)

        threads = [threading.Thread(target=ask, name=f"asker-{k}") for k in range(senders)]
        for thread in threads:
            thread.start()
        go.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join(TIMEOUT)
        return senders * per_sender / (time.perf_counter() - start)
    finally:
        ref.stop(block=True, timeout=TIMEOUT)


def bench_raw(path: Path, messages: int, body: str, batch: int) -> float:
    """Raw inserts/s into a fresh store file at ``path``, ``batch`` per commit."""
    with Store.open(path) as store:
        _register(store, (SENDER, RECIPIENT))
    result = raw_insert_messages(path, SENDER, RECIPIENT, [body] * messages, batch=batch)
    return result.per_second


def bench_raw_concurrent(path: Path, senders: int, per_sender: int, body: str) -> float:
    """Raw inserts/s with ``senders`` concurrent writer threads, each on its own connection
    committing every insert: the raw insert rate at that many concurrent senders."""
    with Store.open(path) as store:
        _register(store, (SENDER, RECIPIENT))
    sql = ("INSERT INTO messages (sender, recipient, kind, body, generation, created) "
           "VALUES (?, ?, 'peer', ?, 1, 0)")
    go = threading.Barrier(senders + 1)

    def writer() -> None:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            conn.set_busy_timeout(60_000)
            conn.execute("PRAGMA synchronous = FULL")
            go.wait(TIMEOUT)
            for _ in range(per_sender):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(sql, (SENDER, RECIPIENT, body))
                conn.execute("COMMIT")
        finally:
            conn.close()

    threads = [threading.Thread(target=writer) for _ in range(senders)]
    for t in threads:
        t.start()
    go.wait(TIMEOUT)
    start = time.perf_counter()
    for t in threads:
        t.join()
    return senders * per_sender / (time.perf_counter() - start)


def describe_disk(path: Path) -> str:
    """The mount that holds ``path``: device, file system type and mount point."""
    real = os.path.realpath(path)
    best = ("?", "?", "/")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, point, fstype = line.split()[:3]
                if (real == point or real.startswith(point.rstrip("/") + "/")) and len(
                    point
                ) >= len(best[2]):
                    best = (device, fstype, point)
    except OSError:
        return "unknown (no /proc/mounts)"
    return f"{best[0]} ({best[1]}) mounted on {best[2]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=16, help="concurrent sender threads")
    parser.add_argument("--messages", type=int, default=250, help="messages per sender")
    parser.add_argument("--body-bytes", type=int, default=200, help="bytes per message body")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the median is shown)")
    parser.add_argument("--dir", default=None,
                        help="where to make the temporary directory (default: system temp)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hive-bench-bus-", dir=args.dir)).resolve()
    total = args.senders * args.messages
    body = "x" * args.body_bytes
    print(f"parameters: senders={args.senders} messages/sender={args.messages} "
          f"(total {total}) body={args.body_bytes} B rounds={args.rounds} (median shown)")
    print(f"directory:  {base} on {describe_disk(base)}; sqlite WAL, synchronous=FULL")
    samples: dict[str, list[float]] = {
        "bus": [], "bus sends only": [], "store batch=16": [], "bus store work": [],
        "ask round trip": [], "raw batch=1": [], "raw batch=16": [], "raw 16 writers": []}
    runs: list[BusRun] = []
    try:
        for n in range(args.rounds):  # interleaved, so drift hits every contender alike
            run = bench_bus(base / f"bus-{n}", args.senders, args.messages, body)
            samples["bus"].append(run.messages / run.acked_seconds)
            samples["bus sends only"].append(run.messages / run.sent_seconds)
            runs.append(run)
            samples["store batch=16"].append(bench_store(base / f"store-{n}.db", total, body, 16))
            samples["bus store work"].append(
                bench_store_work(base / f"work-{n}.db", total, body, 16))
            samples["ask round trip"].append(bench_ask(args.senders, args.messages))
            samples["raw batch=1"].append(bench_raw(base / f"raw1-{n}.db", total, body, 1))
            samples["raw batch=16"].append(bench_raw(base / f"raw16-{n}.db", total, body, 16))
            samples["raw 16 writers"].append(
                bench_raw_concurrent(base / f"rawc-{n}.db", args.senders, args.messages, body))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rate = {name: statistics.median(values) for name, values in samples.items()}
    labels = {
        "bus": "send -> commit -> claim -> ack",
        "bus sends only": "send -> commit (acknowledged)",
        "store batch=16": "Messages.send_many of 16, 1 thread, no actor",
        "bus store work": "16 sends + a claim or an ack per commit, 1 thread, no actor",
        "ask round trip": f"{args.senders} threads asking a no-op actor, bus mailbox",
        "raw batch=1": "one INSERT per commit, 1 writer",
        "raw batch=16": "16 INSERTs per commit, 1 writer",
        "raw 16 writers": f"{args.senders} concurrent writers, one INSERT per commit each",
    }
    for name, value in rate.items():
        print(f"{name:15s} {value:10,.0f} msg/s   ({labels[name]}; {1e6 / value:.1f} us/msg)")
    print(f"bus group commit: {statistics.median(r.messages_per_commit for r in runs):.1f} "
          "messages per commit (median; claims and acks ride in the same commits)")
    print(f"bus cost: {statistics.median(r.cpu_seconds / r.messages for r in runs) * 1e6:.1f} "
          "us CPU per message, of which "
          f"{statistics.median(r.system_seconds / r.messages for r in runs) * 1e6:.1f} in the "
          f"kernel; {statistics.median(r.switches / r.messages for r in runs):.1f} voluntary "
          "context switches per message (medians)")
    ratio1 = rate["bus"] / rate["raw batch=1"]
    ratio16 = rate["bus"] / rate["raw batch=16"]
    ratioc = rate["bus"] / rate["raw 16 writers"]
    print(f"ratio bus/raw({args.senders} concurrent writers): {ratioc:.3f}   target >= 0.5 "
          f"({'met' if ratioc >= 0.5 else 'NOT met'}): the raw insert rate at "
          f"{args.senders} concurrent senders")
    print(f"ratio bus/raw(batch=1):  {ratio1:.3f}")
    print(f"ratio bus/raw(batch=16): {ratio16:.3f}   (the group-commit ideal: one commit per "
          "16 messages, no actor, no events, no hand-over)")

if __name__ == "__main__":
    main()
