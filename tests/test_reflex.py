"""The crash reflex against the classification it answers early for: whatever the raw payloads
(well formed or not, in any order), a crash the reflex recognises is the crash the classification
reports for the same observation; and on the real crash sequences the reflex does recognise it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hive_actors.watcher.classify import Intent
from hive_actors.watcher.props import (
    SERVICE_INTERFACE,
    UNIT_INTERFACE,
    check_variants,
    read_service_values,
    read_unit_values,
)
from hive_actors.watcher.reflex import arm, crash, read_service
from hive_actors.watcher.tracker import UnitState
from hive_actors.watcher.verdicts import Crash, NoEvent, Verdict

A = "a1" * 16
B = "b2" * 16
NO_JOB = ("(uo)", (0, "/"))
JOB = ("(uo)", (6, "/org/freedesktop/systemd1/job/6"))


def service(result: str = "success", code: int = 0, status: int = 0, n: int = 0,
            pid: int = 0, **more: Any) -> dict[str, Any]:
    """A Service payload as systemd sends it (``more`` adds or replaces variants)."""
    payload = {"Result": ("s", result), "ExecMainCode": ("i", code),
               "ExecMainStatus": ("i", status), "NRestarts": ("u", n), "MainPID": ("u", pid)}
    payload.update(more)
    return payload


def unit(active: str, sub: str, inv: str, job: Any = NO_JOB, **more: Any) -> dict[str, Any]:
    payload = {"ActiveState": ("s", active), "SubState": ("s", sub), "Job": job,
               "InvocationID": ("ay", bytes.fromhex(inv))}
    payload.update(more)
    return payload


@dataclass
class Seen:
    verdict: Verdict | None
    """The classification's verdict (None: the Unit payload had problems)."""
    early: Crash | None
    """What the reflex answered first."""


def primed(restart: str = "no") -> UnitState:
    """A unit read whole once (as the watcher's first scan does), its run A up."""
    state = UnitState(agent="alice", unit="container@alice.service")
    svc, _ = check_variants(SERVICE_INTERFACE, service(pid=42, Restart=("s", restart)))
    uni, _ = check_variants(UNIT_INTERFACE, unit("active", "running", A))
    state.replace(svc, uni)
    state.classify(Intent())
    return state


def observe(state: UnitState, svc: Any, uni: Any, hive_stop: bool = False,
            job_type: str | None = None) -> Seen:
    """One observation as the watcher's signal callback makes it: the Service payload held (or
    merged through the checks when the reflex cannot read it), the Unit payload shown to the
    reflex, then merged and classified."""
    if not state.hold_service(svc):
        values, problems = check_variants(SERVICE_INTERFACE, svc)
        if not problems:
            state.merge(SERVICE_INTERFACE, values)
    early = None
    values = read_unit_values(uni)
    if values is None:
        values, problems = check_variants(UNIT_INTERFACE, uni)
        if problems:
            return Seen(None, None)
    elif state.armed is not None:
        early = crash(state.armed, state.held, values, hive_stop)
    state.merge(UNIT_INTERFACE, values)
    props = state.unit_props()
    # The watcher knows a job's type only when there is a job (none: no type).
    intent = Intent(hive_stop, job_type if props is not None and props.has_job else None)
    return Seen(state.classify(intent), early)


# --- the real sequences -------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["failed", "failed-before-auto-restart"])
def test_a_crash_of_the_running_unit_is_recognised_early_as_classified(sub: str) -> None:
    state = primed()
    seen = observe(state, service("exit-code", 1, 3), unit("failed", sub, A))
    assert seen.early == Crash("exit-code", 1, 3, None, A, 0,
                               will_restart=sub == "failed-before-auto-restart")
    assert seen.verdict == seen.early
    # Reported: the run's next observations (252's auto-restart, a duplicate) are not crashes.
    assert state.armed is None
    again = observe(state, service("exit-code", 1, 3), unit("activating", "auto-restart", A))
    assert again.early is None and not isinstance(again.verdict, Crash)


def test_the_reflex_rearms_for_each_new_run_of_a_crash_loop() -> None:
    state = primed("on-failure")
    for n, inv in enumerate([A, B]):
        observe(state, service(n=n, pid=42), unit("active", "running", inv))
        assert state.armed == inv
        seen = observe(state, service("signal", 2, 9, n=n), unit("failed", "failed", inv))
        assert seen.early == seen.verdict
        assert seen.early == Crash("signal", 2, None, 9, inv, n, will_restart=True)


@pytest.mark.parametrize(
    "svc,uni,hive_stop,why",
    [
        (service("exit-code", 1, 3), unit("failed", "failed", A), True, "the hive stopped it"),
        (service("exit-code", 1, 3), unit("failed", "failed", A, JOB), False, "a job pends"),
        (service("success"), unit("inactive", "dead", A), False, "a clean stop"),
        (service("exit-code", 1, 3), unit("failed", "failed", B), False, "another run"),
        (service("exit-code", 1, 3), unit("active", "running", A), False, "not failing"),
        (service("exit-code", 1, 3, NRestarts=("u", True)), unit("failed", "failed", A), False,
         "a bool for a count"),
        (service("exit-code", 1, 3), unit("failed", "failed", A, ("(uo)", [0, "/"])), False,
         "a list for a struct"),
        (service("exit-code", 1, 3), unit("failed", "mystery", A), False, "an unknown state"),
    ],
)
def test_the_reflex_leaves_everything_else_to_the_classification(
    svc: dict[str, Any], uni: dict[str, Any], hive_stop: bool, why: str
) -> None:
    seen = observe(primed(), svc, uni, hive_stop, job_type="stop")
    assert seen.early is None, why


ODD_UNIT = [
    ("ActiveState", ["s", "failed"]), ("ActiveState", ("s", "failed", "x")),
    ("ActiveState", ("u", 3)), ("SubState", ["s", "failed"]), ("SubState", ("s", b"failed")),
    ("Job", ["(uo)", (0, "/")]), ("Job", ("(uo)", [0, "/"])), ("Job", ("(uo)", (False, "/"))),
    ("Job", ("(uo)", (0, "x"))), ("Job", ("(uo)", (0,))), ("Job", ("(uo)", 0)),
    ("InvocationID", ["ay", bytes.fromhex(A)]), ("InvocationID", ("ay", bytearray.fromhex(A))),
    ("InvocationID", ("s", A)), ("InvocationID", None),
]
ODD_SERVICE = [
    ("Result", ["s", "exit-code"]), ("Result", ("s", b"exit-code")), ("Result", None),
    ("ExecMainCode", ("i", True)), ("ExecMainCode", ("u", 1)), ("ExecMainCode", ("i", 1.0)),
    ("ExecMainStatus", ("i", 2**31)), ("ExecMainStatus", ("i", -(2**31) - 1)),
    ("NRestarts", ("u", -1)), ("NRestarts", ("u", 2**32)), ("NRestarts", ["u", 0]),
    ("MainPID", ("u", 2**32)), ("MainPID", ["u", 0]), ("MainPID", ("s", "1")),
    ("MainPID", None), ("Restart", ("s", 5)), ("Restart", ["s", "no"]),
]


@pytest.mark.parametrize("interface,name,odd", [(UNIT_INTERFACE, *odd) for odd in ODD_UNIT]
                         + [(SERVICE_INTERFACE, *odd) for odd in ODD_SERVICE])
def test_one_odd_property_in_a_crash_leaves_it_to_the_classification(
    interface: str, name: str, odd: Any
) -> None:
    """A crash in every other respect, one property odd (None: missing): no early answer —
    the checks refuse it, or it is stricter than they are (a bytearray)."""
    svc, uni = service("exit-code", 1, 3), unit("failed", "failed", A)
    payload = uni if interface == UNIT_INTERFACE else svc
    if odd is None:
        del payload[name]
    else:
        payload[name] = odd
    assert observe(primed(), svc, uni).early is None
    assert observe(primed(), service("exit-code", 1, 3), unit("failed", "failed", A)).early


def test_without_a_service_signal_just_before_there_is_no_early_answer() -> None:
    state = primed()
    state.merge(SERVICE_INTERFACE, check_variants(SERVICE_INTERFACE, service("exit-code", 1, 3))[0])
    failed = read_unit_values(unit("failed", "failed", A))
    assert state.armed is not None and failed is not None
    assert crash(state.armed, state.held, failed, False) is None


def test_arm_needs_a_run_with_an_id_not_reported_yet() -> None:
    assert arm(None) is None
    state = primed()
    assert state.armed == A and arm(state.snapshot) == A
    observe(state, service(), unit("inactive", "dead", ""))
    assert state.armed is None  # systemd gave no id


def test_read_service_takes_the_const_restart_policy_unless_the_signal_has_one() -> None:
    held = read_service(service("exit-code", 1, 3), "on-failure")
    assert held is not None and (held.result, held.restart) == ("exit-code", "on-failure")
    own = read_service(service("exit-code", 1, 3, Restart=("s", "always")), "no")
    assert own is not None and own.restart == "always"
    assert read_service(service(Restart=("s", 5)), "no") is None
    assert read_service({"Result": ("s", "success")}, None) is None  # not whole
    assert read_service([("Result", "success")], None) is None


def test_a_held_service_signal_is_merged_before_anything_else() -> None:
    state = primed()
    assert state.hold_service(service("exit-code", 1, 7, n=2))
    assert state.held is not None
    props = state.service_props()
    assert state.held is None
    assert props is not None and (props.result, props.exec_main_status, props.n_restarts) == (
        "exit-code", 7, 2)
    assert props.restart == "no"  # the const one, from the first read


# --- the properties -----------------------------------------------------------------------------

def variants(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly well-formed variants, sometimes an odd one."""
    return st.one_of(st.sampled_from(good), st.sampled_from(bad)) if bad else st.sampled_from(good)


SERVICE_VARIANTS = {
    "Result": variants([("s", "success"), ("s", "exit-code"), ("s", "signal"), ("s", "timeout")],
                       [("s", b"exit-code"), ["s", "exit-code"], ("i", 1), ("s",)]),
    "ExecMainCode": variants([("i", 0), ("i", 1), ("i", 2), ("i", 3)],
                             [("i", True), ("u", 1), ("i", 2**31), ("i", 1.0)]),
    "ExecMainStatus": variants([("i", 0), ("i", 3), ("i", 9), ("i", 133)],
                               [("i", -(2**31) - 1), ("i", "3")]),
    "NRestarts": variants([("u", 0), ("u", 1), ("u", 2)], [("u", -1), ("u", 2**32), ("s", "1")]),
    "MainPID": variants([("u", 0), ("u", 4242)],
                        [("s", "12"), ("u", False), ["u", 0], ("u", 2**32)]),
    "Restart": variants([("s", "no"), ("s", "on-failure"), ("s", "always")], [("s", 5)]),
}
UNIT_STATES = [
    ("active", "running"), ("activating", "start"), ("deactivating", "stop-sigterm"),
    ("inactive", "dead"), ("failed", "failed"), ("activating", "auto-restart"),
    ("activating", "auto-restart-queued"), ("failed", "failed-before-auto-restart"),
    ("inactive", "dead-before-auto-restart"), ("active", "not-a-state"), ("weird", "failed"),
]
RUNS = [A, B]


@st.composite
def service_payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload = {}
    for name, values in SERVICE_VARIANTS.items():
        # Restart is const: rarely in a signal. Anything else is now and then missing.
        if draw(st.integers(0, 9)) < (1 if name == "Restart" else 9):
            payload[name] = draw(values)
    return payload


@st.composite
def unit_payloads(draw: st.DrawFn) -> dict[str, Any]:
    active, sub = draw(st.sampled_from(UNIT_STATES))
    inv = draw(st.sampled_from(RUNS))
    payload = {
        "ActiveState": draw(variants([("s", active)], [("u", 3), ("s", b"failed"),
                                                       ["s", active], ("s", active, "x")])),
        "SubState": draw(variants([("s", sub)], [("s", ["failed"]), "sf"])),
        "Job": draw(variants([NO_JOB, NO_JOB, JOB],
                             [("(uo)", (False, "/")), ("(uo)", [0, "/"]), ("(uo)", (0, "x")),
                              ("(uo)", 7)])),
        "InvocationID": draw(variants([("ay", bytes.fromhex(inv))],
                                      [("ay", bytearray.fromhex(inv)), ("ay", b""),
                                       ("ay", b"short"), ("s", inv),
                                       ["ay", bytes.fromhex(inv)]])),
    }
    if draw(st.integers(0, 19)) == 0:
        del payload[draw(st.sampled_from(sorted(payload)))]
    return payload


observations = st.tuples(service_payloads(), unit_payloads(), st.booleans(),
                         st.sampled_from([None, "start", "stop", "restart"]))


@settings(max_examples=500, deadline=None)
@given(st.lists(observations, max_size=30), st.sampled_from(["no", "on-failure"]))
def test_an_early_crash_is_always_the_classified_one(
    sequence: list[tuple[dict[str, Any], dict[str, Any], bool, str | None]], restart: str
) -> None:
    state = primed(restart)
    for svc, uni, hive_stop, job_type in sequence:
        seen = observe(state, svc, uni, hive_stop, job_type)
        if seen.early is not None:
            assert seen.verdict == seen.early


@pytest.mark.parametrize(
    "interface,reader,payloads",
    [(SERVICE_INTERFACE, read_service_values, service_payloads()),
     (UNIT_INTERFACE, read_unit_values, unit_payloads())],
    ids=["service", "unit"],
)
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_what_a_reader_takes_the_checks_take_to_the_same_values(
    interface: str, reader: Any, payloads: st.SearchStrategy[dict[str, Any]], data: st.DataObject
) -> None:
    payload = data.draw(payloads)
    values = reader(payload)
    if values is not None:
        assert check_variants(interface, payload) == (values, [])


def test_the_readers_take_what_systemd_sends() -> None:
    assert read_service_values(service("exit-code", 1, 3, pid=7)) == {
        "Result": "exit-code", "ExecMainCode": 1, "ExecMainStatus": 3, "NRestarts": 0,
        "MainPID": 7}
    assert read_unit_values(unit("failed", "failed", A, JOB)) == {
        "ActiveState": "failed", "SubState": "failed",
        "Job": (6, "/org/freedesktop/systemd1/job/6"), "InvocationID": A}
    assert read_unit_values(unit("inactive", "dead", "")) is not None  # never ran: no id


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(UNIT_STATES[:9]), st.sampled_from(RUNS)), max_size=12),
       st.sampled_from(["exit-code", "signal", "timeout"]))
def test_a_crash_of_an_armed_run_in_the_common_shape_is_always_recognised_early(
    history: list[tuple[tuple[str, str], str]], result: str
) -> None:
    """Completeness where it matters: whatever came before, once the unit is seen running a
    new run, that run's failure (well formed, no job, no stop asked) is answered early."""
    state = primed()
    for (active, sub), inv in history:
        observe(state, service("exit-code" if active == "failed" else "success", 1, 1),
                unit(active, sub, inv))
    fresh = "c3" * 16
    observe(state, service(pid=42), unit("active", "running", fresh))
    seen = observe(state, service(result, 1, 3), unit("failed", "failed", fresh))
    assert seen.early is not None and seen.early == seen.verdict
    assert not isinstance(seen.verdict, NoEvent)
