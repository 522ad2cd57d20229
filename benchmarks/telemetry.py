"""Telemetry cost: a ``/metrics`` scrape of a 200-agent hive, and a stats query over a million rows.

In one run, in one temporary directory (``--dir``, default: the system temp dir):

1. **Scrape.** A hive file with ``--agents`` agents (states spread over the lifecycle, inboxes,
   pending approvals and questions, a day of turns each, restart events), a real StatsActor
   that loads the totals from it, and a real supervisor registered as ``agents`` with one actor
   per agent (so the scrape asks it for statistics and reads every mailbox). It times
   ``generate_latest(registry)`` in-process and ``GET /metrics`` over HTTP (uvicorn on
   127.0.0.1, httpx). Target: under 50 ms.
2. **Query.** The same file's stats table filled to ``--rows`` rows (``--query-agents`` agents x
   20 keys, evenly spaced over two days). One agent, ``--keys`` keys, the last ``--hours``:
   the ceiling is the raw sqlite query that fetches those rows (``SELECT ts, key, value ...``
   on the same index, no alignment, no validation, no encoding); against it, what the handler
   does (validate the parameters, check the agent, the aligned ``GROUP BY ts`` query, the JSON
   body — written by sqlite), the same answer as Python lists, and ``GET /api/stats`` end to
   end over HTTP next to an empty route's round trip. Target: API <= 1.5 x raw.

It prints the parameters, each figure (median and p95 of ``--rounds`` runs, milliseconds; the
query's in-process figures are 4 x ``--rounds`` runs taken in turn, so that a shared machine's
drifting load weighs on each alike) and the ratios, the one the target is about last, on a line
of its own (``ratio API / raw = ...``). It asserts nothing.

    python benchmarks/telemetry.py [--agents 200] [--rows 1000000] [--rounds 30] [--dir DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hive_actors import lifecycle
from hive_actors.actor import HiveActor
from hive_actors.config import HiveConfig
from hive_actors.hive import Hive
from hive_actors.protocol import TurnRecord
from hive_actors.stats import FlushStats, HiveTelemetry, StatsConfig
from hive_actors.stats.exposition import encode_text
from hive_actors.stats.query import answer, answer_json, parse_query, query_json_sql
from hive_actors.store import AgentState, ApprovalKind, MessageKind, Role, Store
from hive_actors.store.events import EventKind
from hive_actors.supervisors import ChildSpec, Supervisor, SupervisorFlags

TIMEOUT = 120.0
"""Deadline of every blocking call."""
DAY = 86400.0
KEYS = [
    "turns", "turn.duration_s", "turn.tool_calls", "tool.Bash", "tool.Read", "tool.Edit",
    "received", "sent", "tokens.input", "tokens.output", "cost_usd", "inbox.depth",
    "inbox.depth_max", "inbox.oldest_age_s", "since_last_turn_s", "notes.bytes",
    "turn.outcome.ok", "received.peer", "sent.peer", "turn.permission_denials",
]


async def _pong(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


class Idle(HiveActor):
    """A stand-in agent actor: it only has a mailbox."""

    def receive(self, message: Any) -> Any:
        return None


def names(count: int, prefix: str = "a") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(count)]


def timed(fn: Callable[[], Any], rounds: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def interleaved(fns: list[Callable[[], Any]], rounds: int, warmup: int = 3) -> list[list[float]]:
    """Time each of ``fns`` once per round, in turn (see :func:`timed`)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    seconds: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, seconds, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return seconds


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {statistics.median(samples) * 1e3:8.2f} ms   p95 {p95 * 1e3:8.2f} ms"


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """uvicorn on 127.0.0.1, a free port, in a thread; yields the base URL."""
    import socket

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says it is TCP; without it every small response waits ~40 ms for a
    # delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = threading.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            ready.set()

    server = Server(uvicorn.Config(app, log_level="warning", ws="none", http="h11"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not ready.wait(TIMEOUT):
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()


def populate_hive(store: Store, agents: list[str], now: float) -> None:
    """Agents in every state, inboxes, approvals, questions, restart events."""
    store.registry.register("manager", role=Role.MANAGER)
    for name in agents:
        store.registry.register(name)
    cycle = [AgentState.IDLE, AgentState.BUSY, AgentState.IDLE, AgentState.WAITING_OPERATOR]
    for i, name in enumerate(agents):
        store.registry.spawn(name)
        store.registry.set_state(name, AgentState.IDLE)
        if cycle[i % 4] is AgentState.BUSY:
            store.registry.set_state(name, AgentState.BUSY)
        elif cycle[i % 4] is AgentState.WAITING_OPERATOR:
            store.questions.ask(name, "may I?")
    for i, name in enumerate(agents[: len(agents) // 2]):
        for j in range(i % 5):
            store.messages.send("manager", name, f"job {j}", MessageKind.MANAGER)
    for i in range(5):
        store.approvals.request(ApprovalKind.SPAWN, f"new{i}", requested_by="manager")
    store.events.record_many(
        [(EventKind.AGENT_RESTARTING, name, {"reason": "boom"}) for name in agents[::7]]
    )


def turn_history(agents: list[str], now: float, turns_each: int) -> list[tuple[Any, ...]]:
    """A day of turns per agent, as stats rows (what the actor would have written)."""
    from hive_actors.harness.events import Tokens, TurnEnd
    from hive_actors.stats.series import turn_rows

    rows: list[tuple[Any, ...]] = []
    for i, name in enumerate(agents):
        for t in range(turns_each):
            ended = now - DAY + (t + 1) * DAY / (turns_each + 1)
            end = TurnEnd(
                outcome="ok" if t % 10 else "error",
                duration_s=5.0 + (t * 7 + i) % 300,
                tool_calls={"Bash": t % 4, "Read": 2, "mcp__hive__send": 1, f"mcp__x{t % 3}__y": 1},
                tokens=Tokens(1000, 200, 5000, 100),
                cost_usd=0.02,
                model="claude-sonnet-4-5" if t % 2 else "claude-haiku-4-5",
            )
            rows.extend(turn_rows(name, ended - 10, ended, end, {"peer": 1}, None, {"peer": 1}))
    return rows


def filler(agents: list[str], now: float, total: int) -> Iterator[tuple[str, float, str, float]]:
    """``total`` rows: every agent x every key, evenly spaced over two days."""
    per_series = max(1, total // (len(agents) * len(KEYS)))
    step = 2 * DAY / per_series
    for name in agents:
        for key in KEYS:
            for n in range(per_series):
                yield (name, now - 2 * DAY + n * step, key, float(n % 17))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--turns", type=int, default=24, help="turns per agent in the history")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--query-agents", type=int, default=50)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="hive-bench-telemetry-", dir=args.dir))
    print("telemetry benchmark")
    version = ".".join(map(str, sys.version_info[:3]))
    print(f"  dir {root}  cpus {os.cpu_count()}  python {version}")
    print(f"  agents {args.agents}  turns/agent {args.turns}  rows {args.rows}  "
          f"query: 1 of {args.query_agents} agents, {args.keys} keys, last {args.hours:g} h  "
          f"rounds {args.rounds}")
    now = time.time()
    hive = Hive(HiveConfig(state_dir=str(root / "hive")))
    store = hive.open_store()
    refs: list[Any] = []
    telemetry: HiveTelemetry | None = None
    try:
        agents = names(args.agents)
        populate_hive(store, agents, now)
        history = turn_history(agents, now, args.turns)
        with store.db.transaction():
            store.db.connection.executemany(
                "INSERT INTO stats (agent, ts, key, value) VALUES (?, ?, ?, ?)", history
            )
        telemetry = HiveTelemetry(hive, StatsConfig(scrape_timeout=TIMEOUT))
        stats = telemetry.child_spec().start()
        refs.append(stats)
        stats.tell(TurnRecord(agents[0], "t-now", now - 3, now, None, {}, "bench"))
        stats.ask(FlushStats(), timeout=TIMEOUT)  # behind the totals load
        supervisor = Supervisor.start(
            [ChildSpec(a, functools.partial(Idle.start, name=a)) for a in agents],
            SupervisorFlags("one_for_one", intensity=10, period=60),
            name="agents",
        )
        refs.append(supervisor)
        if not lifecycle.wait_ready(supervisor, TIMEOUT):  # every agent actor is up
            raise RuntimeError(f"the agents supervisor did not start within {TIMEOUT:g} s")
        hive.directory.register("agents", supervisor)
        app = Starlette(routes=telemetry.routes())

        body = generate_latest(telemetry.registry)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        print(f"\n1. /metrics scrape: {series} samples, {len(body) / 1024:.0f} KiB")
        registry = telemetry.registry
        collect = timed(lambda: list(registry.collect()), args.rounds)
        fast = timed(lambda: encode_text(registry), args.rounds)
        library = timed(lambda: generate_latest(registry), args.rounds)
        print(f"   collect only (store, supervisor, totals)  {ms(collect)}")
        print(f"   collect + encode_text (served)            {ms(fast)}")
        print(f"   collect + generate_latest (library)       {ms(library)}")
        with serve(app) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as client:
            over_http = timed(lambda: client.get("/metrics").raise_for_status(), args.rounds)
        print(f"   GET /metrics over HTTP                    {ms(over_http)}")
        print(f"   target < 50 ms: median over HTTP is {statistics.median(over_http) * 1e3:.1f} ms "
              f"({statistics.median(over_http) / 0.050:.2f} x the target)")

        # -- 2. the query ------------------------------------------------------------------------
        qagents = names(args.query_agents, prefix="q")
        for name in qagents:
            store.registry.register(name)
        load_start = time.perf_counter()
        with store.db.transaction():
            store.db.connection.executemany(
                "INSERT INTO stats (agent, ts, key, value) VALUES (?, ?, ?, ?)",
                filler(qagents, now, args.rows),
            )
        total = store.db.value("SELECT count(*) FROM stats")
        print(f"\n2. stats query: table of {total} rows (filled in "
              f"{time.perf_counter() - load_start:.1f} s)")
        target = qagents[len(qagents) // 2]
        keys = KEYS[: args.keys]
        since = now - args.hours * 3600
        marks = ", ".join("?" for _ in keys)
        raw_sql = (
            f"SELECT ts, key, value FROM stats WHERE agent = ? AND key IN ({marks}) AND ts >= ?"
        )
        conn = store.db.connection
        raw_rows = len(conn.execute(raw_sql, (target, *keys, since)).fetchall())
        params = {"agent": target, "since": repr(since), "keys": ",".join(keys)}
        shaped = json.loads(answer_json(store, params, now))
        assert shaped == json.loads(json.dumps(answer(store, params, now)))
        print(f"   {raw_rows} rows -> {len(shaped['data'][0])} timestamps x {len(keys)} series")
        query = parse_query(params, now=now, known_agent=lambda name: True)
        aligned_sql, aligned_params = query_json_sql(query)
        # Interleaved, not one block each: on a shared machine the load drifts between blocks
        # of sub-millisecond calls, and the ratio would measure the drift.
        raw, aligned, core, objects = interleaved(
            [
                lambda: conn.execute(raw_sql, (target, *keys, since)).fetchall(),
                lambda: conn.execute(aligned_sql, aligned_params).get,
                lambda: answer_json(store, params, now),
                lambda: answer(store, params, now),
            ],
            args.rounds * 4,
        )
        with serve(Starlette(routes=[*telemetry.routes(), Route("/ping", _pong)])) as base, \
                httpx.Client(base_url=base, timeout=TIMEOUT) as client:
            client.get("/api/stats", params=params).raise_for_status()
            ping = timed(lambda: client.get("/ping").raise_for_status(), args.rounds)
            over_http = timed(
                lambda: client.get("/api/stats", params=params).raise_for_status(), args.rounds
            )
        base_ms = statistics.median(raw)
        print(f"   raw sqlite query (ceiling)              {ms(raw)}")
        print(f"   the API's own SQL, run raw              {ms(aligned)}   "
              f"{statistics.median(aligned) / base_ms:.2f} x raw")
        print(f"   API (validate, align, JSON in sqlite)   {ms(core)}   "
              f"{statistics.median(core) / base_ms:.2f} x raw")
        print(f"   the same as Python lists (run_query)    {ms(objects)}   "
              f"{statistics.median(objects) / base_ms:.2f} x raw")
        print(f"   GET /api/stats over HTTP                {ms(over_http)}   "
              f"{statistics.median(over_http) / base_ms:.2f} x raw")
        print(f"   GET /ping (empty route, HTTP baseline)  {ms(ping)}")
        print("   target: API <= 1.5 x raw")
        print(f"   ratio API / raw = {statistics.median(core) / base_ms:.2f} (target <= 1.50)")
    finally:
        for ref in reversed(refs):
            if ref.is_alive():
                ref.stop(block=True, timeout=TIMEOUT)
        if telemetry is not None:
            telemetry.close()
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
