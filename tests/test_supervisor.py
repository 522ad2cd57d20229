"""The threaded supervisor with real actors that really crash, in virtual time."""

from __future__ import annotations

import io
import threading
from typing import Any

import pykka
import pytest

from hive_actors import lifecycle
from hive_actors.clock import FakeClock
from hive_actors.errors import Conflict, NotFound, StartFailure, UnexpectedMessage
from hive_actors.messages import Crashed, Down, Normal
from hive_actors.supervisors import (
    Backoff,
    ChildSpec,
    RestartLimit,
    Supervisor,
    SupervisorClient,
    SupervisorFlags,
)
from hive_actors.supervisors.root import describe_tree, run_until_stopped, start_root
from tests.support.supervision import (
    BecomeReady,
    Child,
    Crash,
    Journal,
    Quit,
    Tree,
    child,
    no_backoff,
)
from tests.support.timeout import TIMEOUT

# -- strategies --------------------------------------------------------------------------------


def test_children_start_in_order_and_stop_in_reverse() -> None:
    j = Journal()
    tree = Tree([child(c, j) for c in "abc"], no_backoff("one_for_one"))
    assert j.take() == ["start a", "start b", "start c"]
    tree.ref.stop(block=True, timeout=TIMEOUT)
    assert j.take() == ["stop c", "stop b", "stop a"]


def test_next_child_waits_for_the_previous_one_to_be_ready() -> None:
    j = Journal()
    tree = Tree([child("a", j, ready=False), child("b", j)], no_backoff("one_for_one"), wait=False)
    j.wait_for("start a")
    a = pykka.ActorRegistry.get_by_urn(
        next(r.actor_urn for r in pykka.ActorRegistry.get_all() if r.actor_class is Child))
    assert a is not None
    # b is not started while a is not ready: the supervisor answers without having started it.
    assert [c.state for c in tree.client.which_children()] == ["starting", "starting"]
    assert "start b" not in j.lines
    a.tell(BecomeReady())
    assert lifecycle.wait_ready(tree.ref, TIMEOUT)
    assert j.take() == ["start a", "start b"]


def test_one_for_one_restarts_only_the_failed_child() -> None:
    j = Journal()
    tree = Tree([child(c, j) for c in "abc"], no_backoff("one_for_one"))
    a, c = tree.ref_of("a"), tree.ref_of("c")
    j.take()
    tree.crash("b")
    tree.event("started", "b")
    assert j.take() == ["stop b", "start b"]  # a crash runs on_stop too
    assert (tree.ref_of("a"), tree.ref_of("c")) == (a, c)


def test_one_for_all_restarts_everyone_in_order() -> None:
    j = Journal()
    tree = Tree([child(c, j) for c in "abc"], no_backoff("one_for_all"))
    j.take()
    tree.crash("b")
    tree.event("started", "c")
    assert j.take() == ["stop b", "stop c", "stop a", "start a", "start b", "start c"]


def test_rest_for_one_restarts_the_failed_child_and_those_after_it() -> None:
    j = Journal()
    tree = Tree([child(c, j) for c in "abcd"], no_backoff("rest_for_one"))
    a = tree.ref_of("a")
    j.take()
    tree.crash("b")
    tree.event("started", "d")
    assert j.take() == ["stop b", "stop d", "stop c", "start b", "start c", "start d"]
    assert tree.ref_of("a") == a


# -- restart types -------------------------------------------------------------------------------


def test_permanent_child_is_restarted_even_after_a_normal_exit() -> None:
    j = Journal()
    tree = Tree([child("p", j)], no_backoff("one_for_one"))
    tree.ref_of("p").tell(Quit())
    ev = tree.event("restarting", "p")
    assert ev.detail == "normal"
    tree.event("started", "p")


def test_transient_child_is_restarted_only_after_a_crash() -> None:
    j = Journal()
    tree = Tree([child("t", j, restart="transient")], no_backoff("one_for_one"))
    tree.crash("t")
    tree.event("started", "t")
    ref = tree.ref_of("t")
    ref.tell(Quit())
    assert tree.event("exited", "t").detail == "transient child exited normally"
    assert [(c.state, c.ref) for c in tree.client.which_children()] == [("terminated", None)]


def test_temporary_child_is_never_restarted_and_is_forgotten() -> None:
    j = Journal()
    tree = Tree([child("keep", j), child("tmp", j, restart="temporary")], no_backoff("one_for_all"))
    tree.crash("tmp")
    tree.event("exited", "tmp")
    assert [c.id for c in tree.client.which_children()] == ["keep"]
    assert tree.stats("keep").restarts == 0


def test_temporary_sibling_caught_in_a_group_restart_is_forgotten() -> None:
    j = Journal()
    tree = Tree([child("a", j), child("tmp", j, restart="temporary"), child("c", j)],
                no_backoff("rest_for_one"))
    j.take()
    tree.crash("a")
    tree.event("started", "c")
    assert j.take() == ["stop a", "stop c", "stop tmp", "start a", "start c"]
    assert [c.id for c in tree.client.which_children()] == ["a", "c"]


# -- intensity and escalation ----------------------------------------------------------------------


def test_too_many_restarts_stop_the_children_in_reverse_and_escalate() -> None:
    j = Journal()
    tree = Tree([child(c, j) for c in "abc"], no_backoff("one_for_one", intensity=2, period=10))
    for _ in range(2):
        tree.crash("b")
        tree.event("started", "b")
        tree.clock.advance(1)
    j.take()
    tree.crash("b")
    reason = lifecycle.wait_exit(tree.ref, TIMEOUT)
    assert isinstance(reason, Crashed) and reason.error_type == "Escalation"
    assert "more than 2 restarts in 10 s" in reason.message
    assert j.take() == ["stop b", "stop c", "stop a"]


def test_restarts_outside_the_period_do_not_count() -> None:
    j = Journal()
    tree = Tree([child("a", j)], no_backoff("one_for_one", intensity=1, period=10))
    for _ in range(4):
        tree.crash("a")
        tree.event("started", "a")
        tree.clock.advance(10.5)
    assert lifecycle.exit_reason(tree.ref) is None
    assert tree.stats("a").restarts == 4


def test_escalation_reaches_the_parent_which_restarts_the_subtree() -> None:
    j = Journal()
    clock = FakeClock()
    inner_flags = no_backoff("one_for_one", intensity=0)
    inner = ChildSpec("inner", lambda: Supervisor.start([child("w", j)], inner_flags,
                                                        name="inner", clock=clock))
    tree = Tree([child("first", j), inner], no_backoff("one_for_one"))
    first = tree.ref_of("first")
    w = SupervisorClient(tree.ref_of("inner")).which_children()[0].ref
    assert w is not None
    w.tell(Crash())
    ev = tree.event("restarting", "inner")
    assert "Escalation" in ev.detail and "inner gave up" in ev.detail
    tree.event("started", "inner")
    assert j.lines.count("start w") == 2
    assert tree.ref_of("first") == first


def test_root_escalation_ends_the_process_with_a_clear_message() -> None:
    j = Journal()
    clock = FakeClock()

    def factory(children: Any, flags: Any, *, name: str, clock: Any = None) -> Any:
        return Supervisor.start(children, flags, name=name, clock=clock or FakeClock())

    root = start_root([child("w", j)], no_backoff("one_for_one", intensity=0), name="hive",
                      ready_timeout=TIMEOUT, clock=clock, factory=factory)
    assert describe_tree(root, TIMEOUT) == (
        "hive  [supervisor one_for_one, at most 0 restarts in 60 s]\n"
        "    w  running  (permanent)")
    err = io.StringIO()
    stop = threading.Event()
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(run_until_stopped(root, stop, err)))
    waiter.start()
    SupervisorClient(root).which_children()[0].ref.tell(Crash())  # type: ignore[union-attr]
    waiter.join(TIMEOUT)
    assert result == [1]
    assert err.getvalue().startswith("Error: hive stopped: hive gave up: reached max restart")


def test_root_that_cannot_start_names_the_child() -> None:
    def broken() -> Any:
        raise OSError("port 8000 is taken")

    with pytest.raises(StartFailure, match=r"child 'web' of hive failed to start: OSError: port 8000"):
        start_root([ChildSpec("web", broken)], no_backoff("one_for_one"), ready_timeout=TIMEOUT)


# -- backoff ---------------------------------------------------------------------------------------


def test_backoff_grows_waits_on_the_clock_and_resets_when_stable() -> None:
    j = Journal()
    flags = SupervisorFlags("one_for_one", 100, 60,
                            Backoff(min=1, max=4, factor=2, jitter=0.1, reset_after=30))
    tree = Tree([child("a", j)], flags)
    delays = []
    for _ in range(4):
        tree.crash("a")
        ev = tree.event("restarting", "a")
        delays.append(ev.delay)
        assert tree.stats("a").state == "backoff"
        assert tree.clock.wait_pending(1, TIMEOUT)
        tree.clock.advance(ev.delay * 0.99)
        assert tree.stats("a").state == "backoff"  # not yet: the barrier is the ask itself
        tree.clock.advance(ev.delay * 0.02)
        tree.event("started", "a")
    assert delays == [1, 2, 4, 4]  # rng=0.5 puts jitter at its centre
    assert tree.stats("a").backoff == 4
    tree.clock.advance(30)
    tree.crash("a")
    assert tree.event("restarting", "a").delay == 1


def test_terminating_one_child_of_a_group_restart_leaves_the_others_restart_due() -> None:
    j = Journal()
    flags = SupervisorFlags("one_for_all", 100, 60, Backoff(min=2, max=2, jitter=0))
    tree = Tree([child(c, j) for c in "abc"], flags)
    tree.crash("b")
    ev = tree.event("restarting", "b")
    assert tree.clock.wait_pending(1, TIMEOUT)
    tree.client.terminate_child("a")  # one of the group, while they all back off
    assert tree.stats("a").state == "terminated"
    j.take()
    tree.clock.advance(ev.delay)
    tree.event("started", "c")
    assert j.take() == ["start b", "start c"]
    assert [tree.stats(c).state for c in "abc"] == ["terminated", "running", "running"]


# -- readiness -------------------------------------------------------------------------------------


def test_child_that_never_becomes_ready_fails_the_start_naming_it_and_the_timeout() -> None:
    j = Journal()
    tree = Tree([child("ok", j), child("slow", j, ready=False, ready_timeout=5)],
                no_backoff("one_for_one"), wait=False)
    j.wait_for("start slow")
    assert tree.clock.wait_pending(1, TIMEOUT)
    tree.clock.advance(5)
    reason = lifecycle.wait_exit(tree.ref, TIMEOUT)
    assert isinstance(reason, Crashed) and reason.error_type == "StartFailure"
    assert reason.message == "child 'slow' of sup failed to start: did not become ready within 5 s"
    assert j.take() == ["start ok", "start slow", "stop slow", "stop ok"]


def test_a_restart_that_fails_to_start_is_retried_with_backoff() -> None:
    j = Journal()
    attempts = []

    def flaky() -> Any:
        attempts.append(1)
        if len(attempts) == 2:
            raise OSError("container did not come up")
        return Child.start("f", j)

    flags = SupervisorFlags("one_for_one", 10, 60, Backoff(min=1, max=8, jitter=0))
    tree = Tree([ChildSpec("f", flaky)], flags)
    tree.crash("f")
    tree.clock.advance(tree.event("restarting", "f").delay)
    ev = tree.event("restarting", "f")
    assert "failed to start: OSError: container did not come up" in ev.detail and ev.delay == 2
    tree.clock.advance(2)
    tree.event("started", "f")
    assert len(attempts) == 3


# -- dynamic children ------------------------------------------------------------------------------


def test_dynamic_children() -> None:
    j = Journal()
    tree = Tree([], no_backoff("one_for_one"))
    ref = tree.client.start_child(child("x", j))
    assert lifecycle.is_ready(ref)
    tree.client.start_child(child("y", j, restart="transient"))
    with pytest.raises(Conflict, match="'x' already exists"):
        tree.client.start_child(child("x", j))
    assert tree.client.count_children() == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
    with pytest.raises(Conflict, match="'x' is running; terminate it before deleting it"):
        tree.client.delete_child("x")
    with pytest.raises(Conflict, match="terminate it before restarting it"):
        tree.client.restart_child("x")
    tree.client.terminate_child("x")
    assert lifecycle.wait_exit(ref, TIMEOUT) is not None
    assert [(c.id, c.state) for c in tree.client.which_children()] == [
        ("x", "terminated"), ("y", "running")]
    new = tree.client.restart_child("x")
    assert new != ref and lifecycle.is_ready(new)
    tree.client.terminate_child("x")
    tree.client.delete_child("x")
    assert [c.id for c in tree.client.which_children()] == ["y"]
    with pytest.raises(NotFound, match="no child 'x'"):
        tree.client.terminate_child("x")
    assert tree.client.count_children()["active"] == 1


def test_start_child_that_fails_is_not_kept() -> None:
    tree = Tree([], no_backoff("one_for_one"))

    def broken() -> Any:
        raise ValueError("bad config")

    with pytest.raises(StartFailure, match="child 'z' of sup failed to start: ValueError: bad config"):
        tree.client.start_child(ChildSpec("z", broken))
    assert tree.client.which_children() == []


def test_given_up_child_stays_down_until_restarted() -> None:
    j = Journal()
    tree = Tree([child("a", j, limit=RestartLimit(1, 60)), child("b", j)], no_backoff("one_for_one"))
    tree.crash("a")
    tree.event("started", "a")
    tree.crash("a")
    ev = tree.event("given_up", "a")
    assert ev.detail.startswith("a given up after 1 restarts in 60 s (limit 1); last failure: ")
    assert ev.detail.endswith("RuntimeError: a crashed")
    stats = tree.stats("a")
    assert (stats.state, stats.restarts) == ("given_up", 1)
    assert "RuntimeError: a crashed" in (stats.last_failure or "")
    assert tree.stats("b").state == "running"
    tree.client.restart_child("a")
    assert tree.stats("a").state == "running"


def test_child_that_will_not_stop_is_abandoned_and_reported() -> None:
    j = Journal()
    gate = threading.Event()
    tree = Tree([child("stuck", j, stop_gate=gate, shutdown=0.2)], no_backoff("one_for_one"))
    ref = tree.ref_of("stuck")
    tree.client.terminate_child("stuck")
    ev = tree.event("abandoned", "stuck")
    assert ev.detail == "did not stop within 0.2 s; abandoned"
    assert tree.stats("stuck").last_failure == ev.detail
    gate.set()  # let the thread finish so the test leaves nothing behind
    assert lifecycle.wait_exit(ref, TIMEOUT) is not None


def test_a_message_outside_its_union_answers_the_asker_and_crashes_the_supervisor() -> None:
    tree = Tree([], no_backoff("one_for_one"))
    with pytest.raises(UnexpectedMessage, match=r"^Supervisor\(sup\) got an unexpected message "
                       r"of type Quit: Quit\(\)$"):
        tree.ref.ask(Quit(), timeout=TIMEOUT)
    reason = lifecycle.wait_exit(tree.ref, TIMEOUT)
    assert isinstance(reason, Crashed) and reason.error_type == "UnexpectedMessage"


def test_a_down_with_a_tag_it_never_gave_is_unexpected() -> None:
    tree = Tree([], no_backoff("one_for_one"))
    stray = Down(tree.ref, "stray", Normal(), tag="not (id, urn)")
    with pytest.raises(UnexpectedMessage, match=r"got a Down of stray with a tag it never gave"):
        tree.ref.ask(stray, timeout=TIMEOUT)
    assert isinstance(lifecycle.wait_exit(tree.ref, TIMEOUT), Crashed)


def test_statistics_report_restarts_failure_backoff_and_state() -> None:
    j = Journal()
    flags = SupervisorFlags("one_for_one", 10, 60, Backoff(min=2, max=8, jitter=0))
    tree = Tree([child("a", j, meta={"agent": "alice"})], flags)
    tree.crash("a")
    tree.event("restarting", "a")
    s = tree.stats("a")
    assert (s.state, s.restarts, s.backoff, s.restart, s.meta) == (
        "backoff", 1, 2.0, "permanent", {"agent": "alice"})
    assert s.last_failure == "crashed in a handler: RuntimeError: a crashed"
