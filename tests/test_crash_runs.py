"""The pure parts of the crash path: runs tied to epochs, the crash's words, the stop
announcements and the verdicts they make, and the supervisor's notices."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_actors.agent.supervisor import _seconds, describe_exit
from hive_actors.config import HiveConfig, WatcherConfig
from hive_actors.containers.base import ContainerSpec
from hive_actors.containers.process import ProcessBackend
from hive_actors.daemon import reads_dbus, stall_check_interval
from hive_actors.messages import Crashed, Killed, Normal
from hive_actors.watcher import (
    Crash,
    FailedStop,
    NoEvent,
    ServiceProps,
    StopCleared,
    StopExpected,
    Stopped,
    UnitGone,
    UnitObserved,
    UnitProps,
    UnitReport,
)
from hive_actors.watcher.intents import StopIntents, WatchedBackend
from hive_actors.watcher.judge import UnitJudge
from hive_actors.watcher.messages import AgentCrashed, ContainerCrash, RunStarted, signal_name
from hive_actors.watcher.runs import RunBook


def crash(**fields: object) -> ContainerCrash:
    base: dict[str, object] = {"agent": "alice", "epoch": 2, "result": "exit-code",
                               "exit_status": 1, "signal": None, "when": 0.0}
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


def _observed(active: str, sub: str, result: str = "success", run: str = "ab" * 16,
              job_type: str | None = None) -> UnitObserved:
    """An observation of alice's unit as the reader hands it over."""
    code, status = (1, 3) if result == "exit-code" else (0, 0)
    return UnitObserved(
        "alice", "container@alice.service", 0.0,
        ServiceProps(result=result, exec_main_code=code, exec_main_status=status,
                     n_restarts=0, main_pid=0 if active in ("inactive", "failed") else 42),
        UnitProps(active_state=active, sub_state=sub, job_id=0, job_path="/",
                  invocation_id=run),
        job_type,
    )


def test_a_stop_intent_told_before_the_stop_makes_its_end_the_hives() -> None:
    judge = UnitJudge()
    assert isinstance(judge.observed(_observed("active", "running")), NoEvent)
    judge.take(StopExpected("alice"))
    assert judge.take(_observed("failed", "failed", "exit-code")) == UnitReport(
        "alice", "container@alice.service", 0.0,
        FailedStop(by="hive", result="exit-code", invocation_id="ab" * 16))
    assert judge.intents.stopping() == frozenset()  # settled by the stop's end
    # A new run, started by the hive: its crash is a crash again.
    judge.take(StopCleared("alice"))
    judge.observed(_observed("active", "running", run="cd" * 16))
    assert isinstance(judge.observed(_observed("failed", "failed", "exit-code", run="cd" * 16)),
                      Crash)


def test_a_unit_unloaded_while_up_was_stopped_and_one_that_ended_is_no_event() -> None:
    judge = UnitJudge()
    judge.observed(_observed("active", "running"))
    gone = UnitGone("alice", "container@alice.service", 1.0)
    assert judge.gone(gone) == Stopped(by="operator-or-guest", invocation_id="ab" * 16)
    assert isinstance(judge.gone(gone), NoEvent)  # forgotten with it
    judge.observed(_observed("active", "running"))
    judge.intents.expect_stop("alice")
    assert judge.gone(gone) == Stopped(by="hive", invocation_id="ab" * 16)
    judge.observed(_observed("inactive", "dead"))
    assert isinstance(judge.gone(gone), NoEvent)


def test_the_watched_backend_tells_a_stop_before_the_container_stops(tmp_path: Path) -> None:
    inner = ProcessBackend(tmp_path)
    told: list[tuple[object, str]] = []
    backend = WatchedBackend(inner, lambda m: told.append((m, inner.status(m.agent).state)))
    try:
        backend.create("alice", ContainerSpec())
        backend.start("alice")
        assert backend.status("alice").state == "running"
        run = backend.status("alice").run_id
        exit = backend.stop("alice")
        assert exit is not None and exit.expected and exit.run_id == run != ""
        # The start is cleared before the container starts, and the run it began is told
        # after; the stop is told before the container stops.
        assert told == [(StopCleared("alice"), "stopped"), (RunStarted("alice", run), "running"),
                        (StopExpected("alice"), "running")]
    finally:
        backend.close()


def test_stop_intents_are_plain_state_settled_by_the_hives_own_stop() -> None:
    intents = StopIntents()
    intents.expect_stop("alice")
    intents.expect_stop("bob")
    intents.clear("bob")
    assert intents.hive_stop("alice") and not intents.hive_stop("bob")
    intents.settle("alice", Stopped(by="operator-or-guest", invocation_id=""))
    assert intents.stopping() == frozenset({"alice"})
    intents.settle("alice", Stopped(by="hive", invocation_id=""))
    assert intents.stopping() == frozenset()


def test_the_watcher_reads_dbus_for_nixos_or_a_configured_bus() -> None:
    assert not reads_dbus(HiveConfig())
    assert reads_dbus(HiveConfig(backend="nixos"))
    assert reads_dbus(HiveConfig(watcher=WatcherConfig(bus_address="unix:path=/x")))
    assert stall_check_interval(300.0) == 30.0
    assert stall_check_interval(3.0) == pytest.approx(0.6)
    assert stall_check_interval(0.01) == 0.05
