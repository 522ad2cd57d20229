"""The restart decision, pure: no threads, no actors, no clock — ``now`` is an argument.

:class:`RestartPolicy` keeps what a supervisor must remember about its children (order, state,
restart history, backoff) and answers one question: *this child ended; what now?* Its answers are
:data:`Decision` values that the threaded supervisor carries out. The rules are OTP's:

- ``temporary`` children are never restarted and are forgotten when they end; ``transient`` ones
  are restarted only after an abnormal exit; ``permanent`` ones always.
- Restart intensity: a restart at time *t* counts while ``now - t <= period``; when more than
  ``intensity`` restarts count, the supervisor gives up: it stops every child in reverse start
  order and fails to its parent (:class:`Escalate`).
- Strategies pick the siblings that go down with the failed child: none (``one_for_one``), all
  (``one_for_all``), or those started after it (``rest_for_one``); they stop in reverse order and
  start again in order. Temporary siblings caught in that are stopped and forgotten.

Added from Akka/Kubernetes: exponential backoff with jitter before a child's restart, started over
when the child had stayed up for ``reset_after`` seconds, and an optional per-child limit past
which one child is *given up* (stays down until someone restarts it) while its siblings go on.
The per-child limit is a window (``intensity`` restarts in ``period`` seconds) and, optionally, a
count of failures in a row (``consecutive``): the window alone never fills once the child's
backoff has grown past its period, so a child that can never start would be retried forever; the
count gives it up after that many failures with no stable run (``reset_after``) between them,
whatever the timing.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hive_actors.errors import Conflict, NotFound
from hive_actors.supervisors.spec import (
    ChildSpec,
    RestartLimit,
    RestartType,
    Strategy,
    SupervisorFlags,
)

__all__ = [
    "ChildState",
    "ChildStatus",
    "Decision",
    "Escalate",
    "GiveUp",
    "Ignore",
    "Remove",
    "Restart",
    "RestartPolicy",
]


class ChildState(enum.Enum):
    """Where a child is in its life, as the supervisor sees it."""

    STARTING = "starting"
    """Started, not yet ready."""
    RUNNING = "running"
    """Ready and alive."""
    BACKOFF = "backoff"
    """Down, waiting out its backoff before a restart."""
    STOPPING = "stopping"
    """Being stopped by the supervisor."""
    TERMINATED = "terminated"
    """Down and staying down (stopped on request, or a transient child that exited normally)."""
    GIVEN_UP = "given_up"
    """Down for good: it failed past its own restart limit. Only ``restart_child`` revives it."""


_ALIVE = (ChildState.STARTING, ChildState.RUNNING)
# The members the decision reads, bound once: an enum member's lookup costs a call in 3.11, and
# a restart is on the path of every crash.
_BACKOFF, _STARTING = ChildState.BACKOFF, ChildState.STARTING
_TEMPORARY, _TRANSIENT = RestartType.TEMPORARY, RestartType.TRANSIENT
_ONE_FOR_ONE = Strategy.ONE_FOR_ONE


@dataclass
class ChildStatus:
    """What the policy remembers of one child."""

    spec: ChildSpec
    state: ChildState = ChildState.STARTING
    restarts: int = 0
    """Restarts so far (all time)."""
    attempt: int = 0
    """Consecutive restarts since the child was last stable; indexes the backoff."""
    failures: int = 0
    """Ends in a row (failed starts included) with no stable run between them: the count its
    limit's ``consecutive`` bounds."""
    backoff: float = 0.0
    """The delay chosen before the latest restart, in seconds."""
    started_at: float | None = None
    """When it last became ready."""
    last_failure: str | None = None
    pending: int = 0
    """Token of the restart this child waits for (0: none)."""
    history: deque[float] = field(default_factory=deque)
    """Times of its own restarts, for its per-child limit."""

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to do: the child stays down (``TERMINATED``)."""

    child: str
    why: str


@dataclass(frozen=True, slots=True)
class Remove:
    """Forget this temporary child."""

    child: str


@dataclass(frozen=True, slots=True)
class Restart:
    """Stop ``stop`` now (already in reverse order), then forget ``remove`` (temporary siblings,
    via :meth:`RestartPolicy.remove`), and after ``delay`` seconds start ``start`` (in order) —
    for restart token ``token``."""

    failed: str
    stop: tuple[str, ...]
    start: tuple[str, ...]
    remove: tuple[str, ...]
    delay: float
    token: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The child failed past its own limit: it stays down; its siblings are untouched."""

    child: str
    why: str
    limit: str = "window"
    """The limit that was hit: ``window`` (``intensity`` restarts in ``period``) or
    ``consecutive`` (failures in a row)."""
    count: int = 0
    """The failures that limit counted: restarts in the window, or failures in a row."""


@dataclass(frozen=True, slots=True)
class Escalate:
    """Too many restarts: stop every child in ``stop`` (reverse order), then fail upward."""

    why: str
    stop: tuple[str, ...]


Decision = Ignore | Remove | Restart | GiveUp | Escalate


def _within(history: deque[float], now: float, limit: RestartLimit) -> bool:
    """Record a restart at ``now``; True while the count in the window stays within the limit."""
    history.append(now)
    while history and now - history[0] > limit.period:
        history.popleft()
    return len(history) <= limit.intensity


class RestartPolicy:
    """The memory and the decisions of one supervisor, in virtual time."""

    def __init__(self, flags: SupervisorFlags, rng: Callable[[], float]) -> None:
        self.flags = flags
        self._rng = rng
        self._children: list[ChildStatus] = []
        self._by_id: dict[str, ChildStatus] = {}
        """The same children by id: a lookup costs the same with 1 agent or 200."""
        self._history: deque[float] = deque()
        self._tokens = 0
        self._groups: dict[int, list[ChildStatus]] = {}
        """Restart token → the children it restarts (in start order), until it is due: a
        restart's children are found without a walk over every child."""
        self._limit = RestartLimit(flags.intensity, flags.period)

    # -- the children ---------------------------------------------------------------------------

    @property
    def children(self) -> list[ChildStatus]:
        """In start order."""
        return list(self._children)

    def get(self, child_id: str) -> ChildStatus:
        child = self._by_id.get(child_id)
        if child is None:
            raise NotFound(f"supervisor: no child {child_id!r}")
        return child

    def add(self, spec: ChildSpec) -> ChildStatus:
        """Append a child (to be started) after the existing ones."""
        if spec.id in self._by_id:
            raise Conflict(f"supervisor: a child {spec.id!r} already exists; pick another id")
        status = ChildStatus(spec)
        self._children.append(status)
        self._by_id[spec.id] = status
        return status

    def remove(self, child_id: str) -> None:
        if self._by_id.pop(child_id, None) is not None:
            self._children = [c for c in self._children if c.id != child_id]

    def set_state(self, child_id: str, state: ChildState) -> None:
        self.get(child_id).state = state

    def ready(self, child_id: str, now: float) -> None:
        """The child became ready: it runs from ``now``."""
        child = self.get(child_id)
        child.state = ChildState.RUNNING
        child.started_at = now
        child.pending = 0

    def revive(self, child_id: str) -> None:
        """An explicit restart_child: forget the child's failures and backoff."""
        child = self.get(child_id)
        child.attempt = 0
        child.failures = 0
        child.backoff = 0.0
        child.history.clear()
        child.pending = 0
        child.state = ChildState.STARTING

    def alive_in_reverse(self) -> tuple[str, ...]:
        return tuple(c.id for c in reversed(self._children) if c.state in _ALIVE)

    # -- the decision ---------------------------------------------------------------------------

    def exited(self, child_id: str, abnormal: bool, reason: str, now: float) -> Decision:
        """The child ended (or failed to start): decide what happens."""
        child = self.get(child_id)
        if abnormal:
            child.last_failure = reason
        spec = child.spec
        kind = spec.restart
        if kind is _TEMPORARY:
            self.remove(child_id)
            return Remove(child_id)
        if kind is _TRANSIENT and not abnormal:
            child.state = ChildState.TERMINATED
            return Ignore(child_id, "transient child exited normally")

        flags = self.flags
        backoff = flags.backoff
        if child.started_at is not None and now - child.started_at >= backoff.reset_after:
            # It had stayed up: its backoff and its failures in a row start over.
            child.attempt = 0
            child.failures = 0
        child.failures += 1
        lim = spec.limit
        if lim is not None:
            if not _within(child.history, now, lim):
                child.state = ChildState.GIVEN_UP
                child.pending = 0
                restarts = len(child.history) - 1
                return GiveUp(
                    child_id,
                    f"{child_id} given up after {restarts} restarts "
                    f"in {lim.period:g} s (limit {lim.intensity}); last failure: {reason}",
                    "window",
                    restarts,
                )
            if lim.consecutive is not None and child.failures >= lim.consecutive:
                child.state = ChildState.GIVEN_UP
                child.pending = 0
                return GiveUp(
                    child_id,
                    f"{child_id} given up after {child.failures} failures in a row "
                    f"(limit {lim.consecutive}); last failure: {reason}",
                    "consecutive",
                    child.failures,
                )
        child.state = _BACKOFF
        if not _within(self._history, now, self._limit):
            stop = self.alive_in_reverse()
            for c in self._children:
                if c.state is not ChildState.GIVEN_UP:
                    c.state = ChildState.TERMINATED
                c.pending = 0
            return Escalate(
                f"reached max restart intensity: more than {self._limit.intensity} restarts "
                f"in {self._limit.period:g} s (last: {child_id} {reason})",
                stop,
            )

        child.backoff = backoff.delay(child.attempt, self._rng())
        child.attempt += 1
        child.restarts += 1
        child.started_at = None

        affected = [] if flags.strategy is _ONE_FOR_ONE else self._affected(child)
        self._tokens += 1
        if not affected:  # one_for_one: no walk over every sibling
            stop = ()
            remove: tuple[str, ...] = ()
            group = [child]
            start: tuple[str, ...] = (child_id,)
        else:
            stop = tuple(c.id for c in reversed(affected) if c.state in _ALIVE)
            remove = tuple(c.id for c in affected if c.spec.restart is _TEMPORARY)
            group = [c for c in self._children
                     if c is child or (c in affected and c.id not in remove)]
            start = tuple(c.id for c in group)
        for c in group:
            c.state = _BACKOFF
            c.pending = self._tokens
        self._groups[self._tokens] = group
        if len(self._groups) > len(self._children):
            # A child waits on one token at most: the extra groups are restarts called off
            # (their children terminated or revived meanwhile), whose token is never due.
            self._groups = {
                token: waiting for token, waiting in self._groups.items()
                if any(c.pending == token for c in waiting)
            }
        # Temporary siblings are forgotten by the caller once it has stopped them.
        return Restart(
            failed=child_id,
            stop=stop,
            start=start,
            remove=remove,
            delay=child.backoff,
            token=self._tokens,
        )

    def due(self, token: int) -> tuple[str, ...]:
        """The children (in order) still waiting for restart ``token``; they become STARTING."""
        ids = []
        for c in self._groups.pop(token, ()):
            # Still this token's: not revived, removed or restarted anew meanwhile.
            cid = c.spec.id
            if c.pending == token and c.state is _BACKOFF and self._by_id.get(cid) is c:
                c.state = _STARTING
                c.pending = 0
                ids.append(cid)
        return tuple(ids)

    def _affected(self, child: ChildStatus) -> list[ChildStatus]:
        """Siblings that go down with ``child`` (in start order), excluding those already down
        for good."""
        strategy = self.flags.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return []
        index = self._children.index(child)
        pool = self._children if strategy is Strategy.ONE_FOR_ALL else self._children[index:]
        return [
            c
            for c in pool
            if c is not child and c.state in (*_ALIVE, ChildState.BACKOFF)
        ]
