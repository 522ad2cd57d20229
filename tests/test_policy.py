"""The pure restart decision, in virtual time, against a simple model of OTP's rules."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hive_actors.config import SupervisionConfig
from hive_actors.errors import Conflict, NotFound
from hive_actors.hive import agents_flags
from hive_actors.supervisors.policy import (
    ChildState,
    Escalate,
    GiveUp,
    Ignore,
    Remove,
    Restart,
    RestartPolicy,
)
from hive_actors.supervisors.spec import (
    Backoff,
    ChildSpec,
    RestartLimit,
    Strategy,
    SupervisorFlags,
)


def spec(cid: str, restart: str = "permanent", limit: RestartLimit | None = None) -> ChildSpec:
    return ChildSpec(cid, lambda: None, restart=restart, limit=limit)  # type: ignore[arg-type,return-value]


def running(policy: RestartPolicy, *ids: str, now: float = 0.0) -> None:
    for cid in ids:
        policy.add(spec(cid))
        policy.ready(cid, now)


# -- examples --------------------------------------------------------------------------------------


def test_backoff_grows_then_resets_after_a_stable_period() -> None:
    flags = SupervisorFlags("one_for_one", 100, 1.0,
                            Backoff(min=1, max=8, factor=2, jitter=0, reset_after=30))
    policy = RestartPolicy(flags, rng=lambda: 0.5)
    running(policy, "a")
    delays = []
    now = 0.0
    for _ in range(6):
        now += 5
        d = policy.exited("a", True, "boom", now)
        assert isinstance(d, Restart)
        delays.append(d.delay)
        assert policy.due(d.token) == ("a",)
        policy.ready("a", now + d.delay)
    assert delays == [1, 2, 4, 8, 8, 8]
    d = policy.exited("a", True, "boom", now + 8 + 30)  # up for 30 s: stable
    assert isinstance(d, Restart) and d.delay == 1


def test_jitter_stays_within_its_fraction() -> None:
    b = Backoff(min=2, max=100, factor=3, jitter=0.25)
    for attempt in range(5):
        base = min(100, 2 * 3**attempt)
        lo, hi = b.delay(attempt, 0.0), b.delay(attempt, 0.999999)
        assert lo == pytest.approx(base * 0.75)
        assert hi == pytest.approx(min(100, base * 1.25), rel=1e-5)


@pytest.mark.parametrize("factor", [2, 2.0, 1e10])
def test_backoff_stays_at_its_ceiling_after_any_number_of_failures(factor: float) -> None:
    # factor**attempt overflows a float after a thousand or so consecutive failures.
    b = Backoff(min=0.1, max=30, factor=factor, jitter=0.2)
    assert b.delay(5000, 0.5) == 30
    assert b.delay(5000, 0.0) == pytest.approx(24)


def test_intensity_zero_escalates_on_the_first_failure() -> None:
    policy = RestartPolicy(SupervisorFlags("one_for_one", 0, 5), rng=random.random)
    running(policy, "a", "b")
    d = policy.exited("b", True, "boom", 1.0)
    assert isinstance(d, Escalate) and d.stop == ("a",)
    assert "more than 0 restarts in 5 s" in d.why


def test_per_child_limit_gives_the_child_up_and_spares_siblings() -> None:
    policy = RestartPolicy(SupervisorFlags("one_for_all", 100, 60), rng=lambda: 0.5)
    policy.add(spec("a"))
    policy.add(spec("b", limit=RestartLimit(2, 60)))
    policy.ready("a", 0)
    policy.ready("b", 0)
    for t in (1.0, 2.0):
        d = policy.exited("b", True, "exit-code 1", t)
        assert isinstance(d, Restart) and d.stop == ("a",)
        policy.due(d.token)
        policy.ready("a", t)
        policy.ready("b", t)
    d = policy.exited("b", True, "exit-code 1", 3.0)
    assert isinstance(d, GiveUp) and "after 2 restarts in 60 s" in d.why
    assert policy.get("b").state is ChildState.GIVEN_UP
    assert policy.get("a").state is ChildState.RUNNING
    policy.revive("b")
    assert policy.get("b").state is ChildState.STARTING and not policy.get("b").history


# -- failures in a row ----------------------------------------------------------------------------

NEVER_READY = "failed to start: did not become ready within 120 s"


class Agent:
    """One agent ``a`` under the agents' supervisor's policy with the default ``[supervision]``
    limits (or ``limit``), failing attempt after attempt in virtual time."""

    def __init__(self, limit: RestartLimit | None = None, seed: int = 0) -> None:
        flags, default = agents_flags(SupervisionConfig())
        assert default.consecutive is not None
        self.most = default.consecutive
        self.policy = RestartPolicy(flags, rng=random.Random(seed).random)
        self.policy.add(spec("a", limit=limit or default))
        self.now = 0.0

    def fail(self, took: list[float], ready_for: float | None = None) -> tuple[int, GiveUp | None]:
        """Attempts of ``a``, the n-th failing ``took[n]`` s after it began (never ready) — or,
        with ``ready_for``, crashing after that long up: how many attempts were made, and the
        give-up if one came."""
        for attempt, seconds in enumerate(took, 1):
            if ready_for is not None:
                self.policy.ready("a", self.now)
                seconds = ready_for
            self.now += seconds
            reason = NEVER_READY if ready_for is None else "exit-code 1"
            d = self.policy.exited("a", True, reason, self.now)
            if isinstance(d, GiveUp):
                return attempt, d
            assert isinstance(d, Restart), d
            self.now += d.delay
            assert self.policy.due(d.token) == ("a",)
        return len(took), None


def test_the_window_alone_never_gives_up_a_child_whose_start_times_out() -> None:
    # The observed bug: each attempt takes its 120 s ready timeout to fail, so no 60 s window
    # ever holds more than one of them — retried for ever.
    assert Agent(RestartLimit(5, 60.0)).fail([120.0] * 1000) == (1000, None)


def test_a_child_that_never_starts_is_given_up_after_exactly_n_attempts_by_default() -> None:
    agent = Agent()
    assert agent.most == 10
    attempts, d = agent.fail([120.0] * 1000)
    assert attempts == 10 and d is not None
    assert (d.limit, d.count) == ("consecutive", 10)
    assert d.why == f"a given up after 10 failures in a row (limit 10); last failure: {NEVER_READY}"
    child = agent.policy.get("a")
    assert child.state is ChildState.GIVEN_UP and child.restarts == 9
    agent.policy.revive("a")  # the operator: its failures are forgotten, 10 more attempts
    assert agent.fail([120.0] * 1000)[0] == 10


@settings(max_examples=200, deadline=None)
@given(took=st.lists(st.floats(0, 400), min_size=10, max_size=10), seed=st.integers(0, 2**32))
def test_a_never_starting_child_is_given_up_within_n_attempts_whatever_the_timing(
    took: list[float], seed: int
) -> None:
    agent = Agent(seed=seed)
    attempts, d = agent.fail(took)
    assert d is not None, "still retried after 10 failed starts"
    if d.limit == "consecutive":
        assert attempts == agent.most
    else:  # quick failures: the window (more than 5 restarts in 60 s) fills first
        assert d.limit == "window" and attempts == 6 < agent.most


def test_a_child_that_runs_stably_between_failures_is_never_given_up() -> None:
    agent = Agent()
    # Up for stable_after (120 s) each time before it crashes: 100 crashes, always restarted.
    assert agent.fail([0.0] * 100, ready_for=120.0) == (100, None)
    assert agent.policy.get("a").attempt == 1  # and its backoff started over each time


def test_one_stable_run_starts_the_failures_in_a_row_over() -> None:
    agent = Agent()
    most = agent.most
    assert agent.fail([120.0] * (most - 1)) == (most - 1, None)
    assert agent.fail([0.0], ready_for=120.0) == (1, None)  # a stable run, then a crash: 1
    assert agent.fail([120.0] * (most - 2)) == (most - 2, None)
    attempts, d = agent.fail([120.0])
    assert d is not None and d.limit == "consecutive" and "10 failures in a row" in d.why
    # Up for less than stable_after between crashes: still in a row.
    agent = Agent()
    attempts, d = agent.fail([0.0] * 20, ready_for=119.0)
    assert attempts == most and d is not None and d.limit == "consecutive"


def test_a_restart_comes_due_for_its_own_children_only() -> None:
    policy = RestartPolicy(SupervisorFlags("one_for_one", 100, 60), rng=lambda: 0.5)
    running(policy, "a", "b", "c")
    da = policy.exited("a", True, "boom", 1.0)
    dc = policy.exited("c", True, "boom", 1.0)
    assert isinstance(da, Restart) and isinstance(dc, Restart)
    assert policy.due(dc.token) == ("c",)
    assert policy.due(da.token) == ("a",)
    assert policy.due(da.token) == ()  # due once
    assert policy.get("b").state is ChildState.RUNNING


def test_a_restart_called_off_is_never_due_and_not_kept() -> None:
    policy = RestartPolicy(SupervisorFlags("one_for_one", 1000, 60), rng=lambda: 0.5)
    running(policy, "a", "b")
    for t in range(50):
        d = policy.exited("a", True, "boom", float(t))
        assert isinstance(d, Restart)
        # Called off before it is due: "a" is revived (and runs again), or at last removed.
        if t == 49:
            policy.remove("a")
        else:
            policy.revive("a")
            policy.ready("a", float(t))
    assert policy.due(d.token) == ()  # "a" is gone: its restart starts nothing
    # One token per child at most is remembered, however many restarts were called off.
    assert len(policy._groups) <= len(policy.children) + 1


def test_unknown_and_duplicate_children_are_refused() -> None:
    policy = RestartPolicy(SupervisorFlags(), rng=random.random)
    policy.add(spec("a"))
    with pytest.raises(Conflict, match="'a' already exists"):
        policy.add(spec("a"))
    with pytest.raises(NotFound, match="no child 'zz'"):
        policy.get("zz")


# -- the state machine -----------------------------------------------------------------------------


@dataclass
class ModelChild:
    id: str
    restart: str
    limit: RestartLimit | None
    alive: bool = True
    given_up: bool = False
    started_at: float | None = 0.0
    attempt: int = 0
    failures: int = 0
    history: list[float] = field(default_factory=list)


class OTPModel(RuleBasedStateMachine):
    """Drive the policy with random failures; check each answer against a plain re-statement
    of the rules."""

    @initialize(
        strategy=st.sampled_from(list(Strategy)),
        intensity=st.integers(0, 4),
        period=st.floats(1, 20),
        bmin=st.floats(0, 2),
        factor=st.floats(1, 3),
        jitter=st.floats(0, 0.5),
        reset_after=st.floats(1, 30),
        kinds=st.lists(
            st.tuples(st.sampled_from(["permanent", "transient", "temporary"]),
                      st.one_of(st.none(), st.integers(0, 3)),
                      st.one_of(st.none(), st.integers(1, 4))),
            min_size=1, max_size=5),
        seed=st.integers(0, 2**32),
    )
    def setup(self, strategy: Strategy, intensity: int, period: float, bmin: float,
              factor: float, jitter: float, reset_after: float,
              kinds: list[tuple[str, int | None, int | None]], seed: int) -> None:
        self.backoff = Backoff(min=bmin, max=max(bmin, 10.0), factor=factor, jitter=jitter,
                               reset_after=reset_after)
        self.flags = SupervisorFlags(strategy, intensity, period, self.backoff)
        self.policy = RestartPolicy(self.flags, rng=random.Random(seed).random)
        self.now = 0.0
        self.restarts: list[float] = []
        self.children: list[ModelChild] = []
        self.escalated = False
        for i, (kind, lim, consecutive) in enumerate(kinds):
            limit = None if lim is None else RestartLimit(lim, period, consecutive)
            self.policy.add(spec(f"c{i}", kind, limit))
            self.policy.ready(f"c{i}", 0.0)
            self.children.append(ModelChild(f"c{i}", kind, limit))

    def alive(self) -> list[ModelChild]:
        return [c for c in self.children if c.alive]

    @precondition(lambda self: not self.escalated and any(c.alive for c in self.children))
    @rule(data=st.data(), abnormal=st.booleans(), dt=st.floats(0, 10))
    def child_exits(self, data: st.DataObject, abnormal: bool, dt: float) -> None:
        self.now += dt
        child = data.draw(st.sampled_from(self.alive()))
        decision = self.policy.exited(child.id, abnormal, "boom", self.now)

        if child.restart == "temporary":
            assert decision == Remove(child.id)
            self.children.remove(child)
            return
        if child.restart == "transient" and not abnormal:
            assert isinstance(decision, Ignore)
            child.alive = False
            return
        if child.started_at is not None and self.now - child.started_at >= self.backoff.reset_after:
            child.failures = 0  # it had stayed up: its failures in a row start over
        child.failures += 1
        if child.limit is not None:
            window = [t for t in child.history if self.now - t <= child.limit.period]
            if len(window) + 1 > child.limit.intensity:
                assert isinstance(decision, GiveUp) and decision.limit == "window", decision
                child.alive, child.given_up = False, True
                child.history = [*window, self.now]
                return
            child.history = [*window, self.now]
            most = child.limit.consecutive
            if most is not None and child.failures >= most:
                assert isinstance(decision, GiveUp), decision
                assert (decision.limit, decision.count) == ("consecutive", most), decision
                child.alive, child.given_up = False, True
                return
        window = [t for t in self.restarts if self.now - t <= self.flags.period]
        self.restarts = [*window, self.now]
        if len(self.restarts) > self.flags.intensity:
            assert isinstance(decision, Escalate), decision
            child.alive = False
            assert decision.stop == tuple(c.id for c in reversed(self.children) if c.alive)
            self.escalated = True
            return

        assert isinstance(decision, Restart), decision
        index = self.children.index(child)
        if self.flags.strategy is Strategy.ONE_FOR_ONE:
            affected: list[ModelChild] = []
        elif self.flags.strategy is Strategy.ONE_FOR_ALL:
            affected = [c for c in self.children if c is not child and c.alive]
        else:
            affected = [c for c in self.children[index + 1:] if c.alive]
        assert decision.stop == tuple(c.id for c in reversed(affected))
        gone = [c for c in affected if c.restart == "temporary"]
        assert decision.remove == tuple(c.id for c in gone)
        group = [c for c in self.children if c is child or (c in affected and c not in gone)]
        assert decision.start == tuple(c.id for c in group)

        if child.started_at is not None and self.now - child.started_at >= self.backoff.reset_after:
            child.attempt = 0
        base = min(self.backoff.max, self.backoff.min * self.backoff.factor**child.attempt) \
            if self.backoff.min else 0.0
        assert base * (1 - self.backoff.jitter) - 1e-9 <= decision.delay
        assert decision.delay <= min(self.backoff.max, base * (1 + self.backoff.jitter)) + 1e-9
        child.attempt += 1

        # The restart happens: the group comes back, in order.
        for c in gone:
            self.children.remove(c)
            self.policy.remove(c.id)
        self.now += decision.delay
        assert self.policy.due(decision.token) == decision.start
        for c in group:
            self.policy.ready(c.id, self.now)
            c.alive, c.started_at = True, self.now

    @rule(dt=st.floats(0, 40))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: not self.escalated and any(c.given_up for c in self.children))
    @rule(data=st.data())
    def operator_revives(self, data: st.DataObject) -> None:
        child = data.draw(st.sampled_from([c for c in self.children if c.given_up]))
        self.policy.revive(child.id)
        self.policy.ready(child.id, self.now)
        child.alive, child.given_up, child.history = True, False, []
        child.attempt, child.failures, child.started_at = 0, 0, self.now

    @invariant()
    def states_agree(self) -> None:
        if not hasattr(self, "policy") or self.escalated:
            return
        states = {c.id: c.state for c in self.policy.children}
        assert list(states) == [c.id for c in self.children]
        for c in self.children:
            expected = (ChildState.RUNNING if c.alive else
                        ChildState.GIVEN_UP if c.given_up else ChildState.TERMINATED)
            assert states[c.id] is expected, (c, states[c.id])


OTPModel.TestCase.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_policy_matches_the_otp_model = OTPModel.TestCase


def test_escalation_is_final_for_the_model() -> None:
    # Sanity of the model itself: with intensity 1, two quick failures escalate.
    policy = RestartPolicy(SupervisorFlags("one_for_one", 1, 10, Backoff(min=0)), rng=random.random)
    running(policy, "a")
    d = policy.exited("a", True, "x", 1.0)
    assert isinstance(d, Restart) and d.delay == 0
    policy.due(d.token)
    policy.ready("a", 1.0)
    assert isinstance(policy.exited("a", True, "x", 2.0), Escalate)
