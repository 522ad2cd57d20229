"""Crash-to-restart latency: the stand-in systemd's failure signal → the supervisor's restart.

In one run, on a private dbus-daemon, with the stand-in systemd in a process of its own and a
driver process that asks it (over D-Bus) to start and crash ``container@alice.service``:

- **raw**: a D-Bus signal between two processes — the stand-in emits the unit's failure
  ``PropertiesChanged``, a bare sdbus receiver in this process (its own thread and loop, like
  the watcher's) timestamps its arrival. The ceiling.
- **hive**: the same failure through the real path, the one route on plain actor messages —
  ``SystemdWatch`` reading the signals in its thread and telling the ``CrashWatcherActor``,
  which classifies the observation and ties the run to its epoch (its own run book) and tells
  a ``ContainerCrash`` to the crashed agent's actor (a light actor that announces its epoch
  and dies of a crash of it as an AgentActor does); the real ``AgentsSupervisor`` sees the
  ``Down`` and decides the restart in its own thread — up to the moment
  ``on_child_event(kind="restarting")`` is called, once the restart is scheduled. Each crash
  is sent once the supervisor has finished recording the previous restart.

- **raw + one hop**: the raw receiver handing each failure to another thread through a
  ``SimpleQueue`` (an actor's inbox), which timestamps it — what a wake-up of the supervisor's
  own thread would cost at least (a busy supervisor is woken so), printed for reference.

Each unit runs ``--idle`` ms (default 1) with nothing happening before it crashes, in every
part alike: a crash meets a receiver — and a hive — done with the unit's start, as a real crash
does. With ``--idle 0`` the crash follows the start at once (the method of the numbers before
this option): the hive may then still be handling the start's signals and the run's binding
when the failure arrives, while the bare receiver has just been woken by them. The longer the
idle, the colder everything the crash path touches, for the receiver and the hive alike.

The parts take turns in ``--rounds`` rounds (default 10: raw, one hop, hive, raw, …), each
round crashing ``crashes / rounds`` times after ``--warmup`` crashes not measured; the hive's
tree is started (its agent spawned) at the start of each of its rounds and stopped at the end,
so nothing of it runs while the other parts are measured. On a shared machine a noisy spell
then weighs on every part alike, not on whichever part it fell in.

All are p50/p99 over N crashes; ``time.monotonic`` is one clock for every process on Linux
(the stand-in stamps the emission, this process the arrival). The driver is a separate process
so that nothing of the benchmark's own runs in this interpreter while a crash travels; it asks
for each crash with a call that expects no reply and is answered with nothing, then asks for
the emission time once the crash has arrived: a real crash is nobody's answer, and no reply
(nor the driver waking up for it) competes with the path measured.
The ratio hive p99 / raw p99 is printed (the old target of 2x is retired: an operator feels
the recovery, not this hop count).

    python benchmarks/crash.py [--crashes 1000] [--rounds 10] [--warmup 20] [--idle 1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import queue
import selectors
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import pykka
import sdbus

from hive_actors import heap
from hive_actors.actor import HiveActor, default_clock
from hive_actors.agent.runtime import AgentRuntime
from hive_actors.agent.supervisor import AgentsSupervisor, SpawnAgent, StopAgent
from hive_actors.config import HiveConfig, SupervisionConfig, WatcherConfig
from hive_actors.crash_messages import (
    AgentCrashed,
    ContainerCrash,
    WatchReports,
    agent_service,
    announce_up,
)
from hive_actors.crashwatch import CrashWatcherActor
from hive_actors.errors import HiveError
from hive_actors.hive import Hive
from hive_actors.store import AgentState, Role
from hive_actors.supervisors.messages import ChildEvent, CountChildren
from hive_actors.supervisors.spec import ChildSpec
from hive_actors.testing.dbus_daemon import DbusDaemon
from hive_actors.testing.fake_objects import CONTROL_INTERFACE, CONTROL_PATH, ControlInterface
from hive_actors.watcher.bus import open_bus
from hive_actors.watcher.props import UNIT_INTERFACE
from hive_actors.watcher.systemd_iface import (
    MANAGER_PATH,
    SYSTEMD_BUS_NAME,
    UNIT_PATH_PREFIX,
    ManagerInterface,
)

AGENT = "alice"
UNIT = f"container@{AGENT}.service"
TIMEOUT = 10.0


# -- the hive side -------------------------------------------------------------------------------


class LightAgent(HiveActor):
    """What an AgentActor does around a crash, and nothing else: spawn an epoch, tell it to
    the crash watcher, take crash reports by name, crash at once on one of its epoch (the
    AgentActor records nothing first: the supervisor records the crash after deciding the
    restart)."""

    def __init__(self, hive: Hive, agent: str) -> None:
        super().__init__(name=f"agent:{agent}")
        self.hive = hive
        self.agent = agent
        self.epoch = 0

    def on_start(self) -> None:
        # The registry moves as an AgentActor's would (spawned, then idle); the store is not
        # kept open, as a light child has nothing else to record.
        with self.hive.open_store() as store:
            self.epoch = store.registry.spawn(self.agent).epoch
            store.registry.set_state(self.agent, AgentState.IDLE, reason="up")
        self.hive.directory.register(agent_service(self.agent), self.actor_ref)
        announce_up(self.hive.directory, self.agent, self.epoch)

    def on_stop(self) -> None:
        self.hive.directory.withdraw(agent_service(self.agent), self.actor_ref)

    def receive(self, message: Any) -> Any:
        if isinstance(message, ContainerCrash):
            if message.epoch == self.epoch:
                raise AgentCrashed(message)
            return None
        return super().receive(message)


def _no_agents(*_: Any, **__: Any) -> Any:
    raise HiveError("benchmark: light children run no container, CLI or MCP server")


def light_runtime(hive: Hive) -> AgentRuntime:
    """What the AgentsSupervisor needs of a runtime when its children are light: the hive
    (store, directory, bell, config) and the clock; the container and CLI parts stay unused."""
    return AgentRuntime(
        hive=hive, backend=None, tokens=None, claude=_no_agents, base_url="",
        mcp_url=_no_agents, settings=_no_agents, container_spec=_no_agents,
        render_mcp_config=_no_agents, clock=default_clock(),
    )


class _Sink(pykka.ThreadingActor):
    """Takes what the crash watcher tells its followers, and drops it."""

    def on_receive(self, message: Any) -> None:
        return None


class LightAgents(AgentsSupervisor):
    """The real AgentsSupervisor, whose children are :class:`LightAgent`."""

    def spec(self, name: str) -> ChildSpec:
        return ChildSpec(name, lambda: LightAgent.start(self.rt.hive, name), shutdown=TIMEOUT,
                         ready_timeout=TIMEOUT, limit=self.limit, meta=name)


# -- the other processes ---------------------------------------------------------------------------


def drive(address: str) -> int:
    """The driver process: one command a line on stdin (``start`` / ``crash``), answered with
    the stand-in's emission time on stdout."""
    loop = asyncio.new_event_loop()
    bus = open_bus(address)
    control = ControlInterface.new_proxy(SYSTEMD_BUS_NAME, CONTROL_PATH, bus)
    try:
        for line in sys.stdin:
            if line.strip() == "start":
                emitted = loop.run_until_complete(control.start(UNIT))
            elif line.strip() == "crash":
                # Sent expecting no reply, and answered with nothing: no reply is in flight,
                # and nothing of this process runs, while the failure travels (a real crash is
                # nobody's answer). Its time is asked for afterwards.
                crash = bus.new_method_call_message(SYSTEMD_BUS_NAME, CONTROL_PATH,
                                                    CONTROL_INTERFACE, "Crash")
                crash.append_data("ssii", UNIT, "exit-code", 1, 1)
                crash.expect_reply = False
                crash.send()
                continue
            elif line.strip() == "emitted":
                emitted = loop.run_until_complete(control.last_crash())
            else:
                print(f"Error: unknown command {line.strip()!r}", file=sys.stderr)
                return 2
            print(repr(float(emitted)), flush=True)
    finally:
        bus.close()
        loop.close()
    return 0


def _read_line(stream: IO[bytes], what: str) -> bytes:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(TIMEOUT):
            raise HiveError(f"benchmark: {what} said nothing within {TIMEOUT:g} s")
    return stream.readline()


class Process:
    """A helper process with a line protocol on its stdin/stdout."""

    def __init__(self, argv: list[str], what: str) -> None:
        self.what = what
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin = self.process.stdin
        self.stdout = self.process.stdout

    def send(self, command: str) -> None:
        self.stdin.write(f"{command}\n".encode())
        self.stdin.flush()

    def reply(self) -> float:
        return float(_read_line(self.stdout, self.what))

    def close(self) -> None:
        self.stdin.close()
        try:
            self.process.terminate()
            self.process.wait(TIMEOUT)
        finally:
            self.stdout.close()


def start_stand_in(address: str) -> Process:
    stand_in = Process([sys.executable, "-m", "hive_actors.testing.fake_systemd", "--address",
                        address, "--unit", UNIT], "the stand-in systemd")
    if not _read_line(stand_in.stdout, stand_in.what).startswith(b"ready"):
        stand_in.close()
        raise HiveError("benchmark: the stand-in systemd did not start; is dbus-daemon there?")
    return stand_in


# -- the raw receiver --------------------------------------------------------------------------


class RawReceiver:
    """A bare subscriber in a thread and loop of its own: timestamps each failure
    ``PropertiesChanged`` of the unit. With ``hop``, the callback hands the failure to another
    thread instead (a ``SimpleQueue``, as an actor's inbox), which timestamps it: the floor of
    any design whose restart is decided outside the D-Bus thread."""

    def __init__(self, address: str, *, hop: bool = False) -> None:
        self.arrivals: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[bool] | None = None
        self._hop_thread: threading.Thread | None = None
        if hop:
            inbox: queue.SimpleQueue[bool] = queue.SimpleQueue()
            self._inbox = inbox

            def stamp() -> None:
                while inbox.get():
                    self.arrivals.put(time.monotonic())

            self._hop_thread = threading.Thread(target=stamp, name="raw-hop", daemon=True)
            self._hop_thread.start()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raw-receiver",
                                        daemon=True)
        self._thread.start()
        self._bus: Any = None
        self._slot: Any = None
        self._run(self._connect(address))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    async def _connect(self, address: str) -> None:
        self._bus = open_bus(address)
        path = sdbus.encode_object_path(UNIT_PATH_PREFIX, UNIT)
        self._slot = await self._bus.match_signal_async(
            SYSTEMD_BUS_NAME, path, "org.freedesktop.DBus.Properties", "PropertiesChanged",
            self._on_signal,
        )
        # The stand-in, like systemd, signals only to subscribed connections.
        await ManagerInterface.new_proxy(SYSTEMD_BUS_NAME, MANAGER_PATH, self._bus).subscribe()

    def _on_signal(self, message: Any) -> None:
        now = time.monotonic()
        interface, changed, _ = message.get_contents()
        if interface == UNIT_INTERFACE and changed.get("ActiveState", ("s", ""))[1] == "failed":
            if self._inbox is not None:
                self._inbox.put(True)
            else:
                self.arrivals.put(now)

    async def _close(self) -> None:
        self._slot.close()
        self._bus.close()

    def close(self) -> None:
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()
        if self._inbox is not None and self._hop_thread is not None:
            self._inbox.put(False)
            self._hop_thread.join(TIMEOUT)


# -- the measurements ---------------------------------------------------------------------------


def bench_raw(address: str, driver: Process, crashes: int, warmup: int, idle: float, *,
              hop: bool = False) -> list[float]:
    receiver = RawReceiver(address, hop=hop)
    try:
        latencies = []
        for i in range(warmup + crashes):
            driver.send("start")
            driver.reply()
            if idle:
                time.sleep(idle)  # the unit runs, nothing happens: the idle period measured
            driver.send("crash")
            arrived = receiver.arrivals.get(timeout=TIMEOUT)
            driver.send("emitted")
            emitted = driver.reply()
            if i >= warmup:
                latencies.append((arrived - emitted) * 1000)
        return latencies
    finally:
        receiver.close()


def hive_config(address: str, state_dir: Path, crashes: int) -> HiveConfig:
    return HiveConfig(
        state_dir=str(state_dir),
        supervision=SupervisionConfig(backoff_min=0.0, backoff_max=0.0, backoff_jitter=0.0,
                                      agent_restarts=10 * crashes, agent_period=3600.0,
                                      agent_max_consecutive_failures=10 * crashes),
        watcher=WatcherConfig(bus_address=address),
    )


def bench_hive(hive: Hive, address: str, driver: Process, crashes: int, warmup: int,
               idle: float) -> list[float]:
    """One round of the hive part: its tree is started (the agent spawned), crashed
    ``warmup + crashes`` times, and stopped again (the agent stopped), so that between rounds
    nothing of it runs while the other parts are measured."""
    runtime = light_runtime(hive)
    events: dict[str, queue.SimpleQueue[float]] = {
        "started": queue.SimpleQueue(), "restarting": queue.SimpleQueue(),
    }

    def on_event(event: ChildEvent) -> None:
        now = time.monotonic()  # first thing: the moment the supervisor issues the restart
        if event.kind in events:
            events[event.kind].put(now)

    flags, limit = AgentsSupervisor.flags_for(runtime)
    agents = LightAgents.start(runtime, flags, limit, on_event=on_event)
    watcher = CrashWatcherActor.start(hive, address=address)
    sink = _Sink.start()
    try:
        # The watcher's first scan handled before the agent spawns: the unit's last crash (of
        # the raw parts, which crash the same unit) is then nobody's, recorded only.
        deadline = time.monotonic() + TIMEOUT
        while watcher.ask(WatchReports(sink), timeout=TIMEOUT).scans == 0:
            if time.monotonic() > deadline:
                raise HiveError("benchmark: the crash watcher did not scan the units in time")
            time.sleep(0.01)
        agents.ask(SpawnAgent(AGENT), timeout=TIMEOUT)
        heap.settle()  # as the daemon does once its tree is up
        latencies = []
        last: pykka.ActorRef[Any] | None = None
        for i in range(warmup + crashes):
            events["started"].get(timeout=TIMEOUT)
            # The probe sees "started" before the supervisor's own bookkeeping of it (registry
            # and events writes): wait for that, so that each crash meets an idle supervisor
            # rather than queueing behind the previous crash's records.
            agents.ask(CountChildren(), timeout=TIMEOUT)
            # The agent's on_start is done (its AgentUp is in the watcher's mailbox, ahead of
            # the start's signals), as an AgentActor's is before it starts its container.
            last = hive.directory.wait(agent_service(AGENT), TIMEOUT, other_than=last)
            last.proxy().epoch.get(timeout=TIMEOUT)
            driver.send("start")
            driver.reply()
            if idle:
                time.sleep(idle)  # as in bench_raw
            driver.send("crash")
            restarted = events["restarting"].get(timeout=TIMEOUT)
            driver.send("emitted")
            emitted = driver.reply()
            if i >= warmup:
                latencies.append((restarted - emitted) * 1000)
        events["started"].get(timeout=TIMEOUT)
        agents.ask(StopAgent(AGENT), timeout=TIMEOUT)
        return latencies
    finally:
        sink.stop()
        watcher.stop(block=True, timeout=TIMEOUT)
        agents.stop(block=True, timeout=TIMEOUT)


def report(label: str, values: list[float]) -> float:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"  {label:<42} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   max {ordered[-1]:7.3f} ms")
    return p99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="crash-to-restart latency vs a raw D-Bus signal")
    parser.add_argument("--crashes", type=int, default=1000, help="measured crashes per part")
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds the parts take turns in (the crashes are split)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="crashes not measured, first, in each round of each part")
    parser.add_argument("--idle", type=float, default=1.0, metavar="MS",
                        help="how long each unit runs idle before it crashes (every part)")
    parser.add_argument("--drive", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.crashes < 1 or args.warmup < 0 or not 1 <= args.rounds <= args.crashes
            or not 0 <= args.idle <= 10_000):
        parser.error("--crashes must be >= 1, --rounds within 1..crashes, --warmup >= 0 and "
                     "--idle within 0..10000 ms")
    idle = args.idle / 1000
    if args.drive:
        return drive(args.drive)
    # The path under test logs every crash; the benchmark measures it, not the terminal.
    logging.basicConfig(level=logging.CRITICAL)
    print(f"crash benchmark: {args.crashes} crashes per part in {args.rounds} rounds "
          f"(+{args.warmup} warm-up a round), each after {args.idle:g} ms idle, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # the store's fsyncs are not measured
    raw: list[float] = []
    hop: list[float] = []
    hive_part: list[float] = []
    with DbusDaemon() as bus, tempfile.TemporaryDirectory(dir=shm) as tmp:
        hive = Hive(hive_config(bus.address, Path(tmp), args.crashes + args.warmup * args.rounds))
        with hive.open_store() as store:
            store.registry.register(AGENT, role=Role.AGENT)
            store.registry.set_state(AGENT, AgentState.STOPPED, reason="benchmark")
        stand_in = start_stand_in(bus.address)
        driver = Process([sys.executable, os.path.abspath(__file__), "--drive", bus.address],
                         "the driver")
        try:
            # The parts take turns, so that a noisy spell of a shared machine weighs on each
            # alike rather than on whichever part it fell in.
            for r in range(args.rounds):
                n = args.crashes // args.rounds + (r < args.crashes % args.rounds)
                raw += bench_raw(bus.address, driver, n, args.warmup, idle)
                hop += bench_raw(bus.address, driver, n, args.warmup, idle, hop=True)
                hive_part += bench_hive(hive, bus.address, driver, n, args.warmup, idle)
        finally:
            driver.close()
            stand_in.close()
    raw_p99 = report("raw D-Bus signal (stand-in -> receiver)", raw)
    hop_p99 = report("raw signal + one thread hop (the floor)", hop)
    hive_p99 = report("stand-in failure -> restart issued", hive_part)
    ratio = hive_p99 / raw_p99
    print(f"  p99 ratio hive / raw: {ratio:.2f} (for reference: no target); "
          f"raw + one hop / raw: {hop_p99 / raw_p99:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
