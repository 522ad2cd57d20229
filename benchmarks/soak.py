"""Soak: thousands of ordinary turns, and whether the daemon's resources level off.

A manager and four agents (the real claude CLI in process containers, against the loopback
model server run as a separate process so its request log is not counted) get rounds of
operator messages through the dashboard's API; every other round each agent also calls
``mcp__hive__send`` (the MCP endpoint), so the next agent has a turn of its own. The daemon
runs in this process: every ``--every`` turns the script prints this process's RSS, open
descriptors (all, and those on hive.db and its WAL), threads, and hive.db's size (file + WAL)
with the bytes it grew per turn since the last line. The baseline is the first line (after
``--warm-up`` turns): the last line's ratio against it should stay near 1.0, and bytes per
turn fall to about 0 once the store's retention caps are reached.

API and MCP work runs on anyio worker threads, which retire after 10 s idle in a real daemon;
``--worker-idle`` (default 0.05 s) makes them retire between requests, as hours of traffic
would.

    python benchmarks/soak.py [--turns 2000] [--every 500] [--max-events 20000]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio._backends._asyncio as anyio_asyncio

from hive_actors.config import StoreConfig
from hive_actors.daemon import Daemon
from tests.support.hive import hive_config, start_tree
from tests.support.resources import AGENTS, Sample, TurnDriver, sample


@dataclass(frozen=True)
class _Model:
    """The model server's address (running_hive's ``server`` needs only ``url``)."""

    url: str


def _start_model() -> tuple[subprocess.Popen[str], _Model]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hive_actors.modelserver"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("ANTHROPIC_BASE_URL="):
        proc.kill()
        raise SystemExit(f"soak: the model server did not start (said {line!r})")
    return proc, _Model(line.split("=", 1)[1])


def _line(s: Sample, prev: Sample | None, elapsed: float) -> str:
    grew = ""
    if prev is not None and s.turns > prev.turns:
        grew = f"{(s.db_bytes - prev.db_bytes) / (s.turns - prev.turns):9.0f}"
    else:
        grew = f"{'-':>9}"
    return (
        f"{s.turns:6d} {elapsed:8.0f} {s.rss_kb / 1024:7.1f} {s.fds:5d} {s.db_fds:7d} "
        f"{s.threads:7d} {s.db_bytes / 1024:9.0f} {grew}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000, help="turns to drive (default 2000)")
    parser.add_argument("--every", type=int, default=500, help="print a line every N turns")
    parser.add_argument("--warm-up", type=int, default=50, help="turns before the baseline")
    parser.add_argument("--max-events", type=int, default=StoreConfig.max_events,
                        help="[store] max_events for the run")
    parser.add_argument("--max-messages", type=int, default=StoreConfig.max_messages,
                        help="[store] max_messages for the run")
    parser.add_argument("--prune-interval", type=float, default=StoreConfig.prune_interval,
                        help="[store] prune_interval for the run (seconds)")
    parser.add_argument("--worker-idle", type=float, default=0.05,
                        help="seconds an idle anyio worker thread lives (anyio: 10)")
    parser.add_argument("--state", type=Path, default=None, help="state dir (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    anyio_asyncio.WorkerThread.MAX_IDLE_TIME = args.worker_idle
    print(
        f"soak: {args.turns} turns, {len(AGENTS)} agents ({', '.join(AGENTS)}), a line every "
        f"{args.every} turns, baseline after {args.warm_up}; [store] max_events="
        f"{args.max_events} max_messages={args.max_messages} prune_interval="
        f"{args.prune_interval:g}s; anyio worker idle {args.worker_idle:g}s"
    )
    proc, model = _start_model()
    with tempfile.TemporaryDirectory(prefix="hive-soak-") as tmp:
        state = args.state or Path(tmp)
        config = hive_config(state, model.url)
        config = replace(config, store=replace(
            config.store, max_events=args.max_events, max_messages=args.max_messages,
            prune_interval=args.prune_interval,
        ))
        daemon = Daemon(config, api_key="loopback-test-key")
        root = start_tree(daemon, AGENTS)
        start = time.monotonic()
        try:
            db = daemon.config.db_path
            print(f"{'turns':>6} {'secs':>8} {'rss MB':>7} {'fds':>5} {'hive.db':>7} "
                  f"{'threads':>7} {'db KiB':>9} {'B/turn':>9}")
            with TurnDriver(daemon, list(AGENTS), timeout=300.0) as driver:
                while driver.turns < args.warm_up:
                    driver.round()
                base = prev = sample(db, driver.turns)
                print(_line(base, None, time.monotonic() - start) + "   (baseline)")
                mark = driver.turns + args.every - driver.turns % args.every
                while driver.turns < args.turns:
                    driver.round()
                    if driver.turns >= mark or driver.turns >= args.turns:
                        now = sample(db, driver.turns)
                        print(_line(now, prev, time.monotonic() - start), flush=True)
                        prev = now
                        mark += args.every
                outcomes = driver.outcomes
            with daemon.hive.open_store() as store:
                rows = {t: store.db.value(f"SELECT count(*) FROM {t}")
                        for t in ("events", "messages", "stats")}
        finally:
            root.stop(block=True, timeout=120)
            daemon.close()
            proc.terminate()
            proc.wait(30)
    per_turn = (prev.db_bytes - base.db_bytes) / max(1, prev.turns - base.turns)
    print(
        f"outcomes {outcomes}; last vs baseline: rss x{prev.rss_kb / base.rss_kb:.2f}, "
        f"fds x{prev.fds / base.fds:.2f}, on hive.db x{prev.db_fds / max(1, base.db_fds):.2f}, "
        f"threads x{prev.threads / base.threads:.2f}; hive.db {per_turn:.0f} B/turn overall"
    )
    print("rows kept: " + ", ".join(f"{t} {n}" for t, n in rows.items())
          + " (stats: raw rows for [stats] retention's 48 h, then downsampled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
