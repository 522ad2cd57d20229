"""The actor base of the hive: pykka's ThreadingActor, with every crash reported.

pykka runs actors but supervises nothing: it calls ``on_failure`` only for a failed ``tell``, keeps
an actor running after its ``ask`` handler raised, and merely logs a failure in ``on_start`` or
``on_stop``. :class:`HiveActor` owns the actor loop instead, so that every way an actor can end
goes through one exit path, which records an :class:`~hive_actors.messages.ExitReason` and tells
every monitor a :class:`~hive_actors.messages.Down`:

============================  ==========================================================
what happened                 what the actor does
============================  ==========================================================
``on_start`` raised           dies ``Crashed(phase="on_start")``; ``on_stop`` is not run
a handler raised ``Refused``  answers the caller with it (or logs it, for a tell); lives on
a handler raised anything     answers the caller with it (ask), runs ``on_failure`` and
else (tell *or* ask)          ``on_stop``, dies ``Crashed(phase="receive")``
``on_stop`` raised            dies ``Crashed(phase="on_stop")``
stopped (``ref.stop()``)      runs ``on_stop``, dies ``Normal``
============================  ==========================================================

Readiness: an actor is ready when ``on_start`` returned, unless its class sets
``ready_on_start = False`` and calls :meth:`HiveActor.signal_ready` itself (after binding a socket,
say). Supervisors start children in order and wait for this handshake.

Messages are typed (frozen dataclasses) and dispatched by :meth:`HiveActor.receive`, which
subclasses implement with ``match`` over a closed union of the messages they accept (declared
beside the actor, e.g. ``BusMessage``); the match ends with ``case _: unexpected(self, message)``,
which the type checker accepts only when every member was matched (``unexpected`` takes
``Never``, as ``typing.assert_never`` does), and which at run time fails with
:class:`~hive_actors.errors.UnexpectedMessage`, naming the actor and the message's type: a
message outside the union is a bug and crashes the actor (an ``ask`` is answered with the error).

Every actor's state has one owner: its own thread. Every message, from whichever thread it is
told, is queued and handled there, one at a time, in the order it arrived.
"""

from __future__ import annotations

import logging
import queue
from typing import Any, ClassVar, Never, NoReturn

import pykka
from pykka import ActorRef, ActorRegistry

from hive_actors import lifecycle
from hive_actors.clock import Clock, SystemClock, Timer
from hive_actors.errors import HiveError, Refused, UnexpectedMessage
from hive_actors.messages import Crashed, ExitReason, Normal

__all__ = ["HiveActor", "default_clock", "unexpected"]

log = logging.getLogger(__name__)

_default_clock = SystemClock()


def default_clock() -> Clock:
    """The process-wide real clock, shared so all timers use one scheduler thread."""
    return _default_clock


class _ActorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every record with the actor's name, so a log line says who spoke."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['actor']}] {msg}", kwargs  # type: ignore[index]


def unexpected(actor: HiveActor, message: Never) -> NoReturn:
    """The default case of every ``receive``: ``case _: unexpected(self, message)``.

    For the type checker this is ``typing.assert_never``: ``message`` must have been narrowed to
    ``Never``, so a member of the actor's union that no ``case`` matched is a type error
    (``Argument 2 to "unexpected" has incompatible type "X"``). At run time pykka hands
    ``on_receive`` any object, so it raises :class:`~hive_actors.errors.UnexpectedMessage`
    naming the actor and the message's type; the actor crashes of it (a bug in the sender).
    """
    shown = repr(message)
    if len(shown) > 200:
        shown = shown[:200] + "…"
    raise UnexpectedMessage(
        f"{actor} got an unexpected message of type {type(message).__qualname__}: {shown}"
    )


# pykka's private surface, all in one place. HiveActor builds on pykka's public hooks —
# ``on_start``, ``on_stop``, ``on_failure`` (called by the loop below, with pykka's meaning) and
# ``on_receive`` (which dispatches to ``receive``) — and on pykka's public ``ActorRef``,
# ``ActorRegistry``, ``Future``, ``actor_inbox`` and ``actor_stopped``. Where pykka offers no public
# hook, it overrides these private ones (pykka 4.x), each for the reason given:
#
# * ``_create_actor_inbox``: pykka's only way to choose the inbox; a C ``SimpleQueue`` instead
#   of a ``queue.Queue`` on every message of every actor.
# * ``_actor_loop``: pykka's loop loses crashes (``on_failure`` only for a failed tell, an ask
#   handler that raised leaves the actor running, a failed ``on_start``/``on_stop`` only logged);
#   this one ends every life on one exit path that records an ExitReason and tells monitors.
# * ``_stop``: pykka's ``ActorRef.stop`` lands here (its private ``_ActorStop`` message); the
#   override records an ``on_stop`` that raised as ``Crashed(phase="on_stop")`` instead of only
#   logging it.
#
# and calls, without overriding them: ``_handle_receive`` (pykka's dispatch of its own stop and
# proxy messages, then ``on_receive``) and ``_actor_loop_teardown`` (answers the asks still in
# the inbox with ``ActorDeadError``). (BusActor additionally overrides ``_create_actor_inbox``
# and ``_create_future``; see hive_actors/services/bus.py.)
class HiveActor(pykka.ThreadingActor):
    """An actor whose every ending is recorded and reported to its monitors."""

    ready_on_start: ClassVar[bool] = True
    """If False, the actor calls :meth:`signal_ready` itself when it is ready."""

    # pykka's default inbox is a queue.Queue (Python-level lock and conditions on every put
    # and get); the C SimpleQueue does the same job — put, get, empty, qsize — for less, on
    # every message of every actor.
    @staticmethod
    def _create_actor_inbox() -> Any:  # pykka's ActorInbox protocol: put, get, empty, qsize
        return queue.SimpleQueue()

    def __init__(self, *, name: str | None = None, clock: Clock | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self.clock: Clock = clock or _default_clock
        self.log = _ActorLog(logging.getLogger(type(self).__module__), {"actor": self.name})
        self._life = lifecycle.Life(self.actor_urn, self.name)
        self._life.ref = self.actor_ref
        self._reply_to: pykka.Future[Any] | None = None
        self._stop_reason: ExitReason = Normal()

    def __str__(self) -> str:
        return f"{type(self).__name__}({self.name})"

    # -- what subclasses implement -------------------------------------------------------------

    def receive(self, message: Never) -> Any:
        """Handle one message; the return value answers an ``ask``.

        HiveActor itself accepts no message (pykka's stop and proxy messages never reach here):
        a subclass narrows ``message`` to its own union and ends its ``match`` with
        :func:`unexpected`, or delegates the rest to ``super().receive``.
        """
        unexpected(self, message)

    # -- tools for subclasses ------------------------------------------------------------------

    def signal_ready(self) -> None:
        """Declare this actor ready (for classes with ``ready_on_start = False``)."""
        self._life.set_ready()

    def watch(self, target: ActorRef[Any], tag: Any = None) -> int:
        """Receive a :class:`~hive_actors.messages.Down` when ``target`` ends."""
        return lifecycle.monitor(target, self.actor_ref, tag)

    def unwatch(self, target: ActorRef[Any], mref: int) -> None:
        lifecycle.demonitor(target, mref)

    def await_ready(self, target: ActorRef[Any], tag: Any = None) -> None:
        """Receive a :class:`~hive_actors.messages.Ready` once ``target`` is ready."""
        lifecycle.notify_ready(target, self.actor_ref, tag)

    def send_after(self, delay: float, message: Any) -> Timer:
        """Tell this actor ``message`` after ``delay`` seconds of its clock."""
        ref = self.actor_ref
        return self.clock.call_later(delay, lambda: ref.tell(message))

    def defer_reply(self) -> pykka.Future[Any] | None:
        """Take over the answer to the message being handled, to give it later.

        The handler's return value is then ignored; the actor must ``set`` (or
        ``set_exception``) the returned future itself. None for a ``tell``.
        """
        reply, self._reply_to = self._reply_to, None
        return reply

    # -- the loop (replaces pykka's, which loses crashes) --------------------------------------

    def on_receive(self, message: Any) -> Any:
        # pykka's public hook; ``message`` is any object a caller told or asked.
        return self.receive(message)

    def _actor_loop(self) -> None:
        reason: ExitReason = Normal()
        try:
            try:
                self.on_start()
            except Exception as exc:
                reason = Crashed.from_exception("on_start", exc)
                self.log.error("%s", reason, exc_info=exc)
                ActorRegistry.unregister(self.actor_ref)
                self.actor_stopped.set()
            else:
                if self.ready_on_start:
                    self._life.set_ready()
                reason = self._loop()
        except BaseException as exc:  # SystemExit/KeyboardInterrupt raised inside a handler
            reason = Crashed.from_exception("receive", exc)
            ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            raise
        finally:
            self._actor_loop_teardown()
            self._life.set_exit(reason)

    def _loop(self) -> ExitReason:
        while not self.actor_stopped.is_set():
            ended = self._handle_envelope(self.actor_inbox.get())
            if ended is not None:
                return ended
        return self._stop_reason

    def _handle_envelope(self, envelope: Any) -> ExitReason | None:
        """Handle one envelope in the actor's thread; the exit reason if the actor dies of it."""
        self._reply_to = envelope.reply_to
        try:
            response = self._handle_receive(envelope.message)
        except Refused as exc:
            if self._reply_to is not None:
                self._reply_to.set_exception()
            else:
                self.log.warning("refused %r: %s", envelope.message, exc)
        except Exception as exc:  # noqa: BLE001  (any other exception is the actor's crash)
            if self._reply_to is not None:
                self._reply_to.set_exception()
            return self._crash(exc)
        else:
            if self._reply_to is not None:
                self._reply_to.set(response)
        return None

    def _crash(self, exc: Exception) -> ExitReason:
        reason = Crashed.from_exception("receive", exc)
        # A HiveError is a deliberate end with a message that says it all (a container that
        # died, a stall, an escalation); a traceback is for bugs.
        self.log.error("%s", reason, exc_info=None if isinstance(exc, HiveError) else exc)
        ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.on_failure(type(exc), exc, exc.__traceback__)
        except Exception:
            self.log.exception("on_failure raised")
        try:
            self.on_stop()
        except Exception:
            self.log.exception("on_stop raised after a crash")
        return reason

    def _stop(self) -> None:
        ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.on_stop()
        except Exception as exc:
            self._stop_reason = Crashed.from_exception("on_stop", exc)
            self.log.error("%s", self._stop_reason, exc_info=exc)

