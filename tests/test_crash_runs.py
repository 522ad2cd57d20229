"""The pure parts of the crash path: runs tied to epochs, the crash's words, the stop
announcements, and the supervisor's notices."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_actors.agent.supervisor import _seconds, describe_exit
from hive_actors.config import HiveConfig, WatcherConfig
from hive_actors.containers.base import ContainerSpec
from hive_actors.containers.process import ProcessBackend
from hive_actors.crash_intents import StopIntents, WatchedBackend
from hive_actors.crash_messages import AgentCrashed, ContainerCrash, signal_name
from hive_actors.crash_runs import RunBook
from hive_actors.daemon import stall_check_interval, watcher_enabled
from hive_actors.messages import Crashed, Killed, Normal
from tests.conftest import TIMEOUT


def crash(**fields: object) -> ContainerCrash:
    base: dict[str, object] = dict(agent="alice", epoch=2, result="exit-code",
                                   exit_status=1, signal=None, when=0.0)
    base.update(fields)
    return ContainerCrash(**base)  # type: ignore[arg-type]


# -- the run book ------------------------------------------------------------------------------


def test_a_run_belongs_to_the_generation_current_when_it_was_first_seen_alive() -> None:
    book = RunBook()
    book.load({"alice": 1})
    assert book.run_alive("alice", "a") == 1
    assert book.run_alive("alice", "a") is None  # tied already
    book.agent_up("alice", 2)  # a fresh container: the old run keeps its epoch
    assert book.run_alive("alice", "b") == 2
    assert book.crashed("alice", "a") == 1
    assert book.crashed("alice", "b") == 2
    assert book.live("alice") is None


def test_a_generation_that_adopts_a_running_container_takes_its_live_run() -> None:
    book = RunBook()
    book.load({"alice": 1})
    book.run_alive("alice", "a")
    assert book.agent_up("alice", 2, adopts=True) == "a"
    assert book.crashed("alice", "a") == 2
    # A run that ended is not adopted.
    book.run_alive("alice", "b")
    book.run_ended("alice", "b")
    assert book.agent_up("alice", 3, adopts=True) is None
    assert book.bound("alice", "b") == 2


def test_a_run_first_seen_dead_is_the_current_generations() -> None:
    book = RunBook()
    book.load({"alice": 4})
    assert book.crashed("alice", "never-seen") == 4
    assert book.bound("alice", "never-seen") == 4
    assert book.crashed("alice", "") == 4  # systemd gave no InvocationID
    assert book.crashed("bob", "x") is None  # no epoch known: nothing to act on


def test_the_book_forgets_old_runs_beyond_its_bound() -> None:
    book = RunBook(keep=2)
    book.load({"alice": 1})
    for run in ("a", "b", "c"):
        book.run_alive("alice", run)
    assert book.bound("alice", "a") is None and book.bound("alice", "c") == 1
    with pytest.raises(ValueError, match="keep must be >= 1"):
        RunBook(keep=0)


def test_a_registry_load_never_moves_an_announced_generation_back() -> None:
    book = RunBook()
    book.agent_up("alice", 3)  # announced while the watcher read an older registry row
    book.load({"alice": 2, "bob": 1})
    assert (book.current("alice"), book.current("bob")) == (3, 1)
    assert book.announced("alice") and not book.announced("bob")
    book.load({"alice": 4})
    assert book.current("alice") == 4
    book.run_alive("alice", "a")
    book.run_alive("bob", "")  # no InvocationID: not a run
    assert book.live_runs() == {"alice": ("a", 4)}


def test_the_book_holds_under_threads_announcing_and_crashing_at_once() -> None:
    """Agents announce epochs while another thread sees runs start and crash, as the
    AgentActors and the watcher's thread do: each crash carries an epoch its agent had
    announced, and each agent's latest announcement stands."""
    book = RunBook(keep=10_000)
    agents = [f"a{i}" for i in range(8)]
    start = threading.Barrier(len(agents) + 1)
    problems: list[str] = []

    def agent(name: str) -> None:
        start.wait(TIMEOUT)
        for epoch in range(1, 301):
            book.agent_up(name, epoch)

    def watcher() -> None:
        start.wait(TIMEOUT)
        for n in range(2000):
            name = agents[n % len(agents)]
            book.run_alive(name, f"run{n}")
            epoch = book.crashed(name, f"run{n}")
            if epoch is not None and not 1 <= epoch <= 300:
                problems.append(f"{name} run{n}: epoch {epoch}")

    threads = [threading.Thread(target=agent, args=(n,)) for n in agents]
    threads.append(threading.Thread(target=watcher))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert problems == []
    assert {name: book.current(name) for name in agents} == dict.fromkeys(agents, 300)
    assert book.agents == frozenset(agents)


@given(st.lists(st.sampled_from(["up", "new-run", "crash-old", "crash-live"]), max_size=60))
def test_a_crash_carries_the_generation_its_run_started_under(steps: list[str]) -> None:
    """Generations come up in fresh containers (no adoption); each run is seen alive before it
    ends: every crash reported, old or live, carries the epoch its run started under."""
    book = RunBook(keep=1000)
    book.load({"alice": 1})
    epoch, started_under, runs = 1, {}, 0
    for step in steps:
        if step == "up":
            epoch += 1
            book.agent_up("alice", epoch)
        elif step == "new-run":
            runs += 1
            run = f"run{runs}"
            started_under[run] = epoch
            book.run_alive("alice", run)
        elif started_under:
            run = min(started_under) if step == "crash-old" else f"run{runs}"
            assert book.crashed("alice", run) == started_under[run]


# -- the crash's words ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "words"), [
    ({}, "exit-code 1"),
    ({"result": "signal", "exit_status": None, "signal": 9}, "signal SIGKILL (9)"),
    ({"result": "core-dump", "exit_status": None, "signal": 11}, "core-dump SIGSEGV (11)"),
    ({"result": "oom-kill", "exit_status": None, "signal": 9}, "oom-kill, signal SIGKILL (9)"),
    ({"result": "timeout", "exit_status": 2}, "timeout, exit status 2"),
    ({"result": "start-limit-hit", "exit_status": None}, "start-limit-hit"),
    ({"result": "stalled", "exit_status": None, "detail": "turn t ran past its deadline of 3 s"},
     "stalled (turn t ran past its deadline of 3 s)"),
])
def test_a_crash_is_described_in_an_operators_words(fields: dict[str, object], words: str) -> None:
    assert crash(**fields).describe() == words


def test_the_crashed_event_and_the_exception_carry_the_crash() -> None:
    c = crash(source="systemd", invocation_id="ab", detail="container@alice.service run ab")
    payload = c.payload()
    assert payload["reason"] == "exit-code 1" and payload["epoch"] == 2
    assert payload["invocation_id"] == "ab" and payload["source"] == "systemd"
    error = AgentCrashed(c)
    assert str(error) == "alice crashed: exit-code 1" and error.crash is c
    assert signal_name(200) == "signal 200"


@pytest.mark.parametrize("fields", [{}, {"result": "signal", "exit_status": None, "signal": 9}])
def test_a_crash_decided_before_the_actor_dies_has_the_words_of_its_death(
    fields: dict[str, object],
) -> None:
    # The agents' supervisor decides on a crash without raising AgentCrashed in the actor; the
    # reason it records must be the one the actor's own death of it would have given.
    c = crash(**fields)
    assert AgentCrashed.exit_text(c, c.describe()) == str(
        Crashed.from_exception("receive", AgentCrashed(c)))


def test_an_agents_end_is_described_without_the_python_exception() -> None:
    c = crash(result="signal", exit_status=None, signal=9)
    assert describe_exit(Crashed.from_exception("receive", AgentCrashed(c))) == "signal SIGKILL (9)"
    assert describe_exit(Crashed.from_exception("on_start", ValueError("no config"))) == (
        "failed to start: no config")
    assert describe_exit(Crashed.from_exception("receive", RuntimeError("3 turns failed"))) == (
        "3 turns failed (RuntimeError)")
    assert describe_exit(Killed("did not stop")) == "killed: did not stop"
    assert describe_exit(Normal()) == "normal"
    assert [_seconds(x) for x in (4.0, 0.05, 0.1, 12.34, 250.0)] == [
        "4", "0.05", "0.1", "12.3", "250"]


# -- stop announcements ------------------------------------------------------------------------


class Recorder:
    """An intent sink that writes down what it was told (and what the backend said then)."""

    def __init__(self, backend: ProcessBackend | None = None) -> None:
        self.backend = backend
        self.calls: list[tuple[str, str, str]] = []

    def _state(self, agent: str) -> str:
        return self.backend.status(agent).state if self.backend is not None else "-"

    def expect_stop(self, agent: str) -> None:
        self.calls.append(("expect_stop", agent, self._state(agent)))

    def clear_intent(self, agent: str) -> None:
        self.calls.append(("clear", agent, self._state(agent)))


def test_stops_under_way_are_handed_to_each_watcher_that_attaches() -> None:
    intents = StopIntents()
    intents.expect_stop("alice")
    intents.expect_stop("bob")
    intents.clear("bob")
    first = Recorder()
    intents.attach(first)
    assert first.calls == [("expect_stop", "alice", "-")]
    intents.settled("alice")
    intents.expect_stop("carol")
    assert first.calls[-1] == ("expect_stop", "carol", "-")
    intents.detach(first)
    second = Recorder()
    intents.detach(second)  # not attached: nothing happens
    intents.attach(second)
    assert second.calls == [("expect_stop", "carol", "-")]
    assert intents.stopping() == frozenset({"carol"})


def test_the_watched_backend_announces_a_stop_before_the_container_stops(tmp_path: Path) -> None:
    inner = ProcessBackend(tmp_path)
    intents = StopIntents()
    recorder = Recorder(inner)
    intents.attach(recorder)
    backend = WatchedBackend(inner, intents)
    try:
        backend.create("alice", ContainerSpec())
        backend.start("alice")
        assert backend.status("alice").state == "running"
        exit = backend.stop("alice")
        assert exit is not None and exit.expected
        assert recorder.calls == [
            ("clear", "alice", "stopped"), ("expect_stop", "alice", "running")]
        assert intents.stopping() == frozenset({"alice"})
        backend.start("alice")
        assert intents.stopping() == frozenset()
    finally:
        backend.close()


def test_the_watcher_runs_for_nixos_or_a_configured_bus() -> None:
    assert not watcher_enabled(HiveConfig())
    assert watcher_enabled(HiveConfig(backend="nixos"))
    assert watcher_enabled(HiveConfig(watcher=WatcherConfig(bus_address="unix:path=/x")))
    assert stall_check_interval(300.0) == 30.0
    assert stall_check_interval(3.0) == pytest.approx(0.6)
    assert stall_check_interval(0.01) == 0.05
