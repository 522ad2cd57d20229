"""How many idle agents fit on this host: N agents on the process backend, measured at rest.

One hive (``hive serve`` as a subprocess, the process backend, the loopback model server), with
``--agents`` agents registered in its file while it is down. The daemon is started and, once
every agent is running (idle), measured:

- the time to start them all (daemon start to the last agent idle), and each agent's keeper
  start (its ``/proc`` start time, after the daemon's);
- the daemon's RSS and PSS, threads, open file descriptors (and its soft limit), and idle CPU
  (``utime + stime`` from ``/proc/<pid>/stat`` over ``--idle-seconds``);
- every agent's memory: the PSS (``/proc/<pid>/smaps_rollup``) of each process of its keeper's
  process group, summed per agent, printed per agent;
- the verdict: how many idle agents fit in this host's memory (``MemAvailable`` plus what the
  hive holds now, over the measured cost of one agent, the daemon's share included), how many
  the daemon's descriptor limit leaves room for, and how many fit in 4 GB.

Nothing leaves loopback. ``--quiet`` prints the per-agent table only as a summary.

    python benchmarks/scale.py [--agents 1000] [--idle-seconds 10] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hive_actors.fdlimit import mem_available
from hive_actors.store import Role
from tests.support.daemon import DaemonProcess, RecordingModel, wait_until

RUNNING = ("idle", "busy")
TICK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024
TARGET_BYTES = 4 * 1024 * MB
_KEEPER = re.compile(r"hive_actors\.containers\.keeper keep --name (\S+)")


def names(count: int) -> list[str]:
    return [f"agent{i:04d}" for i in range(count)]


def stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` from field 3 (state) on: the command name may hold spaces."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2:].split()


def cpu_ticks(pid: int) -> int:
    fields = stat_fields(pid)
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks after boot (field 22)."""
    return int(stat_fields(pid)[19])


def pgrp(pid: int) -> int:
    return int(stat_fields(pid)[2])


def status_value(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pss_bytes(pid: int) -> int:
    """The process's proportional set size (shared pages divided among their users)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_soft(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


@dataclass
class AgentUsage:
    """One agent's processes (its keeper's group) and their memory."""

    name: str
    keeper: int
    started_s: float
    """Keeper start, seconds after the daemon's process started."""
    pids: list[int]
    pss: int


def agent_usage(daemon: DaemonProcess) -> list[AgentUsage]:
    """Every agent's keeper group in the daemon's session, with its PSS summed."""
    assert daemon.proc is not None
    daemon_start = start_ticks(daemon.proc.pid)
    keepers: dict[int, str] = {}
    groups: dict[int, list[int]] = defaultdict(list)
    for pid, cmd in daemon.session_processes():
        try:
            group = pgrp(pid)
        except (OSError, IndexError):
            continue
        groups[group].append(pid)
        match = _KEEPER.search(cmd)
        if match:
            keepers[pid] = match.group(1)
    usage = []
    for keeper, name in sorted(keepers.items(), key=lambda kv: kv[1]):
        pids = sorted(groups.get(keeper, [keeper]))
        total = 0
        for pid in pids:
            try:
                total += pss_bytes(pid)
            except OSError:
                continue  # it ended while we looked
        started = (start_ticks(keeper) - daemon_start) / TICK
        usage.append(AgentUsage(name, keeper, started, pids, total))
    return usage


def idle_cpu(pid: int, seconds: float) -> float:
    """The process's CPU over ``seconds`` of wall time, in % of one core."""
    t0, c0 = time.monotonic(), cpu_ticks(pid)
    threading.Event().wait(seconds)
    t1, c1 = time.monotonic(), cpu_ticks(pid)
    return 100.0 * (c1 - c0) / TICK / (t1 - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="how long the daemon's idle CPU is sampled")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--quiet", action="store_true", help="no per-agent table")
    args = parser.parse_args(argv)
    agents = names(args.agents)
    print(f"scale benchmark: {args.agents} idle agents on the process backend "
          f"(host: {os.cpu_count()} cores, MemAvailable {(mem_available() or 0) / MB:.0f} MB)")
    with tempfile.TemporaryDirectory(prefix="hive-scale-") as tmp, RecordingModel() as model:
        daemon = DaemonProcess(Path(tmp), model, log_level="warning")
        # The default span (900 ports) would leave agents beyond it without a page.
        base = 20000 + os.getpid() % 10000
        text = re.sub(r"agent_port_base = \d+", f"agent_port_base = {base}",
                      daemon.config_path.read_text())
        text = text.replace("agent_port_span = 900",
                            f"agent_port_span = {max(900, args.agents + 100)}")
        daemon.config_path.write_text(text)
        try:
            daemon.register({name: Role.AGENT for name in agents})
            t0 = time.monotonic()
            daemon.start()
            daemon.wait_ready(args.timeout)
            ready = time.monotonic() - t0

            def all_running() -> bool:
                rows = daemon.agents()
                return all(rows.get(a, {}).get("state") in RUNNING for a in agents)

            wait_until(all_running, args.timeout, f"{len(agents)} agents running",
                       interval=0.5, describe=daemon.describe)
            started = time.monotonic() - t0
            assert daemon.proc is not None
            pid = daemon.proc.pid
            threading.Event().wait(2.0)  # let the start's stragglers (page binds, logs) end
            cpu = idle_cpu(pid, args.idle_seconds)
            rss = status_value(pid, "VmRSS") * 1024
            daemon_pss = pss_bytes(pid)
            threads = status_value(pid, "Threads")
            fds = fd_count(pid)
            soft = nofile_soft(pid)
            usage = agent_usage(daemon)
            available = mem_available() or 0
            errors = [line for line in daemon.log_text().splitlines() if " ERROR " in line]
            t_stop = time.monotonic()
            code = daemon.terminate(timeout=args.timeout)
            stopped = time.monotonic() - t_stop
        finally:
            daemon.close()

    if not args.quiet:
        print(f"{'agent':<10} {'keeper':>8} {'started s':>10} {'procs':>5} {'PSS MB':>7}")
        for u in usage:
            print(f"{u.name:<10} {u.keeper:>8} {u.started_s:>10.2f} {len(u.pids):>5} "
                  f"{u.pss / MB:>7.2f}")
    n = max(1, len(usage))
    agents_pss = sum(u.pss for u in usage)
    per_agent = [u.pss for u in usage] or [0]
    print(f"\nstart: daemon ready after {ready:.2f} s, all {args.agents} agents running after "
          f"{started:.2f} s ({started / max(1, args.agents) * 1000:.1f} ms per agent); "
          f"{len(usage)} keepers found")
    print(f"daemon: RSS {rss / MB:.1f} MB, PSS {daemon_pss / MB:.1f} MB, {threads} threads, "
          f"{fds} file descriptors (soft limit {soft}; {fds / n:.2f} per agent), "
          f"idle CPU {cpu:.2f} % of one core over {args.idle_seconds:g} s")
    print(f"agents: PSS {agents_pss / MB:.1f} MB in all; per agent mean "
          f"{statistics.fmean(per_agent) / MB:.2f} MB, min {min(per_agent) / MB:.2f}, "
          f"max {max(per_agent) / MB:.2f}")
    print(f"stop: SIGTERM to exit {stopped:.2f} s, exit status {code}"
          + ("" if code == 0 else " (NOT an orderly stop: see the daemon's log)"))
    if errors:
        print(f"daemon log: {len(errors)} ERROR line(s), first: {errors[0][:300]}")
    # One agent's cost: its own processes plus its share of the daemon.
    cost = (agents_pss + daemon_pss) / n
    held = agents_pss + daemon_pss
    fit = int((available + held) // cost) if cost else 0
    in_target = int(TARGET_BYTES // cost) if cost else 0
    by_fds = "unlimited" if soft == "unlimited" else str(int(int(soft) / max(fds / n, 1e-9)))
    print(f"verdict: one idle agent costs {cost / MB:.2f} MB (its processes + its share of the "
          f"daemon); this host (MemAvailable {available / MB:.0f} MB + {held / MB:.0f} MB the "
          f"hive holds) fits about {fit} idle agents; the daemon's descriptor limit leaves room "
          f"for about {by_fds}; 4 GB holds about {in_target}")
    return 0 if len(usage) == args.agents and not errors and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
