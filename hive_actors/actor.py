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
subclasses implement with ``match``; an unknown message is a bug and crashes the actor.

Sender's turns: an actor may list message types (``runs_on_sender``) that a sender hands over
with :func:`tell_now`. When the actor is idle — nothing queued, nothing being handled — the
message is handled at once in the sender's own thread, saving the wake-up of the actor's
thread (the crash watcher's path to the agents' supervisor). It is still the actor's turn:
the actor's loop and such senders take one turn lock per message, a sender takes it only when
no message came before its own, and a handler that raises in a sender's turn makes the actor
die of it in its own thread, as if it had raised there. Otherwise the message is queued like
any other.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from typing import Any, ClassVar

import pykka
from pykka import ActorRef, ActorRegistry

from hive_actors import lifecycle
from hive_actors.clock import Clock, SystemClock, Timer
from hive_actors.errors import HiveError, Refused
from hive_actors.messages import Crashed, ExitReason, Normal

__all__ = ["HiveActor", "default_clock", "tell_now"]

log = logging.getLogger(__name__)

_default_clock = SystemClock()


def default_clock() -> Clock:
    """The process-wide real clock, shared so all timers use one scheduler thread."""
    return _default_clock


class _ActorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every record with the actor's name, so a log line says who spoke."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['actor']}] {msg}", kwargs  # type: ignore[index]


class _TurnInbox:
    """The inbox of an actor whose senders may take its turn: a C ``SimpleQueue``, the turn
    lock, and the count of the messages put and not yet handled (``put``, ``get`` and
    ``empty`` are what pykka and the actor loop use)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.turn = threading.Lock()
        """Held while a message is handled, by the actor's thread or a sender's."""
        self._count = threading.Lock()
        self.unhandled = 0
        """Messages put and not yet handled (read under :attr:`turn`)."""

    def put(self, envelope: Any) -> None:
        with self._count:
            self.unhandled += 1
        self._queue.put(envelope)

    def get(self) -> Any:
        return self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def handled(self) -> None:
        with self._count:
            self.unhandled -= 1


_turn_takers: dict[str, weakref.ref[HiveActor]] = {}
"""Live actors with ``runs_on_sender`` types, by URN (each entry goes with its actor)."""


def _take_turns(actor: HiveActor) -> None:
    urn = actor.actor_urn
    _turn_takers[urn] = weakref.ref(actor, lambda _: _turn_takers.pop(urn, None))


def tell_now(ref: ActorRef[Any], message: Any) -> None:
    """Tell ``ref`` ``message``, handled at once in this thread if its actor lists the
    message's type in ``runs_on_sender`` and is idle (see the module's doc); else queued.
    Raises pykka's ``ActorDeadError`` as ``tell`` does."""
    entry = _turn_takers.get(ref.actor_urn)
    actor = entry() if entry is not None else None
    if actor is None or not isinstance(message, actor.runs_on_sender) or not actor._sender_turn(
        message
    ):
        ref.tell(message)


class _SenderCrashed:
    """Wakes the actor's loop after a handler raised in a sender's turn: it dies of it."""


class HiveActor(pykka.ThreadingActor):
    """An actor whose every ending is recorded and reported to its monitors."""

    ready_on_start: ClassVar[bool] = True
    """If False, the actor calls :meth:`signal_ready` itself when it is ready."""

    runs_on_sender: ClassVar[tuple[type, ...]] = ()
    """Message types a sender may have handled in its own thread while the actor is idle
    (:func:`tell_now`)."""

    # pykka's default inbox is a queue.Queue (Python-level lock and conditions on every put
    # and get); the C SimpleQueue does the same job — put, get, empty, qsize — for less, on
    # every message of every actor.
    @staticmethod
    def _create_actor_inbox() -> Any:  # pykka's ActorInbox protocol: put, get, empty, qsize
        return queue.SimpleQueue()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.runs_on_sender:
            cls._create_actor_inbox = staticmethod(_TurnInbox)  # type: ignore[method-assign]

    def __init__(self, *, name: str | None = None, clock: Clock | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self.clock: Clock = clock or _default_clock
        self.log = _ActorLog(logging.getLogger(type(self).__module__), {"actor": self.name})
        self._life = lifecycle.Life(self.actor_urn, self.name)
        self._life.ref = self.actor_ref
        self._reply_to: pykka.Future[Any] | None = None
        self._stop_reason: ExitReason = Normal()
        self._turns = self.actor_inbox if isinstance(self.actor_inbox, _TurnInbox) else None
        self._on_sender = False
        self._sender_crash: Exception | None = None
        self._looping = False
        """Started (``on_start`` returned): senders may take turns from now on."""
        if self._turns is not None:
            _take_turns(self)

    def __str__(self) -> str:
        return f"{type(self).__name__}({self.name})"

    # -- what subclasses implement -------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        """Handle one message; the return value answers an ``ask``."""
        raise TypeError(f"{self.name}: unknown message {message!r}")

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

    @property
    def on_sender_turn(self) -> bool:
        """Whether the message being handled is handled in a sender's thread (:func:`tell_now`):
        a handler that would wait on something (the disk, another actor) leaves that to a
        message to itself."""
        return self._on_sender

    def defer_reply(self) -> pykka.Future[Any] | None:
        """Take over the answer to the message being handled, to give it later.

        The handler's return value is then ignored; the actor must ``set`` (or
        ``set_exception``) the returned future itself. None for a ``tell``.
        """
        reply, self._reply_to = self._reply_to, None
        return reply

    # -- the loop (replaces pykka's, which loses crashes) --------------------------------------

    def on_receive(self, message: Any) -> Any:
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
        turns = self._turns
        self._looping = True
        while not self.actor_stopped.is_set():
            envelope = self.actor_inbox.get()
            if turns is None:
                ended = self._handle_envelope(envelope)
            else:
                with turns.turn:
                    try:
                        ended = self._handle_envelope(envelope)
                    finally:
                        turns.handled()
            if ended is not None:
                return ended
        return self._stop_reason

    def _handle_envelope(self, envelope: Any) -> ExitReason | None:
        """Handle one envelope in the actor's thread; the exit reason if the actor dies of it."""
        self._reply_to = envelope.reply_to
        if self._sender_crash is not None:
            # A handler raised in a sender's turn: the actor dies of it here, handling nothing
            # more; what was queued behind is answered as after any death.
            _answer_dead(envelope, self.actor_ref)
            return self._crash(self._sender_crash)
        try:
            response = self._handle_receive(envelope.message)
        except Refused as exc:
            if self._reply_to is not None:
                self._reply_to.set_exception()
            else:
                self.log.warning("refused %r: %s", envelope.message, exc)
        except Exception as exc:
            if self._reply_to is not None:
                self._reply_to.set_exception()
            return self._crash(exc)
        else:
            if self._reply_to is not None:
                self._reply_to.set(response)
        return None

    def _sender_turn(self, message: Any) -> bool:
        """Handle ``message`` in the calling thread if the actor is idle; False (nothing done)
        when it is not: starting, handling or holding a message, stopping, or dying."""
        turns = self._turns
        if turns is None or not turns.turn.acquire(blocking=False):
            return False
        try:
            if (turns.unhandled or not self._looping or self._sender_crash is not None
                    or self.actor_stopped.is_set()):
                return False
            self._reply_to = None
            self._on_sender = True
            try:
                # Straight to receive (on_receive only forwards to it): pykka's own messages
                # (stop, proxy calls) are never runs_on_sender types.
                self.receive(message)
            except Refused as exc:
                self.log.warning("refused %r: %s", message, exc)
            except Exception as exc:
                self._sender_crash = exc
                self.actor_ref.tell(_SenderCrashed())  # wakes the loop, which dies of it
            finally:
                self._on_sender = False
            return True
        finally:
            turns.turn.release()

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


def _answer_dead(envelope: Any, ref: ActorRef[Any]) -> None:
    """Answer an envelope the actor will not handle, as pykka answers those left at its death."""
    reply = envelope.reply_to
    if reply is None:
        return
    if isinstance(envelope.message, pykka.messages._ActorStop):  # noqa: SLF001  (as pykka)
        reply.set(None)
    else:
        error = pykka.ActorDeadError(f"{ref} stopped before handling the message")
        reply.set_exception(exc_info=(type(error), error, None))
