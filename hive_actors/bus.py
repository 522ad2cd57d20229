"""BusActor: the hive's inboxes, with group commit and at-least-once hand-over.

``Send`` is acknowledged only after its commit. Concurrent sends are committed together: the
first ``Send`` of a batch tells the bus a ``_Flush``, which queues behind every message already
in the mailbox; sends that arrive before it join the batch, and the flush commits them in one
transaction, then answers each sender (an id, or its own refusal). Under load that turns 16
fsyncs into one without delaying a lone sender (its flush is next in the mailbox).

Anything else first flushes the batch, so a request never overtakes a send before it.
After each commit the bus tells each recipient's subscriber (its AgentActor) ``MailArrived``
and rings the hive's bell for the event followers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pykka
from pykka import ActorRef

from hive_actors.actor import HiveActor
from hive_actors.bell import Bell
from hive_actors.directory import Directory
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
from hive_actors.store import SendRequest, Store

__all__ = ["BusActor"]


@dataclass(frozen=True)
class _Flush:
    pass


class BusActor(HiveActor):
    """Inboxes, delivery and the runtime model override, on its own store connection."""

    SERVICE = "bus"

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        bell: Bell | None = None,
        directory: Directory | None = None,
        name: str = "bus",
    ) -> None:
        super().__init__(name=name)
        self._open_store = open_store
        self._bell = bell or Bell()
        self._directory = directory
        self._store: Store | None = None
        self._batch: list[tuple[SendRequest, pykka.Future[Any] | None]] = []
        self._subscribers: dict[str, ActorRef[Any]] = {}

    @property
    def store(self) -> Store:
        assert self._store is not None, "the bus has no store before on_start"
        return self._store

    def on_start(self) -> None:
        self._store = self._open_store()
        if self._directory is not None:
            self._directory.register(self.SERVICE, self.actor_ref)

    def on_stop(self) -> None:
        if self._directory is not None:
            self._directory.withdraw(self.SERVICE, self.actor_ref)
        # Sends never committed are reported failed to their senders, never silently dropped.
        for _, reply in self._batch:
            if reply is not None:
                reply.set_exception(exc_info=_failed(f"{self.name} stopped before the commit"))
        self._batch.clear()
        if self._store is not None:
            self._store.close()

    def receive(self, message: Any) -> Any:
        if isinstance(message, Send):
            if not self._batch:
                self.actor_ref.tell(_Flush())
            self._batch.append(
                (SendRequest(message.sender, message.recipient, message.body, message.kind),
                 self.defer_reply())
            )
            return None
        self._flush()
        match message:
            case _Flush():
                return None
            case Claim(agent=agent, generation=generation, turn_id=turn_id, limit=limit):
                claimed = self.store.messages.claim(agent, generation, turn_id, limit)
                if claimed:
                    self._bell.ring()
                return claimed
            case Ack(turn_id=turn_id):
                return self._rang(self.store.messages.ack(turn_id))
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
        return super().receive(message)

    # -- group commit -----------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            results = self.store.messages.send_many([request for request, _ in batch])
        except Exception as exc:
            # The whole batch failed (disk, lock): every sender hears it, then the bus crashes
            # and its supervisor restarts it on a fresh connection.
            for _, reply in batch:
                if reply is not None:
                    reply.set_exception(exc_info=(type(exc), exc, exc.__traceback__))
            raise
        woken: set[str] = set()
        for (request, reply), result in zip(batch, results):
            if isinstance(result, Refused):
                if reply is not None:
                    reply.set_exception(exc_info=(type(result), result, None))
                else:
                    self.log.warning("refused a send: %s", result)
                continue
            woken.add(request.recipient)
            if reply is not None:
                reply.set(result)
        if woken:
            self._bell.ring()
        for agent in sorted(woken):
            self._notify(agent)

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

    def _rang(self, count: int) -> int:
        if count:
            self._bell.ring()
        return count


def _failed(text: str) -> tuple[type[BaseException], BaseException, None]:
    exc = Refused(text)
    return (type(exc), exc, None)
