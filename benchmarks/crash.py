"""What an operator feels of a crash: how soon the agent is back, and what a storm of them costs.

Everything runs in this process as the daemon does (``Daemon`` and its whole supervision tree:
store, bus, approvals, stats, agents, gateway), on the **process backend** with real keeper
processes: a container's death is a ``kill -9`` of its keeper, which the backend's reaper
reports; the AgentActor dies of the ``ContainerCrash`` and the agents' supervisor decides on the
``Down`` in its own thread — the one crash route (the stand-in systemd's D-Bus signal joins the
same route one hop earlier, at the CrashWatcherActor; it is not measured here). A probe on the
agents' supervisor (``on_event``) stamps its child events as it issues them.

- **bare start** (the baseline): the same backend, a separate ``ProcessBackend`` and container,
  ``start()`` with nothing else (then ``stop()``, not measured).
- **recovery**: one agent (no manager: the notice goes to the operator's log), backoff 0; from
  the ``kill -9`` of its keeper to the supervisor's ``started`` of the new AgentActor — its
  container up, its registry state ``idle`` (checked each time, with its epoch one higher), its
  MCP token issued and its inbox subscribed: the next turn can start. Also printed: the kill to
  the restart issued (``restarting``). The two parts take turns in ``--rounds`` rounds, so that a
  noisy spell of a shared machine weighs on both alike. Ratio: recovery / bare start (target ≤
  1.2), medians and p99s.
- **storm**: ``--agents`` agents (default 200, no manager) running idle; their keepers are
  killed evenly over ``--spread-ms`` (default 100 ms; 0: all at once). Every crash must get one
  restart decision (``restarting``), none lost, none doubled, and no other child event than the
  restarts and the new starts (counted per agent until every agent is back and
  ``--quiet-s`` more seconds). Printed: the p50/p99/max from each kill to its restart issued
  (target p99 ≤ 50 ms on a 2-core machine), the decisions' span and the supervisor's time per
  decision, and the daemon's CPU (``os.times``: user + system of this process, which is the
  daemon; the keepers are other processes) from the first kill to the last decision and to
  every agent back. Backoff: the hive's default (``[supervision]``, 1 s ± 20 %), or
  ``--storm-backoff 0``.

The hive's state dir is on disk (``synchronous=FULL``: each decision's records are fsynced) as
an operator's is; ``--shm`` puts it on ``/dev/shm`` to see what the fsyncs cost.

    python benchmarks/crash.py [--recoveries 40] [--rounds 4] [--agents 200] [--spread-ms 100]
                               [--storm-backoff default|0] [--shm] [--skip-storm]
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pykka

from hive_actors import heap
from hive_actors.agent.supervisor import AgentsSupervisor
from hive_actors.config import (
    HiveConfig,
    ModelConfig,
    SupervisionConfig,
    WebConfig,
)
from hive_actors.containers.base import ContainerSpec
from hive_actors.containers.process import ProcessBackend
from hive_actors.daemon import Daemon
from hive_actors.errors import HiveError
from hive_actors.store import AgentState, Role
from hive_actors.supervisors.messages import ChildEvent, CountChildren
from hive_actors.supervisors.root import start_root
from hive_actors.supervisors.spec import ChildSpec, SupervisorFlags

TIMEOUT = 60.0
AGENT = "alice"


# -- the probe on the agents' supervisor ---------------------------------------------------------


@dataclass
class Probe:
    """The agents' supervisor's child events, stamped as it issues them (in its thread)."""

    stamps: queue.SimpleQueue[tuple[str, str, float]] = field(default_factory=queue.SimpleQueue)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(child, kind) → how many so far; written only in the supervisor's thread."""

    def __call__(self, event: ChildEvent) -> None:
        now = time.monotonic()  # first thing: the moment the supervisor issues the event
        self.counts[(event.child, event.kind)] += 1
        self.stamps.put((event.child, event.kind, now))

    def wait(self, kind: str, child: str | None = None, timeout: float = TIMEOUT
             ) -> tuple[str, float]:
        """The next event of ``kind`` (of ``child``, if given); the others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                who, what, when = self.stamps.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise HiveError(f"benchmark: no {kind!r} child event within {timeout:g} s"
                                ) from None
            if what == kind and (child is None or who == child):
                return who, when


class StampedBackend(ProcessBackend):
    """The process backend, stamping when each container start begins and ends (monotonic)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.starts: queue.SimpleQueue[tuple[str, float, float]] = queue.SimpleQueue()

    def start(self, name: str) -> None:
        t0 = time.monotonic()
        super().start(name)
        self.starts.put((name, t0, time.monotonic()))

    def last_start(self, name: str) -> tuple[float, float]:
        """The latest start of ``name`` stamped so far (others are dropped)."""
        found: tuple[float, float] | None = None
        while True:
            try:
                who, t0, t1 = self.starts.get_nowait()
            except queue.Empty:
                break
            if who == name:
                found = (t0, t1)
        if found is None:
            raise HiveError(f"benchmark: no container start of {name} was stamped")
        return found


def probed_tree(daemon: Daemon, probe: Probe) -> tuple[list[ChildSpec], SupervisorFlags]:
    """The daemon's own tree, its agents' supervisor started with ``probe`` as ``on_event``."""
    children, flags = daemon.tree()
    agent_flags, limit = AgentsSupervisor.flags_for(daemon.runtime)

    def start() -> pykka.ActorRef[Any]:
        return AgentsSupervisor.start(daemon.runtime, agent_flags, limit, on_event=probe)

    return [replace(c, start=start) if c.id == "agents" else c for c in children], flags


def hive_config(state_dir: Path, supervision: SupervisionConfig, agents: int) -> HiveConfig:
    """A process-backend hive; no turn runs, so the model URL is never used."""
    base = 20000 + os.getpid() % 10000  # clear of the default ports of other hives here
    return HiveConfig(
        state_dir=str(state_dir),
        backend="process",
        web=WebConfig(port=0, agent_port_base=base, agent_port_span=max(900, agents + 100)),
        model=ModelConfig(base_url="http://127.0.0.1:9", default="claude-sonnet-test"),
        supervision=supervision,
    )


@dataclass
class RunningHive:
    """A daemon with its tree up and every agent started once."""

    daemon: Daemon
    root: pykka.ActorRef[Any]
    probe: Probe

    def agents(self) -> pykka.ActorRef[Any]:
        return self.daemon.hive.directory.wait(AgentsSupervisor.SERVICE, TIMEOUT)

    def quiet(self) -> None:
        """Returns once the agents' supervisor has handled everything told to it before."""
        self.agents().ask(CountChildren(), timeout=TIMEOUT)

    def keeper(self, agent: str) -> int:
        status = self.daemon.backend.status(agent)
        if status.state != "running" or status.pid is None:
            raise HiveError(f"benchmark: {agent}'s container is {status.state}")
        return int(status.pid)

    def registry(self, agent: str) -> tuple[AgentState, int]:
        with self.daemon.hive.open_store() as store:
            row = store.registry.get(agent)
            return row.state, row.epoch


@contextmanager
def running_hive(state_dir: Path, names: list[str], supervision: SupervisionConfig
                 ) -> Iterator[RunningHive]:
    """Register ``names`` (agents, no manager), start the daemon's tree, wait for every agent."""
    probe = Probe()
    config = hive_config(state_dir, supervision, len(names))
    daemon = Daemon(config, backend=StampedBackend(config.state_dir),
                    api_key="benchmark-unused-key")
    try:
        with daemon.hive.open_store() as store:
            for name in names:
                store.registry.register(name, role=Role.AGENT)
        children, flags = probed_tree(daemon, probe)
        root = start_root(children, flags, ready_timeout=TIMEOUT * 10)
        try:
            hive = RunningHive(daemon, root, probe)
            up = set()
            while len(up) < len(names):
                up.add(probe.wait("started", timeout=TIMEOUT * 10)[0])
            hive.quiet()
            heap.settle()  # as the daemon does once its tree is up
            yield hive
        finally:
            root.stop(block=True, timeout=TIMEOUT * 10)
    finally:
        daemon.close()


# -- the measurements ------------------------------------------------------------------------------


def bench_bare(backend: ProcessBackend, count: int, warmup: int) -> list[float]:
    """``start()`` of a bare container of the same backend, ms each (its ``stop()`` aside)."""
    times = []
    for i in range(warmup + count):
        t0 = time.monotonic()
        backend.start("bare")
        t1 = time.monotonic()
        backend.stop("bare")
        if i >= warmup:
            times.append((t1 - t0) * 1000)
    return times


@dataclass
class Recovery:
    """One crash of the recovery part: ms from the kill to each step."""

    decided: float
    container_start: float
    """When the new container's start began."""
    container_up: float
    """When it ended (the keeper ready)."""
    ready: float


def bench_recovery(hive: RunningHive, count: int, warmup: int, idle: float) -> list[Recovery]:
    """Kill the agent's keeper ``warmup + count`` times; each time wait for it to be ready."""
    results = []
    for i in range(warmup + count):
        hive.quiet()  # the previous start's records done: the crash meets an idle supervisor
        _, epoch = hive.registry(AGENT)
        time.sleep(idle)  # the container runs, nothing happens
        pid = hive.keeper(AGENT)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _, decided = hive.probe.wait("restarting", AGENT)
        _, ready = hive.probe.wait("started", AGENT)
        backend = hive.daemon.backend
        assert isinstance(backend, StampedBackend)
        began, up = backend.last_start(AGENT)
        state, now_epoch = hive.registry(AGENT)
        if state is not AgentState.IDLE or now_epoch != epoch + 1 or hive.keeper(AGENT) == pid:
            raise HiveError(f"benchmark: after the restart {AGENT} is {state}, epoch "
                            f"{now_epoch} (was {epoch}); keeper {pid} replaced: "
                            f"{hive.keeper(AGENT) != pid}")
        if i >= warmup:
            results.append(Recovery((decided - t0) * 1000, (began - t0) * 1000,
                                    (up - t0) * 1000, (ready - t0) * 1000))
    return results


@dataclass
class Storm:
    """What the storm part measured."""

    agents: int
    spread_ms: float
    kill_span_ms: float
    latencies: list[float]
    """ms from each kill to its restart issued."""
    decision_span_ms: float
    """From the first to the last restart issued."""
    all_back_s: float
    """From the first kill to every agent started again."""
    cpu_decided_s: float
    cpu_back_s: float
    counts: Counter[tuple[str, str]]
    """(child, kind) → child events from the first kill to the end of the quiet period."""


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def bench_storm(hive: RunningHive, names: list[str], spread: float, quiet_s: float) -> Storm:
    """Kill every agent's keeper over ``spread`` seconds; follow the decisions and restarts."""
    keepers = {name: hive.keeper(name) for name in names}
    hive.quiet()
    before = Counter(hive.probe.counts)
    killed: dict[str, float] = {}
    step = spread / max(1, len(names) - 1)
    cpu0 = cpu_s()
    t_first = time.monotonic()
    for i, name in enumerate(names):
        if step:
            pause = t_first + i * step - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        killed[name] = time.monotonic()
        os.kill(keepers[name], signal.SIGKILL)
    kill_span = time.monotonic() - t_first
    decided: dict[str, float] = {}
    started: set[str] = set()
    cpu_decided = 0.0
    deadline = time.monotonic() + TIMEOUT * 10
    while len(decided) < len(names) or len(started) < len(names):
        try:
            who, kind, when = hive.probe.stamps.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise HiveError(f"benchmark: after the storm, {len(decided)} of {len(names)} "
                            f"restarts issued and {len(started)} agents back within "
                            f"{TIMEOUT * 10:g} s") from None
        if kind == "restarting" and who in killed:
            decided.setdefault(who, when)
            if len(decided) == len(names):
                cpu_decided = cpu_s() - cpu0
        elif kind == "started" and who in killed:
            started.add(who)
    t_back = time.monotonic()
    cpu_back = cpu_s() - cpu0
    time.sleep(quiet_s)  # a doubled decision or a late restart would show by now
    hive.quiet()
    counts = Counter(hive.probe.counts)
    counts.subtract(before)
    return Storm(
        agents=len(names), spread_ms=spread * 1000, kill_span_ms=kill_span * 1000,
        latencies=[(decided[n] - killed[n]) * 1000 for n in names],
        decision_span_ms=(max(decided.values()) - min(decided.values())) * 1000,
        all_back_s=t_back - t_first, cpu_decided_s=cpu_decided, cpu_back_s=cpu_back,
        counts=+counts,
    )


# -- the report ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def line(label: str, values: list[float], unit: str = "ms") -> tuple[float, float]:
    p50, p99 = statistics.median(values), pct(values, 0.99)
    print(f"  {label:<46} p50 {p50:8.2f} {unit}   p99 {p99:8.2f} {unit}   "
          f"max {max(values):8.2f} {unit}   (n={len(values)})")
    return p50, p99


def storm_report(storm: Storm, names: list[str]) -> bool:
    """Print the storm's figures; True when every crash got exactly one decision."""
    print(f"storm: {storm.agents} keepers killed over {storm.kill_span_ms:.1f} ms "
          f"(asked: {storm.spread_ms:g} ms)")
    _, p99 = line("kill -> restart issued", storm.latencies)
    per = storm.decision_span_ms / max(1, storm.agents - 1)
    spaced = f" (the kills' own spacing: {storm.spread_ms / max(1, storm.agents - 1):.2f} ms)"
    print(f"  decisions: first to last {storm.decision_span_ms:.1f} ms, {per:.2f} ms apart"
          f"{spaced if storm.spread_ms else ''}; all {storm.agents} agents back after "
          f"{storm.all_back_s:.2f} s")
    print(f"  daemon CPU (user+sys of this process): {storm.cpu_decided_s * 1000:.0f} ms to the "
          f"last decision ({storm.cpu_decided_s / storm.agents * 1000:.2f} ms per crash), "
          f"{storm.cpu_back_s * 1000:.0f} ms to every agent back "
          f"({storm.cpu_back_s / storm.agents * 1000:.2f} ms per agent)")
    kinds = Counter(kind for (_, kind) in storm.counts.elements())
    restarts = [storm.counts[(n, "restarting")] for n in names]
    lost = sum(1 for r in restarts if r == 0)
    doubled = sum(1 for r in restarts if r > 1)
    others = {k: v for k, v in kinds.items() if k not in ("restarting", "started")}
    ok = lost == 0 and doubled == 0 and not others and kinds["started"] == storm.agents
    print(f"  child events: {dict(sorted(kinds.items()))}; decisions lost {lost}, doubled "
          f"{doubled} -> {'every crash decided once' if ok else 'NOT one decision per crash'}")
    print(f"  p99 kill -> restart issued {p99:.2f} ms: target <= 50 ms "
          f"{'met' if p99 <= 50 else 'NOT met'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="crash recovery and a crash storm, as an "
                                     "operator feels them (process backend)")
    parser.add_argument("--recoveries", type=int, default=40,
                        help="measured crashes (and bare starts) in all")
    parser.add_argument("--rounds", type=int, default=4, help="rounds the two parts take turns in")
    parser.add_argument("--warmup", type=int, default=3,
                        help="crashes / starts not measured, first, in each round of each part")
    parser.add_argument("--idle", type=float, default=200.0, metavar="MS",
                        help="how long the agent runs idle before each crash")
    parser.add_argument("--agents", type=int, default=200, help="agents in the storm")
    parser.add_argument("--spread-ms", type=float, default=100.0,
                        help="the storm's kills are spread evenly over this many ms")
    parser.add_argument("--storm-backoff", choices=("default", "0"), default="default",
                        help="the storm hive's backoff: the config's default or none")
    parser.add_argument("--quiet-s", type=float, default=2.0,
                        help="seconds the storm's child events are still counted after all are back")
    parser.add_argument("--shm", action="store_true", help="the state dirs on /dev/shm")
    parser.add_argument("--skip-recovery", action="store_true")
    parser.add_argument("--skip-storm", action="store_true")
    args = parser.parse_args(argv)
    if (args.recoveries < 1 or not 1 <= args.rounds <= args.recoveries or args.warmup < 0
            or args.agents < 1 or args.spread_ms < 0 or args.idle < 0):
        parser.error("--recoveries >= 1, --rounds within 1..recoveries, --warmup >= 0, "
                     "--agents >= 1, --spread-ms >= 0, --idle >= 0")
    # The path under test logs every crash; the benchmark measures it, not the terminal.
    logging.basicConfig(level=logging.CRITICAL)
    where = "/dev/shm" if args.shm else None
    default = SupervisionConfig()
    storm_backoff = ("0" if args.storm_backoff == "0"
                     else f"{default.backoff_min:g} s ± {default.backoff_jitter:.0%}")
    parts = []
    if not args.skip_recovery:
        parts.append(f"recovery {args.recoveries} crashes in {args.rounds} rounds "
                     f"(+{args.warmup} warm-up a round, {args.idle:g} ms idle before each), "
                     "backoff 0")
    if not args.skip_storm:
        parts.append(f"storm {args.agents} agents over {args.spread_ms:g} ms, backoff "
                     f"{storm_backoff}")
    print(f"crash benchmark: process backend; {'; '.join(parts) or 'nothing to run'}; state on "
          f"{'/dev/shm' if args.shm else tempfile.gettempdir()}; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    status = 0
    with tempfile.TemporaryDirectory(prefix="hive-crash-", dir=where) as tmp:
        if not args.skip_recovery:
            print("recovery: kill -9 of the agent's keeper -> the agent ready again, vs the "
                  "backend's bare container start")
            bare_backend = ProcessBackend(Path(tmp) / "bare")
            bare_backend.create("bare", ContainerSpec())
            n = args.recoveries
            recoveries = n * (args.warmup + 1) * 10 + 100
            sup = SupervisionConfig(backoff_min=0.0, backoff_max=0.0, backoff_jitter=0.0,
                                    agent_restarts=recoveries, agent_period=3600.0,
                                    agent_max_consecutive_failures=recoveries)
            bare: list[float] = []
            rec: list[Recovery] = []
            try:
                with running_hive(Path(tmp) / "recovery", [AGENT], sup) as hive:
                    for r in range(args.rounds):
                        k = n // args.rounds + (r < n % args.rounds)
                        bare += bench_bare(bare_backend, k, args.warmup)
                        rec += bench_recovery(hive, k, args.warmup, args.idle / 1000)
            finally:
                bare_backend.close()
            b50, b99 = line("bare container start (baseline)", bare)
            line("kill -> restart issued", [x.decided for x in rec])
            line("kill -> the new container's start begins", [x.container_start for x in rec])
            line("  the container's start itself (in the hive)",
                 [x.container_up - x.container_start for x in rec])
            line("  container up -> agent ready", [x.ready - x.container_up for x in rec])
            r50, r99 = line("kill -> agent ready again (idle, next turn)", [x.ready for x in rec])
            ratio50, ratio99 = r50 / b50, r99 / b99
            print(f"  ratio recovery / bare start: p50 {ratio50:.2f}, p99 {ratio99:.2f} "
                  f"(target <= 1.2: {'met' if max(ratio50, ratio99) <= 1.2 else 'NOT met'})")
        if not args.skip_storm:
            names = [f"agent{i:04d}" for i in range(args.agents)]
            sup = SupervisionConfig(agent_restarts=5, agent_period=60.0)
            if args.storm_backoff == "0":
                sup = replace(sup, backoff_min=0.0, backoff_max=0.0, backoff_jitter=0.0)
            t0 = time.monotonic()
            with running_hive(Path(tmp) / "storm", names, sup) as hive:
                print(f"storm: {args.agents} agents started in {time.monotonic() - t0:.1f} s")
                threading.Event().wait(1.0)  # the start's stragglers end
                storm = bench_storm(hive, names, args.spread_ms / 1000, args.quiet_s)
            if not storm_report(storm, names):
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
