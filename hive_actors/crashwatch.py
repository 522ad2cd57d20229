"""CrashWatcherActor: systemd's word on the agents' containers, turned into crash messages.

It runs a :class:`~hive_actors.watcher.SystemdWatch` (in a thread of its own, on the system bus
or ``[watcher] bus_address``) over the ``container@<agent>.service`` units of the agents the
registry knows, and acts on what it reports:

- a :class:`~hive_actors.watcher.Crash` of an agent's unit becomes a
  :class:`~hive_actors.crash_messages.ContainerCrash` told to the AgentsSupervisor (the
  ``agents`` service), which restarts that agent with backoff or gives it up, records the crash
  (``agent.crashed``) and tells the manager. With no agents' supervisor running, the crash is
  recorded here and nothing else happens;
- the crash carries the **epoch** of the run that crashed: each run (``InvocationID``) is
  tied to the epoch current when the watcher first saw it alive (the hive's
  :class:`~hive_actors.crash_runs.RunBook`, which each AgentActor tells its epoch before
  it starts its container), and an AgentActor ignores a crash of another epoch than its
  own;
- the crash is routed from the watcher's own thread, the moment systemd's signal is classified:
  the run book is shared and locked, so the tie needs no trip through this actor's mailbox; an
  idle supervisor decides the restart right there, in a turn of its own taken in this thread
  (:func:`~hive_actors.actor.tell_now`), else the crash is queued to it. This actor then logs
  it and records a crash that found no supervisor;
- every other verdict (a stop, a failed stop, a reboot, systemd giving up, unreadable input) is
  logged, never acted on: nothing restarts on a guess.

The hive's own stops reach the watcher through :class:`~hive_actors.crash_intents.StopIntents`
(the container backend announces each stop before it makes it). When the watcher's thread dies,
this actor crashes with it and its supervisor starts a new one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from hive_actors.actor import HiveActor
from hive_actors.crash_intents import StopIntents
from hive_actors.crash_messages import (
    AgentUp,
    ContainerCrash,
    RunBound,
    WatchReports,
    WatchState,
)
from hive_actors.errors import HiveError
from hive_actors.hive import Hive
from hive_actors.store import AgentState, Store
from hive_actors.store.events import EventKind
from hive_actors.watcher import (
    Crash,
    FailedStop,
    GaveUp,
    Rebooted,
    Report,
    RestartedUnseen,
    RestartScheduled,
    Stopped,
    SystemdWatch,
    UnitReport,
    Unreadable,
    WatcherNotice,
    WatchThread,
)
from hive_actors.watcher.tracker import UnitState

__all__ = ["CrashWatcherActor", "RunCallback", "UnitWatch", "WatchFactory"]

log = logging.getLogger(__name__)

# A unit in these states has no live run: its InvocationID names a run that ended.
_DEAD_ACTIVE = frozenset({"inactive", "failed"})
_DEAD_SUB = frozenset(
    {"auto-restart", "auto-restart-queued", "failed-before-auto-restart",
     "dead-before-auto-restart"}
)

RunCallback = Callable[[str, str, str, bool], None]
"""``(agent, unit, invocation_id, alive)``: a unit's run was seen alive, or seen ended."""


class UnitWatch(SystemdWatch):
    """A :class:`~hive_actors.watcher.SystemdWatch` that also says when it sees a unit's run
    start or end (``on_run``), which the epochs are tied to.

    Every observation of a unit (a change signal, a rescan) goes through the watcher's one
    classification step; this hooks in after it, so a run's start is told before any verdict
    about a later observation of the same unit.
    """

    def __init__(
        self,
        address: str | None,
        is_agent: Callable[[str], bool],
        on_report: Callable[[Report], None],
        *,
        on_run: RunCallback,
        **options: Any,
    ) -> None:
        super().__init__(address, is_agent, on_report, **options)
        self._on_run = on_run
        # unit → (InvocationID, alive) as last told; only the watcher's loop thread touches it.
        self._told: dict[str, tuple[str, bool]] = {}

    def _conclude(
        self, state: UnitState, hive_stop: bool, job_type: str | None, early: Crash | None = None
    ) -> None:
        # SystemdWatch reports no verdict for a run that starts, and this step is the one place
        # every observation of a unit passes through: the hook goes here.
        super()._conclude(state, hive_stop, job_type, early)
        snapshot = state.snapshot
        if snapshot is None or not snapshot.invocation_id:
            return
        alive = snapshot.active_state not in _DEAD_ACTIVE and snapshot.sub_state not in _DEAD_SUB
        seen = (snapshot.invocation_id, alive)
        if self._told.get(state.unit) == seen:
            return
        self._told[state.unit] = seen
        try:
            self._on_run(state.agent, state.unit, snapshot.invocation_id, alive)
        except Exception:
            log.exception("watcher: on_run raised for %s; the watcher goes on", state.unit)


WatchFactory = Callable[..., UnitWatch]
"""Makes the watcher: ``(address, is_agent, on_report, *, on_run, **options)``."""


@dataclass(frozen=True)
class _Reported:
    report: Report
    crash: ContainerCrash | None = None
    """For a crash: what was routed (None: the agent's epoch is unknown)."""
    told: bool = False
    """For a crash: whether the agents' supervisor was told."""


@dataclass(frozen=True)
class _WatchEnded:
    error: BaseException | None


class CrashWatcherActor(HiveActor):
    """Watches the agents' units on D-Bus and tells each crash to the crashed agent's actor."""

    SERVICE = "watcher"

    def __init__(
        self,
        hive: Hive,
        intents: StopIntents,
        *,
        address: str | None = None,
        rescan_interval: float = 300.0,
        call_timeout: float = 5.0,
        stop_timeout: float = 10.0,
        wall: Callable[[], float] = time.time,
        watch_factory: WatchFactory = UnitWatch,
    ) -> None:
        """``address``: the D-Bus to watch (None: the system bus); ``call_timeout`` bounds each
        D-Bus call, ``stop_timeout`` the watcher thread's start and stop (seconds); ``wall``
        stamps crash times; ``watch_factory`` makes the watcher (tests inject faults with it)."""
        super().__init__(name=self.SERVICE)
        self.hive = hive
        self._intents = intents
        self._address = address
        self._rescan_interval = rescan_interval
        self._call_timeout = call_timeout
        self._stop_timeout = stop_timeout
        self._wall = wall
        self._factory = watch_factory
        self._runs = hive.runs
        # Read by the watcher's thread (is_agent): replaced whole, never mutated.
        self._agents: frozenset[str] = frozenset()
        self._followers: list[pykka.ActorRef[Any]] = []
        self._followed = False
        """Whether anyone follows the reports (read by the watcher's thread)."""
        self._store: Store | None = None
        self._watch: UnitWatch | None = None
        self._thread: WatchThread | None = None
        self._stopping = False
        self._scans = 0

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    # -- life ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._store = self.hive.open_store()
        try:
            self._load_registry()
            watch = self._factory(
                self._address,
                self._is_agent,
                self._on_report,
                on_run=self._on_run,
                now=self._wall,
                rescan_interval=self._rescan_interval,
                call_timeout=self._call_timeout,
            )
            self._watch = watch
            self._intents.attach(watch)
            self._thread = watch.start_in_thread(timeout=self._stop_timeout, on_exit=self._on_exit)
        except BaseException:
            # on_stop does not run after a failed on_start: undo what did start.
            self._close()
            raise
        self.hive.directory.register(self.SERVICE, self.actor_ref)
        self.log.info("watching container@*.service on %s", self._address or "the system bus")

    def on_stop(self) -> None:
        self.hive.directory.withdraw(self.SERVICE, self.actor_ref)
        self._close()

    def _close(self) -> None:
        self._stopping = True
        try:
            if self._watch is not None:
                self._intents.detach(self._watch)
            if self._thread is not None:
                self._thread.stop(self._stop_timeout)
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- the watcher's thread (must not block) -------------------------------------------------

    def _is_agent(self, name: str) -> bool:
        return name in self._agents or self._runs.announced(name)

    def _on_report(self, report: Report) -> None:
        verdict = report.verdict if isinstance(report, UnitReport) else None
        if not isinstance(verdict, Crash):
            self._tell_self(_Reported(report))
            return
        assert isinstance(report, UnitReport)
        crash = self._route(report.agent, report.unit, report.when, verdict)
        # Decided in this thread when the supervisor is idle (its sender's turn).
        told = crash is not None and self.hive.directory.tell("agents", crash, now=True)
        if told and not self._followed:
            # Nothing left for the actor to do: it is not woken while the restart is being
            # decided.
            assert crash is not None
            self.log.warning("%s crashed: %s (epoch %d); told the agents' supervisor",
                             report.agent, crash.describe(), crash.epoch)
            return
        self._tell_self(_Reported(report, crash, told))

    def _on_run(self, agent: str, unit: str, invocation_id: str, alive: bool) -> None:
        if not alive:
            self._runs.run_ended(agent, invocation_id)
            return
        epoch = self._runs.run_alive(agent, invocation_id)
        if epoch is None:
            return
        if self._followed:
            self._tell_self(RunBound(agent, unit, invocation_id, epoch))
        else:
            # Nothing for the actor to do but say it: it is not woken at every start (a
            # follower who comes later reads the tie in the WatchState it is answered).
            self.log.debug("%s: run %s is epoch %d", unit, invocation_id, epoch)

    def _route(self, agent: str, unit: str, when: float, verdict: Crash) -> ContainerCrash | None:
        """The crash message for a crashed run, None when the agent's epoch is unknown."""
        epoch = self._runs.crashed(agent, verdict.invocation_id)
        if epoch is None:
            return None
        return ContainerCrash(
            agent=agent,
            epoch=epoch,
            result=verdict.result,
            exit_status=verdict.exit_code,
            signal=verdict.signal,
            when=when,
            source="systemd",
            detail=f"{unit} run {verdict.invocation_id or '(no InvocationID)'}",
            invocation_id=verdict.invocation_id,
            will_restart=verdict.will_restart,
        )

    def _on_exit(self, error: BaseException | None) -> None:
        self._tell_self(_WatchEnded(error))

    def _tell_self(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # stopping: nothing is acted on any more

    # -- messages ------------------------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        match message:
            case _Reported(report=report, crash=crash, told=told):
                self._handle(report, crash, told)
                self._follow(report)
            case RunBound(unit=unit, invocation_id=invocation, epoch=epoch) as bound:
                self.log.debug("%s: run %s is epoch %d", unit, invocation, epoch)
                self._follow(bound)
            case AgentUp(agent=agent, epoch=epoch, adopted=adopted):
                if agent not in self._agents:
                    self._agents = self._agents | {agent}
                if adopted is not None:
                    self._follow(RunBound(agent, f"container@{agent}.service", adopted,
                                          epoch))
            case WatchReports(ref=ref):
                self._followers.append(ref)
                self._followed = True
                return self._state()
            case _WatchEnded(error=error):
                if self._stopping:
                    return None
                if error is None:
                    raise HiveError("watcher: the D-Bus watcher stopped though nobody asked it to")
                raise HiveError(f"watcher: the D-Bus watcher died: {error!r}") from error
            case _:
                return super().receive(message)
        return None

    def _handle(self, report: Report, crash: ContainerCrash | None, told: bool) -> None:
        match report:
            case UnitReport(agent=agent, unit=unit, verdict=Crash() as verdict):
                self._crashed(agent, unit, verdict, crash, told)
            case UnitReport(unit=unit, verdict=Unreadable(problems=problems)):
                self.log.warning("%s: could not understand what systemd said (%s); nothing is "
                                 "concluded from it", unit, "; ".join(problems))
            case UnitReport(agent=agent, unit=unit, verdict=Stopped() | FailedStop() as end):
                if end.by == "hive":
                    self._intents.settled(agent)
                level = logging.WARNING if isinstance(end, FailedStop) else logging.INFO
                self.log.log(level, "%s: %s (not a crash)", unit, end)
            case UnitReport(unit=unit, verdict=RestartedUnseen() | GaveUp() as verdict):
                self.log.warning("%s: %s (not acted on)", unit, verdict)
            case UnitReport(unit=unit, verdict=Rebooted() | RestartScheduled() as verdict):
                self.log.info("%s: %s (not a crash)", unit, verdict)
            case UnitReport(unit=unit, verdict=verdict):
                self.log.debug("%s: %s", unit, verdict)
            case WatcherNotice(kind="rescanned", detail=detail):
                self._scans += 1
                self._load_registry()
                self.log.debug("rescanned: %s", detail)
            case WatcherNotice(kind=kind, detail=detail):
                level = logging.INFO if kind in ("connected", "systemd-absent") else logging.DEBUG
                self.log.log(level, "%s: %s", kind, detail)

    def _crashed(self, agent: str, unit: str, verdict: Crash, crash: ContainerCrash | None,
                 told: bool) -> None:
        """Log a crash the watcher's thread routed; record it when no supervisor took it."""
        if crash is None:
            self.log.warning("%s crashed (%s) but %s has no epoch in the registry; not "
                             "acted on", unit, verdict.result, agent)
            return
        # Told first (from the watcher's thread), recorded after the restart by the agents'
        # supervisor: the restart waits on no disk write.
        if told:
            self.log.warning("%s crashed: %s (epoch %d); told the agents' supervisor",
                             agent, crash.describe(), crash.epoch)
            return
        self.log.warning("%s crashed: %s (epoch %d); the agents' supervisor is not "
                         "running: recorded only", agent, crash.describe(), crash.epoch)
        self.store.events.record(EventKind.AGENT_CRASHED, agent, {
            **crash.payload(), "ignored": "the agents' supervisor is not running",
        })
        self.hive.bell.ring()

    def _state(self) -> WatchState:
        return WatchState(scans=self._scans, runs=dict(sorted(self._runs.live_runs().items())))

    def _load_registry(self) -> None:
        epochs = {
            agent.name: agent.epoch
            for agent in self.store.registry.agents()
            if agent.state is not AgentState.DESTROYED
        }
        self._runs.load(epochs)
        self._agents = frozenset(epochs)

    def _follow(self, item: Any) -> None:
        alive = []
        for ref in self._followers:
            try:
                ref.tell(item)
            except pykka.ActorDeadError:
                continue
            alive.append(ref)
        self._followers = alive
