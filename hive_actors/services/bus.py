"""BusActor: the hive's inboxes, with group commit and at-least-once hand-over.

``Send``, ``Claim`` and ``Ack`` are the bus's writes; each is answered only after its commit.
Concurrent writes are committed together: the first of a batch tells the bus a ``_Flush``,
which queues behind every message already in the mailbox; the writes that arrive before it
join the batch, and the flush runs them in arrival order in ONE transaction, then answers each
caller with its result or its own refusal (a refused send never wrote anything; a refused
claim or ack is rolled back to its savepoint). Under load that turns a commit (an fsync) per
write into one per batch — the consumers' claims and acks ride along with the senders'
messages — without delaying a lone caller (its flush is next in the mailbox).

Gathering: the callers a commit answered usually write again at once (16 senders in a loop,
an agent's claim then its ack). When the ``_Flush`` comes up and fewer writes have joined
than the last commit answered, the bus waits — at most ``gather_timeout``, once per batch —
until its mailbox holds the missing number of messages, then flushes behind them. Without it
the first caller back would be committed almost alone and the batches would split in two.

Anything else first flushes the batch, so a request never overtakes a write before it.
After each commit the bus tells each recipient's subscriber (its AgentActor) ``MailArrived``
and rings the hive's bell for the event followers.

Every send is a round trip through the mailbox and a reply future, so both are leaner than
pykka's defaults (see :class:`_Mailbox` and :class:`_ReplyFuture`); their behaviour is pykka's.
"""

from __future__ import annotations

import _thread
import queue
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, cast

import pykka
from pykka import ActorRef, Timeout
from pykka._threading import ThreadingFutureResult

from hive_actors.actor import unexpected
from hive_actors.errors import Refused
from hive_actors.protocol import (
    Ack,
    Claim,
    GetModel,
    InboxStatsRequest,
    MailArrived,
    Nudge,
    Release,
    Send,
    SetModel,
    StaleMessages,
    Subscribe,
    Unsubscribe,
)
from hive_actors.services.base import ServiceActor
from hive_actors.services.bell import Bell
from hive_actors.services.directory import Directory
from hive_actors.store import SendRequest, Store

__all__ = ["GATHER_TIMEOUT", "BusActor", "BusMessage", "messages_to_await"]

GATHER_TIMEOUT = 0.0005
"""Longest wait, in seconds, for the callers of the last commit to write again (once per batch,
only while fewer have than that commit answered). A bound on the latency it can add."""


@dataclass(frozen=True)
class _Flush:
    """Commit the open batch (told to itself by the batch's first write)."""


_Write = Send | Claim | Ack
"""The requests that join a group commit."""
_WRITES = (Send, Claim, Ack)

BusMessage = (
    _Write
    | Release
    | GetModel
    | SetModel
    | InboxStatsRequest
    | StaleMessages
    | Subscribe
    | Unsubscribe
    | Nudge
    | _Flush
)
"""Every message :class:`BusActor` accepts; its ``receive`` matches each one."""


def messages_to_await(expected: int, batched: int, gathered: bool) -> int:
    """How many messages the mailbox should hold before the batch is committed (0: now).

    ``expected`` is how many callers the last commit answered, ``batched`` how many writes the
    open batch holds, ``gathered`` whether this batch already waited once.
    """
    if gathered or not batched:
        return 0
    return max(0, expected - batched)


class _Mailbox:
    """The bus's inbox: a C ``SimpleQueue`` that the bus can also wait on until it holds a
    number of messages.

    pykka's default inbox is a ``queue.Queue`` (Python-level locks and conditions on every put
    and get); every send to the bus passes through here. ``put``, ``get`` and ``empty`` are
    what pykka and the actor loop use.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._awaited = 0
        """Wake the waiter once the queue holds this many messages (0: nobody waits)."""
        self._wake = threading.Lock()
        self._wake.acquire()  # closed: released once per wait, by the put that completes it

    def put(self, envelope: Any) -> None:
        self._queue.put(envelope)
        # Unguarded peek first: nobody waits on nearly every put. A waiter publishes
        # _awaited before it counts, so a put it did not count sees it here.
        if self._awaited:
            with self._guard:
                if self._awaited and self._queue.qsize() >= self._awaited:
                    self._awaited = 0
                    self._wake.release()

    def get(self) -> Any:
        return self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until the mailbox holds ``count`` messages, at most ``timeout`` seconds.

        Called by the actor's own thread only. Returns whether the count was reached.
        """
        with self._guard:
            self._awaited = count
            if self._queue.qsize() >= count:
                self._awaited = 0
                return True
        reached = self._wake.acquire(timeout=timeout)
        with self._guard:
            if not reached and not self._awaited:
                # A put completed the wait between the timeout and the guard: take its
                # release, so the next wait starts closed.
                self._wake.acquire()
                reached = True
            self._awaited = 0
        return reached


# Makes the check-then-set of a _ReplyFuture atomic. Held for a few bytecodes; in practice only
# the bus takes it (a future is set by the thread that answers it).
_SETTING = threading.Lock()


class _ReplyFuture(pykka.ThreadingFuture[Any]):
    """pykka's threading future on one pre-acquired lock instead of a ``Condition``.

    Every ``ask`` to the bus returns one of these. pykka's ``ThreadingFuture`` waits on a
    ``threading.Condition`` (a lock allocated per wait, a deque of waiters, ``notify_all``):
    with 16 senders that was a measurable share of a send's round trip on 2 cores. One lock,
    acquired at creation and released by ``set``, does the same job: a getter waits by
    acquiring it and releases it at once, so every later or concurrent getter passes too.
    The API and its errors (``Timeout``, ``queue.Full`` on a second set, get hooks for
    ``map``/``join``/``filter``) are pykka's.
    """

    def __init__(self) -> None:
        pykka.Future.__init__(self)  # not ThreadingFuture's: it would build the Condition
        self._result: ThreadingFutureResult | None = None
        self._latch = _thread.allocate_lock()
        self._latch.acquire()

    def get(self, *, timeout: float | None = None) -> Any:
        if self._result is None and self._get_hook is None and not self._wait(timeout):
            raise Timeout(f"{timeout} seconds")
        if self._get_hook is not None:
            return pykka.Future.get(self, timeout=timeout)
        result = self._result
        assert result is not None
        if result.exc_info is not None:
            exc_type, exc_value, exc_traceback = result.exc_info
            assert exc_type is not None
            if exc_value is None:
                exc_value = exc_type()
            if exc_value.__traceback__ is not exc_traceback:
                raise exc_value.with_traceback(exc_traceback)
            raise exc_value
        return result.value

    def _wait(self, timeout: float | None) -> bool:
        if timeout is None:
            acquired = self._latch.acquire()
        elif timeout > 0:
            acquired = self._latch.acquire(timeout=timeout)
        else:
            acquired = self._latch.acquire(blocking=False)
        if acquired:
            self._latch.release()  # pass the wake-up on to the next getter
        return acquired

    def _complete(self, result: ThreadingFutureResult | None, hook: Any = None) -> None:
        with _SETTING:
            if self._result is not None or self._get_hook is not None:
                raise queue.Full
            if hook is not None:
                self._get_hook = hook
            else:
                self._result = result
        self._latch.release()

    def set(self, value: Any | None = None) -> None:
        self._complete(ThreadingFutureResult(value=value))

    def set_exception(self, exc_info: Any = None) -> None:
        assert exc_info is None or len(exc_info) == 3
        self._complete(ThreadingFutureResult(exc_info=exc_info or sys.exc_info()))

    def set_get_hook(self, func: Any) -> None:
        self._complete(None, hook=func)


class BusActor(ServiceActor):
    """Inboxes, delivery and the runtime model override, on its own store connection."""

    SERVICE = "bus"

    # pykka builds an actor's inbox and its askers' futures through these.
    _create_actor_inbox = staticmethod(_Mailbox)
    _create_future = staticmethod(_ReplyFuture)

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        bell: Bell | None = None,
        directory: Directory | None = None,
        name: str = "bus",
        gather_timeout: float = GATHER_TIMEOUT,
    ) -> None:
        super().__init__(open_store, bell=bell, directory=directory, name=name)
        self._gather_timeout = gather_timeout
        self._batch: list[tuple[_Write, pykka.Future[Any] | None]] = []
        self._expected = 0
        """How many callers the last commit answered: as many are likely to write again."""
        self._gathered = False
        """Whether the open batch already waited for them."""
        self._subscribers: dict[str, ActorRef[Any]] = {}

    def on_stop(self) -> None:
        # Writes never committed are reported failed to their callers, never silently dropped.
        for _, reply in self._batch:
            if reply is not None:
                reply.set_exception(exc_info=_failed(f"{self.name} stopped before the commit"))
        self._batch.clear()
        super().on_stop()

    def receive(self, message: BusMessage) -> Any:
        if isinstance(message, _WRITES):
            if not self._batch:
                self.actor_ref.tell(_Flush())
            self._batch.append((message, self.defer_reply()))
            return None
        if isinstance(message, _Flush):
            missing = messages_to_await(self._expected, len(self._batch), self._gathered)
            if missing:
                self._gathered = True
                cast(_Mailbox, self.actor_inbox).wait_for(missing, self._gather_timeout)
                # Behind whatever came meanwhile: those writes join this commit.
                self.actor_ref.tell(message)
                return None
        self._flush()
        match message:
            case _Flush():
                return None
            case Release(turn_id=turn_id, reason=reason):
                count = self.store.messages.release(turn_id, reason=reason)
                if count:
                    self._bell.ring()
                    for agent in self._recipients_of(turn_id):
                        self._notify(agent)
                return count
            case GetModel(agent=agent):
                return self.store.models.model(agent)
            case SetModel(agent=agent, model=model, persist=persist):
                row = self.store.models.set_model(agent, model, persist=persist)
                self._bell.ring()
                return row
            case InboxStatsRequest():
                return self.store.messages.inbox_stats()
            case StaleMessages(agent=agent):
                return self.store.messages.stale(agent)
            case Subscribe(agent=agent, ref=ref):
                self._subscribers[agent] = ref
                if self.store.messages.inbox_depth(agent):
                    self._notify(agent)
                return None
            case Unsubscribe(agent=agent, ref=ref):
                if self._subscribers.get(agent) == ref:
                    del self._subscribers[agent]
                return None
            case Nudge(agent=agent):
                self._notify(agent)
                return None
            case _:
                unexpected(self, message)

    # -- group commit -----------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._gathered = False
        self._expected = sum(1 for _, reply in batch if reply is not None)
        try:
            with self.store.db.transaction():
                results = self._apply([write for write, _ in batch])
        except Exception as exc:
            # The whole batch failed (disk, lock): every caller hears it, then the bus crashes
            # and its supervisor restarts it on a fresh connection.
            for _, reply in batch:
                if reply is not None:
                    reply.set_exception(exc_info=(type(exc), exc, exc.__traceback__))
            raise
        woken: set[str] = set()
        ring = False
        for (write, reply), result in zip(batch, results):
            if isinstance(result, Refused):
                if reply is not None:
                    reply.set_exception(exc_info=(type(result), result, result.__traceback__))
                else:
                    self.log.warning("refused %r: %s", write, result)
                continue
            if isinstance(write, Send):
                woken.add(write.recipient)
            elif result:  # a claim that took messages, an ack that settled some
                ring = True
            if reply is not None:
                reply.set(result)
        if woken or ring:
            self._bell.ring()
        for agent in sorted(woken):
            self._notify(agent)

    def _apply(self, writes: list[_Write]) -> list[Any]:
        """Run ``writes`` in order inside the open transaction; a result or a Refused each.

        Consecutive sends go to the store as one ``enqueue_many`` (one INSERT for all their
        messages, one for their events); a claim or an ack runs in its own savepoint (a nested
        ``transaction``), so its refusal rolls back only itself.
        """
        messages = self.store.messages
        results: list[Any] = []
        sends: list[SendRequest] = []
        for write in writes:
            if isinstance(write, Send):
                sends.append(SendRequest(write.sender, write.recipient, write.body, write.kind))
                continue
            if sends:
                results.extend(messages.enqueue_many(sends))
                sends = []
            try:
                if isinstance(write, Claim):
                    results.append(
                        messages.claim(write.agent, write.generation, write.turn_id, write.limit)
                    )
                else:
                    results.append(messages.ack(write.turn_id))
            except Refused as refused:
                results.append(refused)
        if sends:
            results.extend(messages.enqueue_many(sends))
        return results

    def _notify(self, agent: str) -> None:
        ref = self._subscribers.get(agent)
        if ref is None:
            return
        try:
            ref.tell(MailArrived(agent))
        except pykka.ActorDeadError:
            del self._subscribers[agent]

    def _recipients_of(self, turn_id: str) -> list[str]:
        rows = self.store.db.rows(
            "SELECT DISTINCT recipient FROM messages WHERE turn_id = ?", (turn_id,)
        )
        return [str(r[0]) for r in rows]


def _failed(text: str) -> tuple[type[BaseException], BaseException, None]:
    exc = Refused(text)
    return (type(exc), exc, None)
