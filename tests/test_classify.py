"""The pure crash classification: real systemd 252 and ≥ 254 sequences, malformed input, and a
property that no run is ever reported as crashed twice, whatever the signal order."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hive_actors.errors import ConfigError
from hive_actors.watcher.backoff import Backoff
from hive_actors.watcher.classify import Intent, UnitSnapshot, classify, restart_expected
from hive_actors.watcher.props import (
    SERVICE_INTERFACE,
    UNIT_INTERFACE,
    ServiceProps,
    UnitProps,
    agent_of_unit,
    check_variants,
    decode_service,
    decode_unit,
    unit_name_for,
)
from hive_actors.watcher.verdicts import (
    Crash,
    FailedStop,
    GaveUp,
    NoEvent,
    Rebooted,
    RestartedUnseen,
    RestartScheduled,
    Stopped,
    Verdict,
)

A = "a1" * 16
B = "b2" * 16
C = "c3" * 16


@dataclass(frozen=True)
class Obs:
    """One observation: the Unit signal plus the Service values sent just before it."""

    active: str
    sub: str
    inv: str
    n: int = 0
    result: str = "success"
    code: int = 0
    status: int = 0
    job: int = 0
    intent: Intent = field(default_factory=Intent)
    restart: str | None = None

    def props(self) -> tuple[ServiceProps, UnitProps]:
        service = ServiceProps(
            result=self.result, exec_main_code=self.code, exec_main_status=self.status,
            n_restarts=self.n, main_pid=0 if self.active != "active" else 4242,
            restart=self.restart,
        )
        unit = UnitProps(
            active_state=self.active, sub_state=self.sub, job_id=self.job,
            job_path=f"/org/freedesktop/systemd1/job/{self.job}" if self.job else "/",
            invocation_id=self.inv,
        )
        return service, unit


def run(observations: list[Obs], prev: UnitSnapshot | None = None) -> list[Verdict]:
    """Classify a sequence; return the verdicts that are events (NoEvent dropped)."""
    events: list[Verdict] = []
    for obs in observations:
        service, unit = obs.props()
        prev, verdict = classify(prev, service, unit, obs.intent)
        if not isinstance(verdict, NoEvent):
            events.append(verdict)
    return events


RUNNING_A = Obs("active", "running", A)

# --- real sequences ---------------------------------------------------------------------------

CRASH_252_RESTARTING = [
    RUNNING_A,
    Obs("failed", "failed", A, 0, "exit-code", 1, 3),
    Obs("activating", "auto-restart", A, 0, "exit-code", 1, 3),
    # RestartSec elapsed: the restart job is queued, NRestarts counts it.
    Obs("activating", "auto-restart", A, 1, "exit-code", 1, 3, job=7),
    Obs("activating", "start", B, 1, job=7),
    Obs("active", "running", B, 1, job=7),
    Obs("active", "running", B, 1),
]

CRASH_254_RESTARTING = [
    RUNNING_A,
    Obs("failed", "failed-before-auto-restart", A, 0, "signal", 2, 9),
    Obs("activating", "auto-restart", A, 0, "signal", 2, 9),
    Obs("activating", "auto-restart-queued", A, 1, "signal", 2, 9, job=8),
    Obs("activating", "start", B, 1, job=8),
    Obs("active", "running", B, 1, job=8),
    Obs("active", "running", B, 1),
]


def test_crash_without_restart_is_one_crash_with_exit_code() -> None:
    events = run([RUNNING_A, Obs("failed", "failed", A, 0, "exit-code", 1, 3),
                  Obs("failed", "failed", A, 0, "exit-code", 1, 3)])
    assert events == [Crash("exit-code", 1, 3, None, A, 0, will_restart=False)]


def test_core_dump_gives_the_signal() -> None:
    events = run([RUNNING_A, Obs("failed", "failed", A, 0, "core-dump", 3, 11)])
    assert events == [Crash("core-dump", 3, None, 11, A, 0, will_restart=False)]


def test_252_failed_then_auto_restart_is_one_crash_and_a_restart_notice() -> None:
    # Without Restart= known, "failed" cannot say systemd restarts; auto-restart then does.
    assert run(CRASH_252_RESTARTING) == [
        Crash("exit-code", 1, 3, None, A, 0, will_restart=False),
        RestartScheduled(A, 0),
    ]


def test_252_with_restart_policy_known_is_one_crash() -> None:
    seq = [Obs(o.active, o.sub, o.inv, o.n, o.result, o.code, o.status, o.job,
               restart="on-failure") for o in CRASH_252_RESTARTING]
    assert run(seq) == [Crash("exit-code", 1, 3, None, A, 0, will_restart=True)]


def test_254_crash_is_one_report_that_says_it_restarts() -> None:
    assert run(CRASH_254_RESTARTING) == [Crash("signal", 2, None, 9, A, 0, will_restart=True)]


def test_254_crash_loop_is_one_crash_per_restart_then_gave_up() -> None:
    seq = CRASH_254_RESTARTING[:-1] + [
        Obs("failed", "failed-before-auto-restart", B, 1, "exit-code", 1, 1),
        Obs("activating", "auto-restart", B, 1, "exit-code", 1, 1),
        Obs("activating", "auto-restart-queued", B, 2, "exit-code", 1, 1, job=9),
        # Start limit hit: no new run, Result keeps the first failure, the job fails.
        Obs("failed", "failed", B, 2, "exit-code", 1, 1, job=9),
        Obs("failed", "failed", B, 2, "exit-code", 1, 1),
    ]
    assert run(seq) == [
        Crash("signal", 2, None, 9, A, 0, will_restart=True),
        Crash("exit-code", 1, 1, None, B, 1, will_restart=True),
        GaveUp("exit-code", B, 2),
    ]


def test_252_gave_up_after_auto_restart() -> None:
    seq = CRASH_252_RESTARTING[:4] + [Obs("failed", "failed", A, 1, "exit-code", 1, 3, job=7)]
    assert [type(v) for v in run(seq)] == [Crash, RestartScheduled, GaveUp]


@pytest.mark.parametrize("hive", [False, True])
def test_clean_stop_is_a_stop(hive: bool) -> None:
    intent = Intent(hive_stop=hive)
    seq = [
        RUNNING_A,
        Obs("deactivating", "stop-sigterm", A, job=3, intent=intent),
        Obs("inactive", "dead", A, 0, "success", 1, 0, job=3, intent=intent),
        Obs("inactive", "dead", A, 0, "success", 1, 0, intent=intent),
    ]
    assert run(seq) == [Stopped("hive" if hive else "operator-or-guest", A)]


def test_hive_stop_that_fails_is_a_failed_stop_not_a_crash() -> None:
    hive = Intent(hive_stop=True, job_type="stop")
    seq = [
        RUNNING_A,
        Obs("deactivating", "stop-sigterm", A, job=3, intent=hive),
        Obs("failed", "failed", A, 0, "timeout", 2, 9, job=3, intent=hive),
        # The intent is gone once settled; the unit stays failed: still no crash.
        Obs("failed", "failed", A, 0, "timeout", 2, 9),
    ]
    assert run(seq) == [FailedStop("hive", "timeout", A)]


@pytest.mark.parametrize("job_type", [None, "stop"])
def test_failure_with_a_pending_stop_job_is_a_failed_stop(job_type: str | None) -> None:
    seq = [RUNNING_A, Obs("failed", "failed", A, 0, "timeout", 2, 9, job=3,
                          intent=Intent(job_type=job_type))]
    assert run(seq) == [FailedStop("operator-or-guest", "timeout", A)]


def test_failure_during_a_start_job_is_a_crash() -> None:
    start = Intent(job_type="start")
    seq = [
        Obs("inactive", "dead", ""),
        Obs("activating", "start", C, job=4, intent=start),
        Obs("failed", "failed", C, 0, "exit-code", 1, 1, job=4, intent=start),
    ]
    assert run(seq) == [Crash("exit-code", 1, 1, None, C, 0, will_restart=False)]


def test_poweroff_inside_is_a_stop() -> None:
    assert run([RUNNING_A, Obs("inactive", "dead", A, 0, "success", 1, 0)]) == [
        Stopped("operator-or-guest", A)
    ]


def test_reboot_inside_252_is_one_reboot() -> None:
    seq = [
        RUNNING_A,
        Obs("inactive", "dead", A, 0, "success", 1, 133),
        Obs("activating", "auto-restart", A, 0, "success", 1, 133),
        Obs("activating", "auto-restart", A, 1, "success", 1, 133, job=5),
        Obs("activating", "start", B, 1, job=5),
        Obs("active", "running", B, 1),
    ]
    assert run(seq) == [Rebooted(A, 133)]


def test_reboot_inside_254_is_one_reboot() -> None:
    seq = [
        RUNNING_A,
        Obs("inactive", "dead-before-auto-restart", A, 0, "success", 1, 133),
        Obs("activating", "auto-restart", A, 0, "success", 1, 133),
        Obs("activating", "auto-restart-queued", A, 1, "success", 1, 133, job=5),
        Obs("activating", "start", B, 1, job=5),
        Obs("active", "running", B, 1),
    ]
    assert run(seq) == [Rebooted(A, 133)]


def test_clean_exit_restarted_by_restart_always_252() -> None:
    seq = [RUNNING_A, Obs("inactive", "dead", A, 0, "success", 1, 0),
           Obs("activating", "auto-restart", A, 0, "success", 1, 0)]
    assert run(seq) == [Stopped("operator-or-guest", A), RestartScheduled(A, 0)]


def test_reset_failed_is_no_event() -> None:
    seq = [RUNNING_A, Obs("failed", "failed", A, 0, "exit-code", 1, 1),
           Obs("inactive", "dead", A, 0, "success", 1, 1)]
    assert [type(v) for v in run(seq)] == [Crash]


def test_first_sight_failed_unit_is_a_crash_and_others_are_not_events() -> None:
    assert [type(v) for v in run([Obs("failed", "failed", A, 2, "oom-kill", 2, 9)])] == [Crash]
    assert run([Obs("inactive", "dead", A)]) == []
    assert run([RUNNING_A]) == []
    assert [type(v) for v in run([Obs("activating", "auto-restart", A, 1, "exit-code", 1, 1)])
            ] == [Crash]


@pytest.mark.parametrize("active,sub", [("active", "frobnicating"), ("failed", "mystery"),
                                        ("exploded", "failed")])
def test_unknown_states_are_not_events(active: str, sub: str) -> None:
    assert run([RUNNING_A, Obs(active, sub, A, 0, "exit-code", 1, 1)]) == []


def test_restart_seen_late_after_the_watcher_was_away() -> None:
    assert run([RUNNING_A, Obs("active", "running", B, 2)]) == [RestartedUnseen(A, B, 2)]
    # A restart the watcher followed is not reported again.
    assert [type(v) for v in run(CRASH_254_RESTARTING)] == [Crash]


@pytest.mark.parametrize(
    "policy,result,expected",
    [("no", "exit-code", False), (None, "signal", False), ("always", "success", True),
     ("on-failure", "exit-code", True), ("on-failure", "success", False),
     ("on-abnormal", "exit-code", False), ("on-abnormal", "signal", True),
     ("on-abort", "core-dump", True), ("on-abort", "timeout", False),
     ("on-watchdog", "watchdog", True), ("on-success", "success", True),
     ("always", "start-limit-hit", False)],
)
def test_restart_expected_follows_systemd(policy: str | None, result: str, expected: bool) -> None:
    assert restart_expected(policy, result) is expected


# --- the property: never two crash reports for one run ------------------------------------------

STATES = [
    ("active", "running"), ("activating", "start"), ("deactivating", "stop-sigterm"),
    ("inactive", "dead"), ("failed", "failed"), ("activating", "auto-restart"),
    ("activating", "auto-restart-queued"), ("failed", "failed-before-auto-restart"),
    ("inactive", "dead-before-auto-restart"), ("active", "not-a-state"),
]

observations = st.builds(
    lambda state, inv, n, result, job, hive, restart: Obs(
        state[0], state[1], inv, n, result, 1, 3, job, Intent(hive_stop=hive), restart
    ),
    st.sampled_from(STATES),
    st.sampled_from(["", A, B, C]),
    st.integers(0, 3),
    st.sampled_from(["success", "exit-code", "signal", "timeout"]),
    st.sampled_from([0, 6]),
    st.booleans(),
    st.sampled_from([None, "no", "on-failure"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(observations, max_size=40))
def test_never_two_crashes_for_one_run(seq: list[Obs]) -> None:
    crashes = [v for v in run(seq) if isinstance(v, Crash)]
    keys = [(c.invocation_id, c.n_restarts) for c in crashes]
    assert len(keys) == len(set(keys))
    named = [c.invocation_id for c in crashes if c.invocation_id]
    assert len(named) == len(set(named))
    assert all(c.result != "success" for c in crashes)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_real_sequences_duplicated_and_reordered_report_one_crash(data: st.DataObject) -> None:
    seq = data.draw(st.sampled_from([CRASH_252_RESTARTING, CRASH_254_RESTARTING]))
    noisy = data.draw(st.lists(st.sampled_from(seq), min_size=1, max_size=25))
    events = run([RUNNING_A] + noisy)
    crashes = [v for v in events if isinstance(v, Crash)]
    assert len(crashes) <= 1
    if any(o.result != "success" for o in noisy):
        # Reordered, the new run may be seen before the crash of the old one: the old run's
        # end is then reported as a restart seen late, and its crash signal is a duplicate.
        assert crashes or any(isinstance(v, RestartedUnseen) for v in events)


# --- reading properties off the bus --------------------------------------------------------------

GOOD_SERVICE = {"Result": ("s", "exit-code"), "ExecMainCode": ("i", 1),
                "ExecMainStatus": ("i", 3), "NRestarts": ("u", 0), "MainPID": ("u", 0),
                "Restart": ("s", "no"), "Unrelated": ("t", 5)}
GOOD_UNIT = {"ActiveState": ("s", "failed"), "SubState": ("s", "failed"),
             "Job": ("(uo)", (0, "/")), "InvocationID": ("ay", bytes.fromhex(A))}


def test_good_properties_decode() -> None:
    service, problems = check_variants(SERVICE_INTERFACE, GOOD_SERVICE)
    assert problems == []
    unit, problems = check_variants(UNIT_INTERFACE, GOOD_UNIT)
    assert problems == []
    assert decode_service(service) == ServiceProps("exit-code", 1, 3, 0, 0, "no")
    assert decode_unit(unit) == UnitProps("failed", "failed", 0, "/", A)


@pytest.mark.parametrize(
    "interface,bad,needle",
    [
        (UNIT_INTERFACE, {"ActiveState": ("u", 3)}, "ActiveState: signature 'u'"),
        (UNIT_INTERFACE, {"ActiveState": ("s", b"failed")}, "ActiveState: bad value"),
        (UNIT_INTERFACE, {"Job": ("(uo)", (1,))}, "Job: bad value"),
        (UNIT_INTERFACE, {"InvocationID": ("ay", b"short")}, "InvocationID: bad value"),
        (UNIT_INTERFACE, {"SubState": "failed"}, "SubState: not a (signature, value)"),
        (SERVICE_INTERFACE, {"NRestarts": ("u", -1)}, "NRestarts: bad value"),
        (SERVICE_INTERFACE, {"ExecMainStatus": ("i", 2**31)}, "ExecMainStatus: bad value"),
        (UNIT_INTERFACE, {"Job": ("(uo)", 7)}, "Job: bad value"),
        (SERVICE_INTERFACE, {"ExecMainCode": ("i", True)}, "ExecMainCode: bad value"),
        (SERVICE_INTERFACE, {"MainPID": ("s", "12")}, "MainPID: signature 's'"),
    ],
)
def test_malformed_properties_are_problems(interface: str, bad: dict[str, object],
                                            needle: str) -> None:
    values, problems = check_variants(interface, bad)
    assert values == {}
    assert len(problems) == 1 and needle in problems[0]


def test_not_a_dict_and_unknown_interface_are_problems() -> None:
    assert check_variants(UNIT_INTERFACE, [("ActiveState", "failed")])[1]
    assert check_variants("org.example.Nope", {})[1]


def test_missing_properties_are_named() -> None:
    missing = decode_unit({"ActiveState": "failed"})
    assert isinstance(missing, list)
    assert any("SubState: missing" in line for line in missing)
    assert isinstance(decode_service({}), list)


@pytest.mark.parametrize(
    "unit,agent",
    [("container@alice.service", "alice"), ("container@a-b_c.service", "a-b_c"),
     ("container@.service", None), ("container@alice.scope", None), ("alice.service", None),
     ("container@al/ice.service", None), ("xcontainer@alice.service", None)],
)
def test_agent_of_unit(unit: str, agent: str | None) -> None:
    assert agent_of_unit(unit) == agent


def test_unit_name_for_refuses_odd_names() -> None:
    assert unit_name_for("bob") == "container@bob.service"
    with pytest.raises(ValueError, match="cannot be a container unit"):
        unit_name_for("bo b")


# --- backoff ---------------------------------------------------------------------------------


def test_backoff_grows_caps_and_jitters() -> None:
    backoff = Backoff(initial=0.1, factor=2, maximum=1.0, jitter=0.2)
    assert [round(backoff.delay(n, 0.5), 3) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(10, 0.0) == pytest.approx(0.8)
    assert backoff.delay(10, 0.999999) == pytest.approx(1.2, rel=1e-5)
    with pytest.raises(ConfigError, match="initial"):
        Backoff(initial=0)
