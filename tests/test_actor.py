"""The actor base reports every way an actor can end."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from hive_actors import lifecycle
from hive_actors.actor import HiveActor, tell_now
from hive_actors.clock import FakeClock
from hive_actors.errors import Refused
from hive_actors.messages import Crashed, Down, Killed, NoProc, Normal, Ready, is_abnormal
from tests.conftest import TIMEOUT, ProbeHandle


@dataclass(frozen=True)
class Boom:
    """Crash the handler with this text."""

    text: str = "boom"


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Refuse:
    pass


@dataclass(frozen=True)
class Later:
    pass


@dataclass(frozen=True)
class Answer:
    value: Any


class Worker(HiveActor):
    def __init__(self, *, fail_start: bool = False, fail_stop: bool = False,
                 clock: FakeClock | None = None, events: list[str] | None = None) -> None:
        super().__init__(name="worker", clock=clock)
        self.fail_start = fail_start
        self.fail_stop = fail_stop
        self.events = events if events is not None else []
        self.later: pykka.Future[Any] | None = None

    def on_start(self) -> None:
        if self.fail_start:
            raise RuntimeError("cannot open the thing")

    def on_stop(self) -> None:
        self.events.append("on_stop")
        if self.fail_stop:
            raise OSError("cleanup failed")

    def on_failure(self, *exc_info: Any) -> None:
        self.events.append("on_failure")

    def receive(self, message: Any) -> Any:
        match message:
            case Ping():
                return "pong"
            case Boom(text=text):
                raise ValueError(text)
            case Refuse():
                raise Refused("no: that agent does not exist")
            case Later():
                self.later = self.defer_reply()
                return "ignored"
            case Answer(value=value):
                assert self.later is not None
                self.later.set(value)
                return None
        return super().receive(message)


def watched(probe: ProbeHandle, **kwargs: Any) -> pykka.ActorRef[Any]:
    ref = Worker.start(**kwargs)
    lifecycle.monitor(ref, probe.ref, tag="w")
    return ref


def test_failing_tell_handler_is_a_crash_reported_to_monitors(probe: ProbeHandle) -> None:
    events: list[str] = []
    ref = watched(probe, events=events)
    ref.tell(Boom("tell failed"))
    down = probe.get()
    assert isinstance(down, Down) and down.tag == "w" and down.ref == ref
    assert isinstance(down.reason, Crashed)
    assert (down.reason.phase, down.reason.error_type, down.reason.message) == (
        "receive", "ValueError", "tell failed")
    assert events == ["on_failure", "on_stop"]
    assert not ref.is_alive()


def test_failing_ask_handler_answers_the_caller_and_crashes(probe: ProbeHandle) -> None:
    ref = watched(probe)
    ref.tell(Ping())  # queued behind the crash: must not be handled by a dead actor
    with pytest.raises(ValueError, match="ask failed"):
        ref.ask(Boom("ask failed"), timeout=TIMEOUT)
    down = probe.get()
    assert isinstance(down.reason, Crashed) and down.reason.message == "ask failed"
    assert lifecycle.wait_exit(ref, TIMEOUT) == down.reason
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(Ping(), timeout=TIMEOUT)


def test_refused_ask_answers_the_caller_and_the_actor_lives_on(probe: ProbeHandle) -> None:
    ref = watched(probe)
    with pytest.raises(Refused, match="does not exist"):
        ref.ask(Refuse(), timeout=TIMEOUT)
    ref.tell(Refuse())  # a refused tell is logged, not a crash
    assert ref.ask(Ping(), timeout=TIMEOUT) == "pong"
    assert probe.empty()


def test_failure_in_on_start_is_reported(probe: ProbeHandle) -> None:
    events: list[str] = []
    ref = Worker.start(fail_start=True, events=events)
    reason = lifecycle.wait_exit(ref, TIMEOUT)
    assert isinstance(reason, Crashed) and reason.phase == "on_start"
    assert "cannot open the thing" in str(reason)
    assert not lifecycle.wait_ready(ref, 0)
    # A monitor that arrives after the death still learns the real reason.
    lifecycle.monitor(ref, probe.ref)
    assert probe.get().reason == reason
    assert events == []  # on_stop does not run when on_start failed


def test_failure_in_on_stop_is_reported(probe: ProbeHandle) -> None:
    ref = watched(probe, fail_stop=True)
    ref.stop(block=True, timeout=TIMEOUT)
    reason = probe.get().reason
    assert isinstance(reason, Crashed) and reason.phase == "on_stop"
    assert reason.error_type == "OSError" and is_abnormal(reason)


def test_normal_stop_is_normal(probe: ProbeHandle) -> None:
    events: list[str] = []
    ref = watched(probe, events=events)
    ref.stop(block=True, timeout=TIMEOUT)
    down = probe.get()
    assert down.reason == Normal() and not is_abnormal(down.reason)
    assert events == ["on_stop"]


def test_unknown_message_is_a_crash(probe: ProbeHandle) -> None:
    ref = watched(probe)
    ref.tell("junk")
    reason = probe.get().reason
    assert isinstance(reason, Crashed) and reason.error_type == "TypeError"
    assert "unknown message 'junk'" in reason.message


def test_every_monitor_gets_exactly_one_down(probe: ProbeHandle) -> None:
    other = ProbeHandle()
    ref = Worker.start()
    m1 = lifecycle.monitor(ref, probe.ref, tag=1)
    lifecycle.monitor(ref, other.ref, tag=2)
    lifecycle.monitor(ref, probe.ref, tag=3)
    lifecycle.demonitor(ref, m1)
    ref.stop(block=True, timeout=TIMEOUT)
    assert probe.get().tag == 3
    assert other.get().tag == 2
    # Barrier: a later message to each probe arrives after any stray Down would have.
    probe.ref.tell("barrier")
    other.ref.tell("barrier")
    assert probe.get() == "barrier" and other.get() == "barrier"


def test_watching_an_unknown_actor_gets_noproc(probe: ProbeHandle) -> None:
    plain = pykka.ThreadingActor.start()
    lifecycle.monitor(plain, probe.ref, tag="x")
    down = probe.get()
    assert down.reason == NoProc() and down.tag == "x"
    assert str(Killed("too slow")) == "killed: too slow"


def test_watch_racing_with_death_gets_exactly_one_down(probe: ProbeHandle) -> None:
    refs = [Worker.start() for _ in range(30)]
    go = threading.Event()

    def kill_all() -> None:
        go.wait(TIMEOUT)
        for r in refs:
            r.tell(Boom())

    killer = threading.Thread(target=kill_all)
    killer.start()
    go.set()
    for r in refs:
        lifecycle.monitor(r, probe.ref, tag=r.actor_urn)
    killer.join(TIMEOUT)
    seen = [probe.get().tag for _ in refs]
    assert sorted(seen) == sorted(r.actor_urn for r in refs)
    probe.ref.tell("barrier")
    assert probe.get() == "barrier"


class LateReady(HiveActor):
    ready_on_start = False

    def receive(self, message: Any) -> Any:
        if message == "ready":
            self.signal_ready()
            return True
        return super().receive(message)


def test_readiness_handshake(probe: ProbeHandle) -> None:
    ref = LateReady.start(name="late")
    lifecycle.notify_ready(ref, probe.ref, tag="r")
    assert not lifecycle.wait_ready(ref, 0.05)
    assert ref.ask("ready", timeout=TIMEOUT)
    ready = probe.get()
    assert isinstance(ready, Ready) and ready.tag == "r" and ready.name == "late"
    assert lifecycle.wait_ready(ref, TIMEOUT)
    # Asking after the fact answers at once.
    lifecycle.notify_ready(ref, probe.ref, tag="again")
    assert probe.get().tag == "again"


def test_deferred_reply() -> None:
    ref = Worker.start()
    future = ref.ask(Later(), block=False)
    ref.tell(Answer(42))
    assert future.get(timeout=TIMEOUT) == 42


def test_send_after_uses_the_injected_clock() -> None:
    clock = FakeClock()
    inbox: list[Any] = []
    got = threading.Event()

    class Timed(HiveActor):
        def on_start(self) -> None:
            self.send_after(5.0, "tick")

        def receive(self, message: Any) -> Any:
            inbox.append((message, clock.now()))
            got.set()

    Timed.start(clock=clock)
    assert clock.wait_pending(1, TIMEOUT)
    clock.advance(4.9)
    assert not got.is_set()
    clock.advance(0.2)
    assert got.wait(TIMEOUT)
    assert [m for m, _ in inbox] == ["tick"]


# -- sender's turns --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Urgent:
    """A message its sender may have handled in its own thread; ``fail`` raises."""

    label: str
    fail: bool = False


@dataclass(frozen=True)
class Hold:
    """Keep the actor's turn until ``release`` is set, saying so with ``held``."""

    held: threading.Event
    release: threading.Event


class TurnTaker(HiveActor):
    runs_on_sender = (Urgent,)

    def __init__(self, seen: list[tuple[str, str, bool]],
                 start_gate: threading.Event | None = None) -> None:
        super().__init__(name="turn-taker")
        self.start_gate = start_gate
        self.seen = seen
        """(label, the handling thread's name, whether it was a sender's turn), in order."""
        self.inside = threading.Lock()
        self.overlaps: list[str] = []
        """Messages whose handling began while another's was under way."""

    def on_start(self) -> None:
        if self.start_gate is not None:
            assert self.start_gate.wait(TIMEOUT)

    def receive(self, message: Any) -> Any:
        match message:
            case Urgent(label=label, fail=fail):
                if not self.inside.acquire(blocking=False):
                    self.overlaps.append(label)
                    return None
                try:
                    self.seen.append((label, threading.current_thread().name,
                                      self.on_sender_turn))
                    if fail:
                        raise ValueError(f"{label} failed")
                finally:
                    self.inside.release()
                return None
            case Hold(held=held, release=release):
                held.set()
                release.wait(TIMEOUT)
                return None
            case Ping():
                self.seen.append(("ping", threading.current_thread().name, self.on_sender_turn))
                return "pong"
        return super().receive(message)


def _sender(name: str, body: Any) -> None:
    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_an_idle_actor_handles_an_urgent_message_in_the_senders_thread() -> None:
    seen: list[tuple[str, str, bool]] = []
    ref = TurnTaker.start(seen)
    ref.ask(Ping(), timeout=TIMEOUT)  # handled and counted: the actor is idle
    _sender("watcher", lambda: tell_now(ref, Urgent("a")))
    assert seen[-1] == ("a", "watcher", True)  # done when tell_now returned
    # Other types always go through the mailbox, to the actor's own thread.
    _sender("watcher", lambda: tell_now(ref, Ping()))
    assert ref.ask(Ping(), timeout=TIMEOUT) == "pong"
    assert [(label, on_sender) for label, _, on_sender in seen] == [
        ("ping", False), ("a", True), ("ping", False), ("ping", False)]
    assert all(thread != "watcher" for label, thread, _ in seen if label == "ping")


def test_a_busy_actor_gets_the_urgent_message_queued_behind_what_came_first() -> None:
    seen: list[tuple[str, str, bool]] = []
    ref = TurnTaker.start(seen)
    held, release = threading.Event(), threading.Event()
    ref.tell(Hold(held, release))
    assert held.wait(TIMEOUT)
    ref.tell(Ping())  # queued while the actor is busy
    _sender("watcher", lambda: tell_now(ref, Urgent("b")))
    assert seen == []  # nothing ran in the sender's thread
    release.set()
    ref.ask(Ping(), timeout=TIMEOUT)
    assert [(label, on_sender) for label, _, on_sender in seen] == [
        ("ping", False), ("b", False), ("ping", False)]
    # A message still queued (the actor's thread has not handled it) also keeps its place:
    # the sender does not overtake it.
    held.clear()
    release.clear()
    ref.tell(Hold(held, release))
    assert held.wait(TIMEOUT)
    ref.tell(Urgent("c"))
    release.set()
    _sender("watcher", lambda: tell_now(ref, Urgent("d")))
    ref.ask(Ping(), timeout=TIMEOUT)
    assert [label for label, _, _ in seen[3:]] == ["c", "d", "ping"]


def test_no_sender_takes_a_turn_before_the_actor_started_nor_before_queued_messages() -> None:
    seen: list[tuple[str, str, bool]] = []
    gate = threading.Event()
    ref = TurnTaker.start(seen, start_gate=gate)  # on_start waits: nothing is handled yet
    _sender("watcher", lambda: tell_now(ref, Urgent("early")))
    ref.tell(Urgent("c"))
    _sender("watcher", lambda: tell_now(ref, Urgent("d")))
    assert seen == []
    gate.set()
    ref.ask(Ping(), timeout=TIMEOUT)
    assert [(label, on_sender) for label, _, on_sender in seen] == [
        ("early", False), ("c", False), ("d", False), ("ping", False)]
    # Looping and idle now: a message just told (the actor's thread has not taken it yet)
    # is not overtaken by the same sender's next one.
    for i in range(50):
        ref.tell(Urgent(f"told{i}"))
        tell_now(ref, Urgent(f"now{i}"))
    ref.ask(Ping(), timeout=TIMEOUT)
    labels = [label for label, _, _ in seen[4:-1]]
    assert labels == [label for i in range(50) for label in (f"told{i}", f"now{i}")]


def test_an_urgent_message_that_raises_in_the_senders_turn_crashes_the_actor(
    probe: ProbeHandle,
) -> None:
    seen: list[tuple[str, str, bool]] = []
    ref = TurnTaker.start(seen)
    lifecycle.monitor(ref, probe.ref, tag="t")
    ref.ask(Ping(), timeout=TIMEOUT)
    _sender("watcher", lambda: tell_now(ref, Urgent("e", fail=True)))  # the sender sees nothing
    down = probe.get()
    assert isinstance(down, Down) and isinstance(down.reason, Crashed)
    assert (down.reason.phase, down.reason.error_type, down.reason.message) == (
        "receive", "ValueError", "e failed")
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        tell_now(ref, Urgent("f"))
    assert [label for label, _, _ in seen] == ["ping", "e"]


def test_only_one_turn_at_a_time_with_senders_racing_the_actors_thread() -> None:
    seen: list[tuple[str, str, bool]] = []
    actor_ref = TurnTaker.start(seen)
    actor = actor_ref.proxy()

    def burst(tag: str) -> None:
        for i in range(300):
            tell_now(actor_ref, Urgent(f"{tag}{i}"))

    threads = [threading.Thread(target=burst, args=(t,), name=t) for t in ("x", "y")]
    for thread in threads:
        thread.start()
    for i in range(300):
        actor_ref.tell(Urgent(f"q{i}"))
    for thread in threads:
        thread.join(TIMEOUT)
    actor_ref.ask(Ping(), timeout=TIMEOUT)
    assert actor.overlaps.get(timeout=TIMEOUT) == []
    labels = [label for label, _, _ in seen if label != "ping"]
    assert len(labels) == 900 and len(set(labels)) == 900  # each handled once
    for tag in ("x", "y", "q"):  # and each sender's messages in the order sent
        mine = [int(label[1:]) for label in labels if label[0] == tag]
        assert mine == sorted(mine) and len(mine) == 300
    # Some went the short way, in the senders' threads (the actor was idle now and then).
    assert any(on_sender for _, _, on_sender in seen)
