"""Resources level off: 100 real turns leave the daemon's descriptors and threads where they were.

The hive runs in this process (real claude CLI, process backend, loopback model), so
``/proc/self`` is the daemon's. The dashboard's API and the MCP endpoint run their work on
anyio worker threads, which exit after 10 s idle in a real daemon and come back with the next
request; here they exit after 50 ms, so 100 turns see the thread churn of hours. A read
connection kept per worker thread (the leak of issue 14) grows the descriptors on hive.db by two
a request; pooled connections keep them level.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import anyio._backends._asyncio as anyio_asyncio
import pytest

from hive_actors.store.pool import DEFAULT_MAX_IDLE
from tests.support.hive import running_hive
from tests.support.resources import AGENTS, Sample, TurnDriver, sample

pytestmark = pytest.mark.slow  # the real claude CLI, turn after turn (see pyproject.toml)

TURNS = 100
WARM_UP = 15
"""Turns before the baseline: the pools, the agents' sessions and caches are up by then."""
DB_FD_SLACK = 2 * 2 * DEFAULT_MAX_IDLE
"""The pools filling up (the gateway's reads and the MCP operations: at most
``DEFAULT_MAX_IDLE`` idle connections each, a file and a WAL descriptor apiece) — a bound,
where the leak grew two descriptors a request without one."""
FD_SLACK = 6 + DB_FD_SLACK
"""Descriptors a quiet hive may hold more than at the baseline: keep-alive sockets that the
HTTP client or a CLI left for the server to close, and the pools filling up."""
THREAD_SLACK = 4
"""Worker threads not yet retired (an idle anyio or executor thread)."""


def _level(samples: list[Sample], field: str) -> tuple[float, int]:
    """The baseline (median of the first samples after the warm-up) and the most seen after
    the warm-up."""
    values = [getattr(s, field) for s in samples]
    return statistics.median(values[:3]), max(values)


def test_descriptors_and_threads_level_off_over_100_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker idle for 50 ms retires (10 s in anyio): each request may land on a new thread.
    monkeypatch.setattr(anyio_asyncio.WorkerThread, "MAX_IDLE_TIME", 0.05)
    with running_hive(tmp_path, AGENTS) as (daemon, _root, _model, _events):
        db = daemon.config.db_path
        samples: list[Sample] = []
        with TurnDriver(daemon, list(AGENTS)) as driver:
            while driver.turns < TURNS:
                driver.round()
                if driver.turns >= WARM_UP:
                    samples.append(sample(db, driver.turns))
            assert driver.outcomes.get("ok", 0) >= TURNS, driver.outcomes
    assert len(samples) >= 8, [s.turns for s in samples]
    report = "\n".join(
        f"{s.turns:4d} turns: fds {s.fds}, on hive.db {s.db_fds}, threads {s.threads}, "
        f"rss {s.rss_kb // 1024} MB" for s in samples
    )
    for field, slack in (("fds", FD_SLACK), ("db_fds", DB_FD_SLACK), ("threads", THREAD_SLACK)):
        base, most = _level(samples, field)
        # Bounded, not merely slow: what the pools may hold is the slack; a leak (two
        # descriptors a request, a thread a turn) passes it within a few dozen turns.
        assert most <= base + slack, f"{field} grew past {base} + {slack}:\n{report}"
