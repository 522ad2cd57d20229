"""AgentsSupervisor: one AgentActor per agent, restarted with backoff, given up past its limit.

A ``one_for_one`` supervisor with dynamic children and a per-agent restart limit (``[supervision]
agent_restarts`` in ``agent_period`` seconds, and ``agent_max_consecutive_failures`` in a row): an
agent that keeps crashing, or can never start, is *given up* and stays down until the operator
revives it, while every other agent goes on. Every crash and restart is recorded in the events log
and told to the manager as a structured ``system`` message (a
:class:`~hive_actors.agent.notices.SupervisionNotice`: agent, generation, result, exit status,
restart n of m, next try or given up) whose sentence is in the crash's own words ("alice crashed:
exit-code 1; restart 2 of 5 in 60 s; next try in 4 s", "alice given up after 6 crashes in 60 s;
last: signal SIGKILL (9); …", "alice given up after 10 failures in a row (limit [supervision]
agent_max_consecutive_failures = 10); last: …"); when the manager itself crashes, the operator is
the one told: the notice is kept in the event's payload (the dashboard shows it).

A crash, whoever saw it (the D-Bus crash watcher, the container backend's reaper, the agent's
own stall check), reaches the agent's AgentActor as a ``ContainerCrash``; the actor dies of it
(``AgentCrashed``), and this supervisor sees the ``Down`` and decides in its own thread, as for
every other exit: the notice is written from that exit reason (:func:`describe_exit`).

Agents start independently of each other: up to :attr:`AgentsSupervisor.concurrent_starts` at
once, and one waiting out its backoff holds up no other's start.

It also carries out the operator's decisions: an approved spawn starts the agent; an approved
config commit is applied and the agent restarted on it. Each outcome is recorded on the approval
(``carried_out``, ``outcome``); an approval decided as the hive went down is carried out when
it starts again, before its agent starts. An AgentActor may ask for a planned restart of itself
between turns (:class:`RestartAgent`): done like an applied config's, no crash counted or told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hive_actors.agent.actor import AgentActor
from hive_actors.agent.notices import NoticeEvent, SupervisionNotice
from hive_actors.agent.runtime import AgentRuntime
from hive_actors.errors import Conflict, NotFound, Refused
from hive_actors.hive import agents_flags
from hive_actors.messages import Crashed, Down, ExitReason
from hive_actors.protocol import DecisionMade, Send, Subscribe
from hive_actors.store import AgentState, ApprovalKind, ApprovalStatus, MessageKind, Store
from hive_actors.store.events import EventKind
from hive_actors.supervisors.messages import ChildEvent, SupervisorMessage
from hive_actors.supervisors.policy import ChildState
from hive_actors.supervisors.spec import ChildSpec, RestartLimit, SupervisorFlags
from hive_actors.supervisors.supervisor import Supervisor
from hive_actors.watcher.messages import AgentCrashed, ContainerCrash

__all__ = [
    "AgentsSupervisor",
    "AgentsSupervisorMessage",
    "DestroyAgent",
    "RestartAgent",
    "ReviveAgent",
    "SpawnAgent",
    "StopAgent",
]

# Agents the supervisor brings back when the hive starts: whatever was meant to be running.
_RESUME = {
    AgentState.PENDING, AgentState.STARTING, AgentState.IDLE, AgentState.BUSY,
    AgentState.WAITING_APPROVAL, AgentState.WAITING_OPERATOR, AgentState.CRASHED,
    AgentState.BACKOFF,
}


@dataclass(frozen=True)
class SpawnAgent:
    """Start a registered agent (pending, stopped…); answers once it is up."""

    name: str


@dataclass(frozen=True)
class StopAgent:
    """Stop an agent and keep it down (state ``stopped``)."""

    name: str


@dataclass(frozen=True)
class ReviveAgent:
    """Start a given-up, stopped or kept-state agent again, its failures forgotten."""

    name: str


@dataclass(frozen=True)
class DestroyAgent:
    """Stop an agent and destroy its container, keeping its state dir (K3PT ST4T3) or not."""

    name: str
    keep_state: bool


@dataclass(frozen=True)
class RestartAgent:
    """A planned restart an AgentActor asks for between two turns (the manager's container
    would mount more: see ``NixosBackend.view_changed``): not a crash, so no restart is
    counted against its limit and nobody is told. Ignored unless the agent runs."""

    name: str
    reason: str


AgentsSupervisorMessage = (
    SpawnAgent | StopAgent | ReviveAgent | DestroyAgent | RestartAgent | DecisionMade
    | SupervisorMessage
)
"""Every message :class:`AgentsSupervisor` accepts: the operator's agent requests, the approval
queue's decisions, and every :class:`~hive_actors.supervisors.supervisor.Supervisor` message
(handed on to the base class, whose ``receive`` ends with ``unexpected``)."""


class AgentsSupervisor(Supervisor):
    """The agents' supervisor: restarts, give-up, crash notices, decisions."""

    SERVICE = "agents"
    concurrent_starts = 8
    """Agents on their way to ready at once: an agent whose container is slow to come up (or
    never does, until its ready timeout) holds up no other's start, while a hive's start does
    not boot every container at the same moment."""

    def __init__(
        self,
        runtime: AgentRuntime,
        flags: SupervisorFlags,
        limit: RestartLimit,
        *,
        on_event: Callable[[ChildEvent], None] | None = None,
    ) -> None:
        """``on_event`` sees every child event first (a benchmark's probe, say)."""
        super().__init__([], flags, name="agents", clock=runtime.clock, on_child_event=on_event)
        self.rt = runtime
        self.limit = limit
        self._store: Store | None = None
        self._why: dict[str, str] = {}
        """Per agent: its latest end in the operator's words, until a notice uses it."""
        self._crashes: dict[str, ContainerCrash] = {}
        """Per agent: the container crash its AgentActor died of, recorded with the decision."""

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    @classmethod
    def flags_for(cls, runtime: AgentRuntime) -> tuple[SupervisorFlags, RestartLimit]:
        return agents_flags(runtime.hive.config.supervision)

    def spec(self, name: str) -> ChildSpec:
        return ChildSpec(
            name,
            lambda: AgentActor.start(self.rt, name),
            shutdown=self.rt.stop_grace + 20.0,
            ready_timeout=120.0,
            limit=self.limit,
            meta=name,
        )

    # -- life --------------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._store = self.rt.hive.open_store()
        self.rt.hive.directory.register(self.SERVICE, self.actor_ref)
        self.rt.hive.directory.tell("approvals", Subscribe("*", self.actor_ref))
        super().on_start()  # ready at once: no agent is critical to the hive's start
        resume = [agent.name for agent in self.store.registry.agents(_RESUME)]
        # An older hive recorded a restart's stop and the new start in two steps: a kill
        # between them left the agent stopped, though no operator stopped it.
        for name in self.store.registry.stopped_by_restart():
            self.log.warning("%s was left stopped by a restart of the hive: starting it again",
                             name)
            resume.append(name)
        # Approvals decided while the hive went down before carrying them out: their configs
        # are applied now, before the agents start on them.
        for approval in self.store.approvals.outstanding():
            if self._carry_out_outstanding(approval) and approval.agent not in resume:
                resume.append(approval.agent)
        # Agents come back after that, one by one: one that cannot start is a child failure
        # (backoff, then given up), never a failure of the whole hive.
        for name in resume:
            self._policy.add(self.spec(name))
            self._queue.append(name)
        self._pump()

    def on_stop(self) -> None:
        super().on_stop()
        self.rt.hive.directory.withdraw(self.SERVICE, self.actor_ref)
        if self._store is not None:
            self._store.close()

    # -- messages ----------------------------------------------------------------------------------

    def receive(self, message: AgentsSupervisorMessage) -> Any:
        if isinstance(message, Down):
            self._keep_why(message)
            return super().receive(message)
        match message:
            case SpawnAgent(name=name):
                return self._start_agent(name)
            case StopAgent(name=name):
                self._child(name)
                self._terminate(name)
                self.store.registry.set_state(name, AgentState.STOPPED, reason="operator stop")
                self.rt.hive.bell.ring()
                return None
            case ReviveAgent(name=name):
                return self._revive(name)
            case DestroyAgent(name=name, keep_state=keep):
                return self._destroy(name, keep)
            case RestartAgent(name=name, reason=reason):
                self._restart_planned(name, reason)
                return None
            case DecisionMade(approval=approval):
                self._on_decision(approval)
                return None
            case _:  # a Supervisor message (the type checker holds it to SupervisorMessage)
                return super().receive(message)

    def _keep_why(self, down: Down) -> None:
        """Keep a current child's end in words before the base class decides on it: its
        notices carry only the reason's text."""
        tag = down.tag
        if isinstance(tag, tuple) and len(tag) == 2:
            cid, urn = tag
            if not (isinstance(cid, str) and isinstance(urn, str)):
                return
            crash = _crash_of(down.reason)
            if self._current(cid, urn):
                self._why[cid] = describe_exit(down.reason)
                if crash is not None:
                    self._crashes[cid] = crash
            elif crash is not None:
                # An AgentActor that crashed while it was being stopped or replaced: nothing to
                # decide, but the crash happened and the log says so.
                self._event(EventKind.AGENT_CRASHED, cid, {
                    **crash.payload(),
                    "ignored": "its AgentActor was already being stopped or replaced",
                })

    def _child(self, name: str) -> Any:
        try:
            return self._policy.get(name)
        except NotFound:
            raise NotFound(f"agent {name} is not running under the agents supervisor") from None

    def _start_agent(self, name: str) -> None:
        row = self.store.registry.get(name)
        if any(c.id == name for c in self._policy.children):
            child = self._policy.get(name)
            if child.state in (ChildState.RUNNING, ChildState.STARTING, ChildState.BACKOFF):
                raise Conflict(f"agent {name} is already {child.state.value}")
            self._policy.remove(name)
        if row.state is AgentState.DESTROYED:
            raise Refused(f"agent {name} is destroyed: revive it (kept state) or spawn it anew")
        self._policy.add(self.spec(name))
        self._enqueue_and_wait(name)

    def _revive(self, name: str) -> None:
        row = self.store.registry.get(name)
        if row.state is AgentState.DESTROYED:
            if not row.kept_state:
                raise Refused(f"agent {name} was purged: there is no state to revive")
            self.store.registry.register(name, role=row.role)
        elif row.state not in (AgentState.GIVEN_UP, AgentState.STOPPED, AgentState.CRASHED):
            raise Conflict(f"agent {name} is {row.state}: only a given-up, stopped or kept-state "
                           "agent can be revived")
        self.rt.hive.bell.ring()
        return self._start_agent(name)

    def _destroy(self, name: str, keep_state: bool) -> None:
        if any(c.id == name for c in self._policy.children):
            self._terminate(name)
            self._policy.remove(name)
        row = self.store.registry.get(name)
        if row.state is not AgentState.DESTROYED:
            if row.state not in (AgentState.STOPPED, AgentState.GIVEN_UP, AgentState.CRASHED,
                                 AgentState.BACKOFF, AgentState.DRAFT, AgentState.PENDING):
                self.store.registry.set_state(name, AgentState.STOPPED, reason="destroy")
            self.store.registry.destroy(name, keep_state=keep_state)
        self.rt.backend.destroy(name, keep_state=keep_state)
        if not keep_state:
            self.rt.purge(name)
            if row.state is AgentState.DESTROYED and row.kept_state:
                # A purge of K3PT ST4T3: recorded once the files are gone.
                self.store.registry.purge(name)
        self.rt.hive.bell.ring()

    def _restart_planned(self, name: str, reason: str) -> None:
        """Stop ``name``'s AgentActor and start a new one at once, as an applied config
        does: the mail waiting stays in the bus for the new actor. One that does not run now
        (stopped, backing off, given up, already restarting) is left alone."""
        child = next((c for c in self._policy.children if c.id == name), None)
        if child is None or child.state is not ChildState.RUNNING:
            self.log.info("planned restart of %s (%s) skipped: it is not running", name, reason)
            return
        self.log.info("restarting %s: %s", name, reason)
        self._terminate(name)
        self._policy.remove(name)
        try:
            self._start_agent(name)
        except Exception as exc:  # noqa: BLE001  (logged: the start's own failure path decides)
            self.log.error("planned restart of %s failed: %s", name, exc)

    def _on_decision(self, approval: Any) -> None:
        """Carry an approved decision out, once: one already carried out (a decision also
        found outstanding at start, or told twice) is left alone, so that doing it again
        restarts no agent and tells the manager nothing."""
        if approval.status is not ApprovalStatus.APPROVED or self._carried_out(approval):
            return
        try:
            if approval.kind in (ApprovalKind.SPAWN, ApprovalKind.SPAWN_COMMIT):
                self.rt.prepare(approval)
                self._start_agent(approval.agent)
                outcome = "agent starting"
            elif approval.kind is ApprovalKind.APPLY_COMMIT:
                self.rt.prepare(approval)
                if any(c.id == approval.agent for c in self._policy.children):
                    self._terminate(approval.agent)
                    self._policy.remove(approval.agent)
                self._start_agent(approval.agent)
                outcome = "config applied; agent restarting"
            elif approval.kind is ApprovalKind.REVIVE:
                self._revive(approval.agent)
                outcome = "agent reviving"
            else:
                return
        except Exception as exc:  # noqa: BLE001  (any failure is the approval's outcome)
            outcome = self._not_carried_out(approval, exc)
        self._record_outcome(approval, outcome)

    def _carry_out_outstanding(self, approval: Any) -> bool:
        """At start: carry out the disk part of an approval the hive went down before carrying
        out (the agent starts with the others); True when its agent is to start."""
        try:
            row = self.store.registry.get(approval.agent)
            if row.state is AgentState.DESTROYED:
                raise Refused(f"agent {approval.agent} was destroyed since")
            if approval.kind is not ApprovalKind.REVIVE:  # a revive has nothing on disk
                self.rt.prepare(approval)
        except Exception as exc:  # noqa: BLE001  (any failure is the approval's outcome)
            self._record_outcome(approval, self._not_carried_out(approval, exc))
            return False
        self.log.warning("approval %d (%s %s) was decided before the hive went down: carried "
                         "out now", approval.id, approval.kind, approval.agent)
        self._record_outcome(approval, "carried out when the hive started again")
        return True

    def _carried_out(self, approval: Any) -> bool:
        """Whether the store already records an outcome for ``approval``."""
        try:
            return self.store.approvals.get(approval.id).carried_out is not None
        except NotFound:
            return False

    def _not_carried_out(self, approval: Any, exc: Exception) -> str:
        self.log.error("approval %d of %s could not be carried out: %s",
                       approval.id, approval.agent, exc)
        self._tell_manager(
            f"approval {approval.id} ({approval.kind} {approval.agent}) was approved but "
            f"could not be carried out: {exc}",
            about=approval.agent,
        )
        return f"failed: {exc}"

    def _record_outcome(self, approval: Any, outcome: str) -> None:
        try:
            self.store.approvals.record_outcome(approval.id, outcome)
        except (Conflict, NotFound) as exc:
            self.log.warning("approval %d: outcome %r not recorded: %s", approval.id, outcome, exc)
        self.rt.hive.bell.ring()

    # -- crash notices -----------------------------------------------------------------------------

    def on_child_event(self, event: ChildEvent) -> None:
        super().on_child_event(event)
        self._record(event)

    def _record(self, event: ChildEvent) -> None:
        """Record a child event: the registry's state, the events log, the manager's notice."""
        name = event.child
        crash = self._crashes.pop(name, None)
        if crash is not None:
            # The crash that ended the agent, before what the supervisor did about it.
            self._event(EventKind.AGENT_CRASHED, name, crash.payload())
        if event.kind == "restarting":
            why = self._why.pop(name, event.detail)
            window = len(self._policy.get(name).history)
            text = (f"{name} crashed: {why}; restart {window} of {self.limit.intensity} in "
                    f"{self.limit.period:g} s; next try in {_seconds(event.delay)} s")
            self._mark(name, AgentState.CRASHED, why)
            self._mark(name, AgentState.BACKOFF, f"next try in {_seconds(event.delay)} s")
            notice = self._notice(name, "restarting", crash, why, text, restart=window,
                                  next_try_s=event.delay)
            told = self._tell_manager(notice.body(), about=name, text=text)
            self._event(EventKind.AGENT_RESTARTING, name, {
                "reason": why, "error": event.detail, "restart": window,
                "limit": self.limit.intensity, "period": self.limit.period, "delay": event.delay,
                "restarts": event.restarts, "notice": text, "told": told,
            })
        elif event.kind == "given_up":
            why = self._why.pop(name, event.detail)
            if event.limit == "consecutive":
                crashes = event.count
                text = (f"{name} given up after {crashes} failures in a row (limit [supervision] "
                        f"agent_max_consecutive_failures = {self.limit.consecutive}); last: {why}; "
                        "it stays down until the operator revives it")
            else:
                crashes = len(self._policy.get(name).history)
                text = (f"{name} given up after {crashes} crashes in {self.limit.period:g} s; "
                        f"last: {why}; it stays down until the operator revives it")
            self._mark(name, AgentState.CRASHED, why)
            self._mark(name, AgentState.GIVEN_UP, why)
            notice = self._notice(name, "given_up", crash, why, text, crashes=crashes,
                                  limit_hit=event.limit or "window")
            told = self._tell_manager(notice.body(), about=name, text=text)
            self._event(EventKind.AGENT_GIVEN_UP, name, {
                "reason": why, "error": event.detail, "crashes": crashes,
                "limit": self.limit.intensity, "period": self.limit.period,
                "limit_hit": event.limit or "window",
                "max_consecutive": self.limit.consecutive, "notice": text, "told": told,
            })
        elif event.kind == "start_failed":
            self._why.setdefault(name, f"failed to start: {event.detail}")
            self._event(EventKind.AGENT_CRASHED, name, {"reason": event.detail, "phase": "start"})
        else:
            self._why.pop(name, None)

    def _mark(self, name: str, state: AgentState, reason: str) -> None:
        try:
            row = self.store.registry.get(name)
            if row.state is not state and row.state is not AgentState.DESTROYED:
                self.store.registry.set_state(name, state, reason=reason[:500])
        except Refused as exc:
            self.log.warning("cannot mark %s %s: %s", name, state, exc)
        self.rt.hive.bell.ring()

    def _event(self, kind: EventKind, name: str, payload: dict[str, Any]) -> None:
        self.store.events.record(kind, name, payload)
        self.rt.hive.bell.ring()

    def _notice(self, name: str, event: NoticeEvent, crash: ContainerCrash | None, why: str,
                text: str, **facts: Any) -> SupervisionNotice:
        """The structured notice of ``name``'s end (see :mod:`hive_actors.agent.notices`)."""
        try:
            generation: int | None = self.store.registry.get(name).generation
        except NotFound:
            generation = None
        if crash is not None:
            result, status, sig = crash.result, crash.exit_status, crash.signal
        else:
            result = "failed to start" if why.startswith("failed to start") else "error"
            status = sig = None
        return SupervisionNotice(
            agent=name, generation=generation, event=event, result=result, exit_status=status,
            signal=sig, reason=why, restart=facts.get("restart"),
            restarts_allowed=self.limit.intensity, period=self.limit.period,
            next_try_s=facts.get("next_try_s"), text=text, crashes=facts.get("crashes"),
            limit_hit=facts.get("limit_hit"),
        )

    def _tell_manager(self, body: str, *, about: str, text: str | None = None) -> str:
        """Send ``body`` to the manager as a ``system`` message; returns who is told: the
        manager's name, or ``operator`` when the notice is about the manager itself (or there
        is none) and stays in the event log for the dashboard (``text``: the body in words,
        for the log, when the body is a structured notice)."""
        text = body if text is None else text
        manager = self.store.registry.manager()
        if manager is None or manager.name == about:
            self.log.warning("operator notice: %s", text)
            return "operator"
        if not self.rt.hive.directory.tell(
            "bus", Send("hive", manager.name, body, MessageKind.SYSTEM)
        ):
            self.log.warning("the bus is down; notice for %s kept in the event log only: %s",
                             manager.name, text)
            return "operator"
        return manager.name


def _crash_of(reason: ExitReason) -> ContainerCrash | None:
    if isinstance(reason, Crashed) and isinstance(reason.exception, AgentCrashed):
        return reason.exception.crash
    return None


def describe_exit(reason: ExitReason) -> str:
    """An agent's end in the operator's words: the crash (``exit-code 1``, ``stalled (…)``), a
    failed start, or the error that ended its actor."""
    crash = _crash_of(reason)
    if crash is not None:
        return crash.describe()
    if isinstance(reason, Crashed):
        if reason.phase == "on_start":
            return f"failed to start: {reason.message}"
        return f"{reason.message} ({reason.error_type})"
    return str(reason)


def _seconds(value: float) -> str:
    """``4`` for 4.0, ``0.05`` for 0.05, ``12.3`` for 12.34: short, and never ``0.0``."""
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"

