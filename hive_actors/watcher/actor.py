"""CrashWatcherActor: systemd's word on the agents' containers, turned into crash messages.

One route, on plain actor messages:

1. A :class:`~hive_actors.watcher.SystemdWatch` reads the ``container@<name>.service`` units
   in a thread of its own (on the system bus or ``[watcher] bus_address``) and ``tell``\\ s
   this actor what it read — observations of units, units gone, notices — deciding nothing.
2. The AgentActors tell this actor :class:`~hive_actors.watcher.messages.AgentUp` before they
   start a container, and the container backend (:class:`~hive_actors.watcher.intents.
   WatchedBackend`) tells it each stop the hive is about to make
   (:class:`~hive_actors.watcher.reports.StopExpected`) and each start
   (:class:`~hive_actors.watcher.reports.StopCleared`). Its mailbox is FIFO: a D-Bus signal
   caused by a start or a stop is handled after the message that announced it.
3. This actor alone owns the run book (:class:`~hive_actors.watcher.runs.RunBook`: which agent
   epoch each run of a unit belongs to) and the stop intents
   (:class:`~hive_actors.watcher.intents.StopIntents`), and classifies every observation with
   the one :func:`~hive_actors.watcher.classify.classify`
   (:class:`~hive_actors.watcher.judge.UnitJudge`).
4. A :class:`~hive_actors.watcher.Crash` of an agent's unit becomes a
   :class:`~hive_actors.watcher.messages.ContainerCrash` for the epoch its run belongs to, told
   to that agent's AgentActor (the directory has it under
   :func:`~hive_actors.watcher.messages.agent_service`). The AgentActor dies of a crash of its
   own epoch (and records one of another epoch as ignored); its supervisor sees the ``Down``
   and decides, in its own thread, as for every other exit. With no AgentActor registered
   (backing off, given up, stopped), the crash is recorded here and nothing else happens.
5. Every other verdict (a stop, a failed stop, a reboot, systemd giving up, unreadable input)
   is logged, never acted on: nothing restarts on a guess.

When the reader's thread dies, this actor crashes with it and its supervisor starts a new one,
which starts a new run book from the registry's epochs and reads every unit afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from hive_actors.actor import HiveActor
from hive_actors.errors import HiveError
from hive_actors.hive import Hive
from hive_actors.store import AgentState, Store
from hive_actors.store.events import EventKind
from hive_actors.watcher import (
    Crash,
    FailedStop,
    GaveUp,
    NoEvent,
    Observation,
    Rebooted,
    RestartedUnseen,
    RestartScheduled,
    StopCleared,
    StopExpected,
    Stopped,
    SystemdWatch,
    UnitGone,
    UnitObserved,
    UnitReport,
    Unreadable,
    Verdict,
    WatcherNotice,
    WatchThread,
)
from hive_actors.watcher.intents import StopIntents
from hive_actors.watcher.judge import UnitJudge
from hive_actors.watcher.messages import (
    AgentUp,
    ContainerCrash,
    RunBound,
    WatchReports,
    WatchState,
    agent_service,
)
from hive_actors.watcher.runs import RunBook

__all__ = ["CrashWatcherActor", "WatchFactory"]

log = logging.getLogger(__name__)

# A unit in these states has no live run: its InvocationID names a run that ended.
_DEAD_ACTIVE = frozenset({"inactive", "failed"})
_DEAD_SUB = frozenset(
    {"auto-restart", "auto-restart-queued", "failed-before-auto-restart",
     "dead-before-auto-restart"}
)

WatchFactory = Callable[..., SystemdWatch]
"""Makes the D-Bus reader: ``(address, is_agent, on_report, **options)`` (tests inject faults
with it)."""


def _every_unit(name: str) -> bool:
    """The reader's filter: every ``container@<name>.service`` is read. Whether ``name`` is an
    agent is decided in the actor, in mailbox order (an agent registered a moment ago must not
    have its first signals dropped by a filter that has not heard of it yet)."""
    return True


@dataclass(frozen=True)
class _WatchEnded:
    """The reader's thread ended (``error``: what it died of; None: it was asked to stop)."""

    error: BaseException | None


class CrashWatcherActor(HiveActor):
    """Watches the agents' units on D-Bus and tells each crash to the crashed agent's actor."""

    SERVICE = "watcher"

    def __init__(
        self,
        hive: Hive,
        *,
        address: str | None = None,
        rescan_interval: float = 300.0,
        call_timeout: float = 5.0,
        stop_timeout: float = 10.0,
        wall: Callable[[], float] = time.time,
        watch_factory: WatchFactory = SystemdWatch,
    ) -> None:
        """``address``: the D-Bus to watch (None: the system bus); ``call_timeout`` bounds each
        D-Bus call, ``stop_timeout`` the reader thread's start and stop (seconds); ``wall``
        stamps observations (and so crash times); ``watch_factory`` makes the reader."""
        super().__init__(name=self.SERVICE)
        self.hive = hive
        self._address = address
        self._rescan_interval = rescan_interval
        self._call_timeout = call_timeout
        self._stop_timeout = stop_timeout
        self._wall = wall
        self._factory = watch_factory
        # Private state, read and changed in this actor's thread only.
        self._runs = RunBook()
        self._intents = StopIntents()
        self._judge = UnitJudge(self._intents)
        self._agents: set[str] = set()
        self._followers: list[pykka.ActorRef[Any]] = []
        self._store: Store | None = None
        self._watch: SystemdWatch | None = None
        self._thread: WatchThread | None = None
        self._stopping = False
        self._scans = 0

    @property
    def store(self) -> Store:
        """This actor's store connection (open between start and stop)."""
        assert self._store is not None
        return self._store

    # -- life ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._store = self.hive.open_store()
        try:
            self._watch = self._factory(
                self._address,
                _every_unit,
                self._tell_self,
                now=self._wall,
                rescan_interval=self._rescan_interval,
                call_timeout=self._call_timeout,
            )
            self._thread = self._watch.start_in_thread(
                timeout=self._stop_timeout, on_exit=self._on_exit)
            self.hive.directory.register(self.SERVICE, self.actor_ref)
            # Read after registering (and before anything the reader told is handled): an
            # AgentActor that spawned an epoch before that is in the read, and the AgentUp of
            # one that spawns after it waits in the mailbox.
            self._load_registry()
        except BaseException:
            # on_stop does not run after a failed on_start: undo what did start.
            self.hive.directory.withdraw(self.SERVICE, self.actor_ref)
            self._close()
            raise
        self.log.info("watching container@*.service on %s", self._address or "the system bus")

    def on_stop(self) -> None:
        self.hive.directory.withdraw(self.SERVICE, self.actor_ref)
        self._close()

    def _close(self) -> None:
        self._stopping = True
        try:
            if self._thread is not None:
                self._thread.stop(self._stop_timeout)
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- the reader's thread: only tells ---------------------------------------------------------

    def _on_exit(self, error: BaseException | None) -> None:
        self._tell_self(_WatchEnded(error))

    def _tell_self(self, message: Observation | _WatchEnded) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # stopping: nothing is acted on any more

    # -- messages ------------------------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        match message:
            case UnitObserved() as seen:
                self._verdict(seen.agent, seen.unit, seen.when, self._judge.observed(seen))
                self._track_run(seen)
            case UnitGone() as gone:
                self._verdict(gone.agent, gone.unit, gone.when, self._judge.gone(gone))
            case StopExpected(agent=agent):
                self._intents.expect_stop(agent)
            case StopCleared(agent=agent):
                self._intents.clear(agent)
            case AgentUp(agent=agent, epoch=epoch, adopts=adopts):
                self._agents.add(agent)
                adopted = self._runs.agent_up(agent, epoch, adopts=adopts)
                if adopted is not None:
                    self._follow(RunBound(agent, f"container@{agent}.service", adopted, epoch))
            case UnitReport() as report:  # the reader could not read a unit
                self._verdict(report.agent, report.unit, report.when, report.verdict)
            case WatcherNotice() as notice:
                self._noticed(notice)
                self._follow(notice)
            case WatchReports(ref=ref):
                self._followers.append(ref)
                return WatchState(scans=self._scans, runs=dict(sorted(
                    self._runs.live_runs().items())))
            case _WatchEnded(error=error):
                if self._stopping:
                    return None
                if error is None:
                    raise HiveError("watcher: the D-Bus watcher stopped though nobody asked it to")
                raise HiveError(f"watcher: the D-Bus watcher died: {error!r}") from error
            case _:
                return super().receive(message)
        return None

    def _verdict(self, agent: str, unit: str, when: float, verdict: Verdict) -> None:
        """Act on one verdict about ``agent``'s unit (only a crash is acted on)."""
        if agent not in self._agents:
            self.log.debug("%s: %s (not an agent of this hive; ignored)", unit, verdict)
            return
        match verdict:
            case NoEvent(reason=reason):
                self.log.debug("%s: %s", unit, reason)
                return
            case Crash():
                self._crashed(agent, unit, when, verdict)
            case Unreadable(problems=problems):
                self.log.warning("%s: could not understand what systemd said (%s); nothing is "
                                 "concluded from it", unit, "; ".join(problems))
            case Stopped() | FailedStop():
                level = logging.WARNING if isinstance(verdict, FailedStop) else logging.INFO
                self.log.log(level, "%s: %s (not a crash)", unit, verdict)
            case RestartedUnseen() | GaveUp():
                self.log.warning("%s: %s (not acted on)", unit, verdict)
            case Rebooted() | RestartScheduled():
                self.log.info("%s: %s (not a crash)", unit, verdict)
        self._follow(UnitReport(agent, unit, when, verdict))

    def _crashed(self, agent: str, unit: str, when: float, verdict: Crash) -> None:
        """Tell the crashed agent's AgentActor; record the crash when none is registered."""
        epoch = self._runs.crashed(agent, verdict.invocation_id)
        if epoch is None:
            self.log.warning("%s crashed (%s) but %s has no epoch in the registry; not "
                             "acted on", unit, verdict.result, agent)
            return
        crash = ContainerCrash(
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
        if self.hive.directory.tell(agent_service(agent), crash):
            self.log.warning("%s crashed: %s (epoch %d); told its AgentActor",
                             agent, crash.describe(), epoch)
            return
        self.log.warning("%s crashed: %s (epoch %d); no AgentActor of %s runs (down, backing "
                         "off or given up): recorded only", agent, crash.describe(), epoch, agent)
        self.store.events.record(EventKind.AGENT_CRASHED, agent, {
            **crash.payload(), "ignored": f"no AgentActor of {agent} is running",
        })
        self.hive.bell.ring()

    def _track_run(self, seen: UnitObserved) -> None:
        """Keep the run book up to date with the run the observation shows, alive or ended."""
        invocation_id = seen.props.invocation_id
        if not invocation_id or seen.agent not in self._agents:
            return
        props = seen.props
        if props.active_state in _DEAD_ACTIVE or props.sub_state in _DEAD_SUB:
            self._runs.run_ended(seen.agent, invocation_id)
            return
        epoch = self._runs.run_alive(seen.agent, invocation_id)
        if epoch is not None:
            self.log.debug("%s: run %s is epoch %d", seen.unit, invocation_id, epoch)
            self._follow(RunBound(seen.agent, seen.unit, invocation_id, epoch))

    def _noticed(self, notice: WatcherNotice) -> None:
        if notice.kind == "rescanned":
            self._scans += 1
            self._load_registry()
            self.log.debug("rescanned: %s", notice.detail)
            return
        level = logging.INFO if notice.kind in ("connected", "systemd-absent") else logging.DEBUG
        self.log.log(level, "%s: %s", notice.kind, notice.detail)

    def _load_registry(self) -> None:
        epochs = {
            agent.name: agent.epoch
            for agent in self.store.registry.agents()
            if agent.state is not AgentState.DESTROYED
        }
        self._runs.load(epochs)
        self._agents = set(epochs) | {a for a in self._agents if self._runs.announced(a)}

    def _follow(self, item: Any) -> None:
        alive = []
        for ref in self._followers:
            try:
                ref.tell(item)
            except pykka.ActorDeadError:
                continue
            alive.append(ref)
        self._followers = alive
