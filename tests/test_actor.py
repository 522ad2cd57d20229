"""The actor base reports every way an actor can end."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from hive_actors import lifecycle
from hive_actors.actor import HiveActor
from hive_actors.clock import FakeClock
from hive_actors.errors import Refused, UnexpectedMessage
from hive_actors.messages import Crashed, Down, Killed, NoProc, Normal, Ready, is_abnormal
from tests.support.probe import ProbeHandle
from tests.support.timeout import TIMEOUT


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
    assert isinstance(reason, Crashed) and reason.error_type == "UnexpectedMessage"
    assert reason.message == "Worker(worker) got an unexpected message of type str: 'junk'"


def test_an_asked_unknown_message_answers_which_actor_got_which_type(probe: ProbeHandle) -> None:
    @dataclass(frozen=True)
    class Stranger:
        pass

    ref = watched(probe)
    with pytest.raises(UnexpectedMessage, match=r"^Worker\(worker\) got an unexpected message "
                       r"of type .*Stranger: .*Stranger\(\)$"):
        ref.ask(Stranger(), timeout=TIMEOUT)
    reason = probe.get().reason  # a message outside the union is a bug: the actor crashed
    assert isinstance(reason, Crashed) and reason.error_type == "UnexpectedMessage"


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


# -- one owner thread ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    label: str


def test_every_message_is_handled_in_the_actors_own_thread_in_arrival_order() -> None:
    """Whichever thread tells it, a message waits its turn and runs on the actor's thread."""
    seen: list[tuple[str, int]] = []
    thread_of_actor: list[int] = []

    class Owner(HiveActor):
        def on_start(self) -> None:
            thread_of_actor.append(threading.get_ident())

        def receive(self, message: Any) -> Any:
            match message:
                case Note(label=label):
                    seen.append((label, threading.get_ident()))
                case Ping():
                    return "pong"
            return None

    ref = Owner.start()

    def burst(tag: str) -> None:
        for i in range(200):
            ref.tell(Note(f"{tag}{i}"))

    threads = [threading.Thread(target=burst, args=(t,), name=t) for t in ("x", "y")]
    for thread in threads:
        thread.start()
    burst("m")
    for thread in threads:
        thread.join(TIMEOUT)
    assert ref.ask(Ping(), timeout=TIMEOUT) == "pong"
    assert {ident for _, ident in seen} == set(thread_of_actor)
    labels = [label for label, _ in seen]
    assert len(labels) == 600 and len(set(labels)) == 600
    for tag in ("x", "y", "m"):  # each sender's messages in the order sent
        mine = [int(label[1:]) for label in labels if label[0] == tag]
        assert mine == list(range(200))
    ref.stop()
