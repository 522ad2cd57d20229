"""CrashWatcherActor: every word on the agents' containers ending, turned into crash messages.

It is in the hive's tree on every backend. One route, on plain actor messages
(:data:`WatcherMessage`, a closed union):

1. The container backend's exits: this actor subscribes to the backend
   (``backend.subscribe``); the callback runs in the backend's thread (the process backend's
   reaper) and only ``tell``\\ s this actor a :class:`~hive_actors.watcher.messages.BackendExit`.
2. systemd's units, where there is a D-Bus to read (``[hive] backend = "nixos"`` or a
   ``[watcher] bus_address``): a :class:`~hive_actors.watcher.SystemdWatch` reads the
   ``container@<name>.service`` units in a thread of its own and tells this actor what it read
   — observations of units, units gone, notices — deciding nothing. Elsewhere no reader runs.
3. The AgentActors tell this actor :class:`~hive_actors.watcher.messages.AgentUp` before they
   start a container, and the container backend the agents use
   (:class:`~hive_actors.watcher.intents.WatchedBackend`) tells it each stop the hive is about
   to make (:class:`~hive_actors.watcher.reports.StopExpected`), each start
   (:class:`~hive_actors.watcher.reports.StopCleared`) and the run each start began
   (:class:`~hive_actors.watcher.messages.RunStarted`, for a backend that names its runs). Its
   mailbox is FIFO: an exit or a D-Bus signal caused by a start or a stop is handled after the
   message that announced it.
4. This actor alone owns the run books (:class:`~hive_actors.watcher.runs.RunBook`: which agent
   epoch each run belongs to — one for the units' runs, systemd's ``InvocationID``, one for the
   backend's runs, its ``run_id``; the same epochs, the same rule) and the
   stop intents (:class:`~hive_actors.watcher.intents.StopIntents`), and classifies every
   D-Bus observation with the one :func:`~hive_actors.watcher.classify.classify`
   (:class:`~hive_actors.watcher.judge.UnitJudge`). A backend exit is judged with the same
   data: the backend's own ``expected``, the stop intents, the run book.
5. A crash — a :class:`~hive_actors.watcher.Crash` verdict on an agent's unit, or an exit the
   hive did not ask for — becomes a :class:`~hive_actors.watcher.messages.ContainerCrash` for
   the epoch its run belongs to (a late exit of an older run names the older epoch), told to
   that agent's AgentActor (the directory has it under
   :func:`~hive_actors.watcher.messages.agent_service`) by the one :meth:`_tell_crash`. The
   AgentActor dies of a crash of its own epoch (and records one of another epoch as ignored);
   its supervisor sees the ``Down`` and decides, in its own thread, as for every other exit.
   With no AgentActor registered (backing off, given up, stopped), the crash is recorded here
   and nothing else happens.
6. Every other verdict (a stop, a failed stop, a reboot, systemd giving up, unreadable input)
   is logged, never acted on: nothing restarts on a guess.

When the reader's thread dies, this actor crashes with it and its supervisor starts a new one,
which starts a new run book from the registry's epochs and reads every unit afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import pykka

from hive_actors.actor import HiveActor, unexpected
from hive_actors.containers.base import ContainerExit
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
    BackendExit,
    ContainerCrash,
    ExitHandled,
    ExitOutcome,
    RunBound,
    RunStarted,
    WatchReports,
    WatchState,
    agent_service,
)
from hive_actors.watcher.props import DEFAULT_UNIT_PREFIX
from hive_actors.watcher.runs import RunBook

__all__ = ["CrashWatcherActor", "WatchFactory", "WatcherMessage"]

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


WatcherMessage: TypeAlias = (
    UnitObserved
    | UnitGone
    | UnitReport
    | WatcherNotice
    | StopExpected
    | StopCleared
    | AgentUp
    | RunStarted
    | BackendExit
    | WatchReports
    | _WatchEnded
)
"""Every message the CrashWatcherActor handles (:meth:`CrashWatcherActor.receive` matches
each, exhaustively); anything else is a bug and crashes it with a clear error."""


class CrashWatcherActor(HiveActor):
    """Hears of the agents' containers ending (from the backend, and from systemd on D-Bus
    where there is one) and tells each crash to the crashed agent's actor."""

    SERVICE = "watcher"

    def __init__(
        self,
        hive: Hive,
        *,
        backend: Any = None,
        dbus: bool = True,
        address: str | None = None,
        rescan_interval: float = 300.0,
        call_timeout: float = 5.0,
        stop_timeout: float = 10.0,
        wall: Callable[[], float] = time.time,
        watch_factory: WatchFactory = SystemdWatch,
        unit_prefix: str = DEFAULT_UNIT_PREFIX,
    ) -> None:
        """``backend``: the container backend whose exits this actor subscribes to (None: none);
        ``dbus``: whether to read systemd's units on D-Bus at all; ``address``: the D-Bus to
        watch (None: the system bus); ``call_timeout`` bounds each D-Bus call, ``stop_timeout``
        the reader thread's start and stop (seconds); ``wall`` stamps observations (and so
        crash times); ``watch_factory`` makes the reader; ``unit_prefix``: the agents' units are
        ``<unit_prefix>@<agent>.service`` (``container``: NixOS; ``hive-agent``: the nspawn
        backend's transient units)."""
        super().__init__(name=self.SERVICE)
        self.hive = hive
        self._backend = backend
        self._dbus = dbus
        self._unsubscribe: Callable[[], None] | None = None
        self._address = address
        self._rescan_interval = rescan_interval
        self._call_timeout = call_timeout
        self._stop_timeout = stop_timeout
        self._wall = wall
        self._factory = watch_factory
        self._prefix = unit_prefix
        # Private state, read and changed in this actor's thread only.
        self._runs = RunBook()
        self._backend_runs = RunBook()
        self._judged_at_start: set[str] = set()
        """The runs whose unheard exits :meth:`_read_live_runs` judged (their reports may
        still arrive: they ended between the subscription and the read)."""
        """The backend's runs (its ``run_id``\\ s), kept apart from the units' runs (systemd's
        ``InvocationID``\\ s) so that where both are read each has its own live run; both books
        hear the same epochs and apply the same rule."""
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
            if self._backend is not None:
                self._unsubscribe = self._backend.subscribe(self._on_backend_exit)
            if self._dbus:
                # The default prefix is not passed: a factory made before prefixes (a test's
                # fault injector) need not know the word.
                prefix = {} if self._prefix == DEFAULT_UNIT_PREFIX else {
                    "unit_prefix": self._prefix}
                self._watch = self._factory(
                    self._address,
                    _every_unit,
                    self._tell_self,
                    now=self._wall,
                    rescan_interval=self._rescan_interval,
                    call_timeout=self._call_timeout,
                    **prefix,
                )
                self._thread = self._watch.start_in_thread(
                    timeout=self._stop_timeout, on_exit=self._on_exit)
            self.hive.directory.register(self.SERVICE, self.actor_ref)
            # Read after registering (and before anything the reader told is handled): an
            # AgentActor that spawned an epoch before that is in the read, and the AgentUp of
            # one that spawns after it waits in the mailbox.
            self._load_registry()
            self._read_live_runs()
        except BaseException:
            # on_stop does not run after a failed on_start: undo what did start.
            self.hive.directory.withdraw(self.SERVICE, self.actor_ref)
            self._close()
            raise
        sources = ["container exits from the backend"] if self._backend is not None else []
        if self._dbus:
            sources.append(
                f"{self._prefix}@*.service on {self._address or 'the system bus'}")
        self.log.info("watching %s", " and ".join(sources) or "nothing (no backend, no D-Bus)")

    def on_stop(self) -> None:
        self.hive.directory.withdraw(self.SERVICE, self.actor_ref)
        self._close()

    def _close(self) -> None:
        self._stopping = True
        try:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            if self._thread is not None:
                self._thread.stop(self._stop_timeout)
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- the reader's and the backend's threads: only tell ---------------------------------------

    def _on_exit(self, error: BaseException | None) -> None:
        self._tell_self(_WatchEnded(error))

    def _on_backend_exit(self, exit: ContainerExit) -> None:
        """The backend's exit callback (its thread, the process backend's reaper): a tell."""
        self._tell_self(BackendExit(exit))

    def _tell_self(self, message: Observation | BackendExit | _WatchEnded) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # stopping: nothing is acted on any more

    # -- messages ------------------------------------------------------------------------------

    def receive(self, message: WatcherMessage) -> Any:
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
                self._backend_runs.agent_up(agent, epoch, adopts=adopts)
                if adopted is not None:
                    self._follow(RunBound(agent, f"{self._prefix}@{agent}.service", adopted, epoch))
            case RunStarted(agent=agent, run_id=run_id):
                if agent in self._agents:
                    self._backend_runs.run_alive(agent, run_id)
            case BackendExit(exit=exit):
                if exit.run_id not in self._judged_at_start:  # not heard twice
                    self._backend_exit(exit)
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
                unexpected(self, message)
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
        self._tell_crash(ContainerCrash(
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
        ))

    def _backend_exit(self, exit: ContainerExit) -> None:
        """Judge an exit the backend reported: a crash unless the backend or the hive expected
        it; of the epoch the run book ties its run to."""
        agent = exit.name
        outcome: ExitOutcome
        epoch: int | None = None
        if exit.expected:
            self.log.debug("container %s ended as the hive asked: %s", agent, exit.result)
            self._backend_runs.run_ended(agent, exit.run_id)
            outcome = "expected"
        elif agent not in self._agents:
            self.log.debug("container %s ended (%s): not an agent of this hive; ignored",
                           agent, exit.result)
            outcome = "not-an-agent"
        elif self._intents.hive_stop(agent):
            self.log.info("container %s ended (%s) while the hive stops it: not a crash",
                          agent, exit.result)
            self._backend_runs.run_ended(agent, exit.run_id)
            outcome = "hive-stop"
        else:
            epoch = self._backend_runs.crashed(agent, exit.run_id)
            if epoch is None:
                self.log.warning("container %s ended (%s) but %s has no epoch in the registry; "
                                 "not acted on", agent, exit.result, agent)
                outcome = "no-epoch"
            else:
                self._tell_crash(ContainerCrash(
                    agent=agent,
                    epoch=epoch,
                    result=exit.result,
                    exit_status=exit.exit_status,
                    signal=exit.signal,
                    when=exit.when,
                    source="backend",
                    detail=("the container's main process ended (run "
                            f"{exit.run_id or 'unnamed'})"),
                ))
                outcome = "crash"
        self._follow(ExitHandled(exit, outcome, epoch))

    def _tell_crash(self, crash: ContainerCrash) -> None:
        """Tell the crashed agent's AgentActor; record the crash when none is registered (the
        one ending of every route: D-Bus and backend alike)."""
        agent, epoch = crash.agent, crash.epoch
        if self.hive.directory.tell(agent_service(agent), crash):
            self.log.warning("%s crashed: %s (epoch %d, seen by %s); told its AgentActor",
                             agent, crash.describe(), epoch, crash.source)
            return
        self.log.warning("%s crashed: %s (epoch %d, seen by %s); no AgentActor of %s runs "
                         "(down, backing off or given up): recorded only",
                         agent, crash.describe(), epoch, crash.source, agent)
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
        self._backend_runs.load(epochs)
        self._agents = set(epochs) | {a for a in self._agents if self._runs.announced(a)}

    def _read_live_runs(self) -> None:
        """Tie the runs the backend has alive now to the agents' current epochs (as a D-Bus
        rescan ties the runs it reads): a container started before this watcher ran (at the
        hive's start, or while a new watcher was on its way) was told to nobody, and a late
        exit of it must still be told apart from a newer epoch's run. Read after subscribing:
        a run that ends meanwhile is in the mailbox too. Only a backend that names its runs
        (``runs``, the process backend) is read.

        A container that ended while no watcher listened was told to nobody either: when the
        backend's last word on an agent is an exit the hive did not ask for, and the agent's
        AgentActor is up (registered, its container up by the registry), that exit is judged
        now, as if it had just arrived."""
        runs = getattr(self._backend, "runs", None)
        if not callable(runs):
            return
        unheard: list[ContainerExit] = []
        for agent, run in sorted(runs().items()):
            if agent not in self._agents:
                continue
            if isinstance(run, ContainerExit):
                if not run.expected:
                    unheard.append(run)
            elif run:
                self._backend_runs.run_alive(agent, run)
        if not unheard:
            return
        up = {row.name for row in self.store.registry.agents()
              if row.state in (AgentState.IDLE, AgentState.BUSY)}
        for exit in unheard:
            if exit.name in up and self.hive.directory.find(agent_service(exit.name)):
                self.log.warning("container %s ended (%s) while no crash watcher listened; "
                                 "judged now", exit.name, exit.result)
                if exit.run_id:
                    self._judged_at_start.add(exit.run_id)
                self._backend_exit(exit)

    def _follow(self, item: Any) -> None:
        alive = []
        for ref in self._followers:
            try:
                ref.tell(item)
            except pykka.ActorDeadError:
                continue
            alive.append(ref)
        self._followers = alive
