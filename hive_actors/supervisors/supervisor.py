"""The threaded supervisor: carries out :mod:`~hive_actors.supervisors.policy`'s decisions.

It starts its children one at a time, in order, each waited for with the readiness handshake and
its ``ready_timeout`` (the supervisor's mailbox never blocks on that: readiness and timeouts arrive
as messages). It watches every child; a ``Down`` becomes a decision of the pure policy, which the
supervisor executes: stop siblings in reverse order (each given its ``shutdown`` seconds, then
abandoned, which is reported), wait out the backoff on its clock, start again in order — or give
up and escalate by crashing with :class:`~hive_actors.errors.Escalation`, which its own supervisor
sees as a ``Down``. A supervisor is ready when all of its initial children are.

A failure to start an initial child fails the supervisor's own start, naming the child and why.

A child waiting out its backoff is not in the start queue: the children queued behind it start
meanwhile, and a child that fails to start (or never becomes ready) frees its place at once. A
``one_for_one`` subclass whose children are independent of each other (the agents' supervisor)
may set :attr:`Supervisor.concurrent_starts` above 1, so that a slow start holds up no more than
its own place; every other supervisor starts one child at a time, in order, as OTP does.

A supervisor decides on a child only once the child has ended: its ``Down`` (with the real exit
reason) is the one route, handled in the supervisor's own thread like every other message.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pykka
from pykka import ActorRef

from hive_actors.actor import HiveActor, unexpected
from hive_actors.clock import Clock, Timer
from hive_actors.errors import (
    Conflict,
    Escalation,
    NotFound,
    Refused,
    StartFailure,
    UnexpectedMessage,
)
from hive_actors.lifecycle import wait_exit
from hive_actors.messages import Down, ExitReason, Ready, is_abnormal
from hive_actors.supervisors.messages import (
    ChildEvent,
    ChildInfo,
    ChildStats,
    CountChildren,
    DeleteChild,
    RestartChild,
    StartChild,
    Statistics,
    SupervisorMessage,
    TerminateChild,
    WhichChildren,
    _ReadyTimeout,
    _RestartDue,
)
from hive_actors.supervisors.policy import (
    ChildState,
    Escalate,
    GiveUp,
    Ignore,
    Remove,
    Restart,
    RestartPolicy,
)
from hive_actors.supervisors.spec import (
    ChildSpec,
    RestartType,
    Strategy,
    SupervisorFlags,
    check_unique,
)

__all__ = ["Supervisor"]

_DOWN_STATES = (ChildState.TERMINATED, ChildState.GIVEN_UP)


class Supervisor(HiveActor):
    """An OTP-style supervisor over :class:`~hive_actors.actor.HiveActor` children."""

    ready_on_start = False
    concurrent_starts = 1
    """How many children may be on their way to ready at once. More than 1 only takes effect in
    a ``one_for_one`` supervisor (its children do not depend on each other's start); the others
    start one child at a time, in order."""

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        flags: SupervisorFlags | None = None,
        *,
        name: str | None = None,
        clock: Clock | None = None,
        rng: Callable[[], float] | None = None,
        on_child_event: Callable[[ChildEvent], None] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        specs = list(children)
        check_unique(specs)
        self.flags = flags or SupervisorFlags()
        self._initial = specs
        self._policy = RestartPolicy(self.flags, rng or random.Random().random)
        self._refs: dict[str, ActorRef[Any]] = {}
        self._mons: dict[str, int] = {}
        self._ready_timers: dict[str, Timer] = {}
        self._restart_timers: dict[int, Timer] = {}
        self._queue: deque[str] = deque()
        self._starting: set[str] = set()
        """Children started and not yet ready (at most :attr:`_slots`)."""
        one_for_one = self.flags.strategy is Strategy.ONE_FOR_ONE
        self._slots = max(1, self.concurrent_starts) if one_for_one else 1
        self._booting = True
        self._waiters: dict[str, list[pykka.Future[Any]]] = {}
        self._notify = on_child_event

    # -- life -----------------------------------------------------------------------------------

    def on_start(self) -> None:
        for spec in self._initial:
            self._policy.add(spec)
            self._queue.append(spec.id)
        try:
            self._pump()
        except Exception:
            # on_stop does not run after a failed on_start: stop what did start, newest first.
            self._stop_children(self._policy.alive_in_reverse())
            raise

    def on_stop(self) -> None:
        for timer in [*self._ready_timers.values(), *self._restart_timers.values()]:
            timer.cancel()
        self._stop_children(self._policy.alive_in_reverse())
        for waiters in self._waiters.values():
            for fut in waiters:
                fut.set_exception(exc_info=_exc_info(StartFailure(f"{self.name} stopped")))
        self._waiters.clear()

    def on_child_event(self, event: ChildEvent) -> None:
        """Hook for subclasses and owners: a child started, restarts, gave up, was abandoned."""
        if self._notify is not None:
            self._notify(event)

    # -- messages -------------------------------------------------------------------------------

    def receive(self, message: SupervisorMessage) -> Any:
        match message:
            case Ready(ref=ref, tag=(str() as cid, str() as urn)):
                self._on_ready(cid, urn, ref)
            case Down(reason=reason, tag=(str() as cid, str() as urn)):
                self._on_down(cid, urn, reason)
            case _ReadyTimeout(id=cid, urn=urn):
                self._on_ready_timeout(cid, urn)
            case _RestartDue(token=token):
                self._restart_timers.pop(token, None)
                self._queue.extend(self._policy.due(token))
                self._pump()
            case StartChild(spec=spec):
                if not isinstance(spec, ChildSpec):
                    raise Refused(f"{self.name}: start_child needs a ChildSpec, got {spec!r}")
                self._policy.add(spec)
                return self._enqueue_and_wait(spec.id)
            case TerminateChild(id=cid):
                self._terminate(cid)
            case RestartChild(id=cid):
                child = self._policy.get(cid)
                if child.state not in _DOWN_STATES:
                    raise Conflict(
                        f"{self.name}: child {cid!r} is {child.state.value}; "
                        "terminate it before restarting it"
                    )
                self._policy.revive(cid)
                return self._enqueue_and_wait(cid)
            case DeleteChild(id=cid):
                child = self._policy.get(cid)
                if child.state not in _DOWN_STATES:
                    raise Conflict(
                        f"{self.name}: child {cid!r} is {child.state.value}; "
                        "terminate it before deleting it"
                    )
                self._policy.remove(cid)
            case WhichChildren():
                return [
                    ChildInfo(
                        c.id,
                        self._refs.get(c.id),
                        c.state.value,
                        c.spec.restart.value,  # type: ignore[union-attr]
                        _is_supervisor(self._refs.get(c.id)),
                    )
                    for c in self._policy.children
                ]
            case CountChildren():
                rows = [(c, self._refs.get(c.id)) for c in self._policy.children]
                sups = sum(1 for _, r in rows if _is_supervisor(r))
                return {
                    "specs": len(rows),
                    "active": sum(1 for c, _ in rows if c.state is ChildState.RUNNING),
                    "supervisors": sups,
                    "workers": len(rows) - sups,
                }
            case Statistics():
                return [
                    ChildStats(
                        c.id,
                        c.state.value,
                        c.restarts,
                        c.last_failure,
                        c.backoff,
                        c.spec.restart.value,  # type: ignore[union-attr]
                        c.spec.meta,
                    )
                    for c in self._policy.children
                ]
            case Ready() | Down():
                raise UnexpectedMessage(
                    f"{self} got a {type(message).__name__} of {message.name} with a tag it "
                    f"never gave (a child's is (id, urn)): {message.tag!r}"
                )
            case _:
                unexpected(self, message)
        return None

    # -- starting, in order ---------------------------------------------------------------------

    def _enqueue_and_wait(self, cid: str) -> None:
        reply = self.defer_reply()
        if reply is not None:
            self._waiters.setdefault(cid, []).append(reply)
        self._queue.append(cid)
        self._pump()

    def _pump(self) -> None:
        """Start queued children while fewer than :attr:`_slots` are on their way to ready."""
        while len(self._starting) < self._slots and self._queue:
            cid = self._queue.popleft()
            try:
                child = self._policy.get(cid)
            except NotFound:
                continue
            if child.state is not ChildState.STARTING or cid in self._refs:
                continue
            self._launch(child.spec)
        if self._booting and not self._starting and not self._queue:
            self._booting = False
            self.signal_ready()

    def _launch(self, spec: ChildSpec) -> None:
        self._starting.add(spec.id)
        try:
            ref = spec.start()
            if not isinstance(ref, ActorRef):
                raise TypeError(f"start returned {ref!r}, not an actor ref")
        except Exception as exc:  # noqa: BLE001  (whatever a start raises is its failure)
            self._starting.discard(spec.id)
            self._start_failed(spec.id, f"{type(exc).__name__}: {exc}")
            return
        urn = ref.actor_urn
        self._refs[spec.id] = ref
        self._mons[spec.id] = self.watch(ref, (spec.id, urn))
        self._ready_timers[spec.id] = self.send_after(spec.ready_timeout, _ReadyTimeout(spec.id, urn))
        self.await_ready(ref, (spec.id, urn))

    def _current(self, cid: str, urn: str) -> bool:
        ref = self._refs.get(cid)
        return ref is not None and ref.actor_urn == urn

    def _on_ready(self, cid: str, urn: str, ref: ActorRef[Any]) -> None:
        if not self._current(cid, urn):
            return
        timer = self._ready_timers.pop(cid, None)
        if timer is not None:
            timer.cancel()
        self._policy.ready(cid, self.clock.now())
        self._starting.discard(cid)
        self.log.info("child %s ready", cid)
        child = self._policy.get(cid)
        self.on_child_event(
            ChildEvent(cid, "started", "ready", child.restarts, meta=child.spec.meta)
        )
        for fut in self._waiters.pop(cid, []):
            fut.set(ref)
        self._pump()

    def _on_ready_timeout(self, cid: str, urn: str) -> None:
        if not self._current(cid, urn) or self._policy.get(cid).state is not ChildState.STARTING:
            return
        timeout = self._policy.get(cid).spec.ready_timeout
        self._stop_children((cid,))
        self._start_failed(cid, f"did not become ready within {timeout:g} s")

    def _start_failed(self, cid: str, why: str) -> None:
        """A child could not start: fatal while booting or for a waiting caller; else a failure.
        Either way its place in the start queue is free: the next queued children start now,
        not after this one's backoff."""
        self._starting.discard(cid)
        detail = f"child {cid!r} of {self.name} failed to start: {why}"
        self.log.error("%s", detail)
        child = self._policy.get(cid)
        self.on_child_event(ChildEvent(cid, "start_failed", why, child.restarts, meta=child.spec.meta))
        if self._booting:
            raise StartFailure(detail)
        waiters = self._waiters.pop(cid, [])
        if waiters:
            # A start asked for by a caller: the caller gets the error, nothing is kept.
            for fut in waiters:
                fut.set_exception(exc_info=_exc_info(StartFailure(detail)))
            if child.restarts == 0 or child.spec.restart is RestartType.TEMPORARY:
                self._policy.remove(cid)
            else:
                child.state = ChildState.TERMINATED
            self._pump()
            return
        self._decide(cid, True, f"failed to start: {why}")
        self._pump()

    # -- ending -----------------------------------------------------------------------------------

    def _on_down(self, cid: str, urn: str, reason: ExitReason) -> None:
        if not self._current(cid, urn):
            return  # an old incarnation, or one we stopped ourselves
        self._forget_ref(cid)
        child = self._policy.get(cid)
        if child.state is ChildState.STARTING:
            self._start_failed(cid, str(reason))
            return
        self.log.log(
            30 if is_abnormal(reason) else 20, "child %s exited: %s", cid, reason
        )
        self._decide(cid, is_abnormal(reason), str(reason))

    def _decide(self, cid: str, abnormal: bool, reason: str) -> None:
        child = self._policy.get(cid)
        meta = child.spec.meta
        decision = self._policy.exited(cid, abnormal, reason, self.clock.now())
        if isinstance(decision, Restart):
            if decision.stop:
                self._stop_children(decision.stop)
            for rid in decision.remove:
                self._policy.remove(rid)
            delay, token = decision.delay, decision.token
            # Issued (its timer set, or queued), then told: whoever hears of it can rely on it.
            if delay > 0:
                self._restart_timers[token] = self.send_after(delay, _RestartDue(token))
            else:
                self._queue.extend(self._policy.due(token))
            self.on_child_event(
                ChildEvent(cid, "restarting", reason, child.restarts, delay, meta=meta)
            )
            self.log.warning(
                "restarting %s in %.3f s (restart %d): %s",
                ", ".join(decision.start),
                delay,
                child.restarts,
                reason,
            )
            if delay <= 0 or decision.stop:
                # Due now, or siblings stopped (one may have held a place in the start queue).
                # A failed start frees its place itself (_start_failed).
                self._pump()
            return
        match decision:
            case Ignore(why=why):
                self.on_child_event(ChildEvent(cid, "exited", why, meta=meta))
            case Remove():
                self.on_child_event(ChildEvent(cid, "exited", f"temporary: {reason}", meta=meta))
            case GiveUp(why=why, limit=limit, count=count):
                self.log.error("%s", why)
                self.on_child_event(ChildEvent(cid, "given_up", why, child.restarts, meta=meta,
                                               limit=limit, count=count))
            case Escalate(why=why, stop=stop):
                self._stop_children(stop)
                raise Escalation(f"{self.name} gave up: {why}")

    def _terminate(self, cid: str) -> None:
        child = self._policy.get(cid)
        token = child.pending
        # A group restart (one_for_all, rest_for_one) is one timer for every child in it: it
        # is called off only when no other child waits for it.
        if token and not any(c.pending == token for c in self._policy.children if c is not child):
            timer = self._restart_timers.pop(token, None)
            if timer is not None:
                timer.cancel()
        self._stop_children((cid,))
        for fut in self._waiters.pop(cid, []):
            fut.set_exception(exc_info=_exc_info(StartFailure(f"child {cid!r} was terminated")))
        self._starting.discard(cid)
        if child.spec.restart is RestartType.TEMPORARY:
            self._policy.remove(cid)
        else:
            child.state = ChildState.TERMINATED
            child.pending = 0
        self._pump()

    def _forget_ref(self, cid: str) -> ActorRef[Any] | None:
        ref = self._refs.pop(cid, None)
        mref = self._mons.pop(cid, None)
        if ref is not None and mref is not None:
            self.unwatch(ref, mref)
        timer = self._ready_timers.pop(cid, None)
        if timer is not None:
            timer.cancel()
        return ref

    def _stop_children(self, ids: Sequence[str]) -> None:
        """Stop these children, in the order given, each within its shutdown timeout."""
        for cid in ids:
            ref = self._forget_ref(cid)
            self._starting.discard(cid)
            if ref is None:
                continue
            child = self._policy.get(cid)
            # A child stopped for a restart keeps its BACKOFF state (and restart token).
            before = child.state
            child.state = ChildState.STOPPING
            if not _stop_and_wait(ref, child.spec.shutdown):
                why = f"did not stop within {child.spec.shutdown:g} s; abandoned"
                self.log.error("child %s %s", cid, why)
                child.last_failure = why
                self.on_child_event(ChildEvent(cid, "abandoned", why, meta=child.spec.meta))
            child.state = before if before not in (ChildState.STARTING, ChildState.RUNNING) else ChildState.TERMINATED


def _stop_and_wait(ref: ActorRef[Any], timeout: float) -> bool:
    """Stop ``ref`` and wait for its end, also when it is ending already (it crashed, or was
    told to stop before): pykka's blocking stop returns at once for an actor whose ``on_stop``
    is under way. False when it has not ended within ``timeout`` seconds."""
    ref.stop(block=False)
    return wait_exit(ref, timeout) is not None


def _is_supervisor(ref: ActorRef[Any] | None) -> bool:
    return ref is not None and ref.actor_class is not None and issubclass(ref.actor_class, Supervisor)


def _exc_info(exc: BaseException) -> tuple[type[BaseException], BaseException, None]:
    return (type(exc), exc, None)
