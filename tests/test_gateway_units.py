"""The gateway's pure parts (form parsing, the tallies, the page plan, the error statuses) and
the event pump on a real bell."""

from __future__ import annotations

import queue
from collections.abc import Sequence

import pykka
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound, Refused, StoreError
from hive_actors.gateway.api import status_for
from hive_actors.gateway.forms import BadInput, Field, parse_bool, parse_form, parse_id, parse_model
from hive_actors.gateway.pages import plan_pages
from hive_actors.gateway.pump import EventPump
from hive_actors.gateway.views import Tally, counts
from hive_actors.services.bell import Bell
from hive_actors.services.directory import ServiceDown
from hive_actors.store import AgentState, Event
from tests.support.timeout import TIMEOUT

FORM = "application/x-www-form-urlencoded"
FIELDS = {"agent": Field(required=True, allow_empty=False), "model": Field(max_length=10)}


def refused(fn: object, *args: object) -> BadInput:
    with pytest.raises(BadInput) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


def test_a_good_form_parses_and_leaves_absent_optional_fields_out() -> None:
    assert parse_form(FORM, b"agent=alice&model=", FIELDS) == {"agent": "alice", "model": ""}
    assert parse_form(f"{FORM}; charset=UTF-8", b"agent=al%C3%AFce", FIELDS) == {"agent": "alïce"}
    assert parse_form(None, b"", {"note": Field()}) == {}


@pytest.mark.parametrize("content_type, body, status, words", [
    ("application/json", b'{"agent": "a"}', 415, FORM),
    (None, b"agent=a", 415, "no content type"),
    (FORM, b"agent", 400, "malformed form body"),
    (FORM, b"agent=a&&model=b", 400, "malformed form body"),
    (FORM, b"agent=%ff", 400, "UTF-8"),
    (FORM, b"\xff=1", 400, "UTF-8"),
    (FORM, b"agent=a&agent=b", 400, "given twice"),
    (FORM, b"agent=a&colour=red", 400, "unknown form field 'colour'"),
    (FORM, b"=x&agent=a", 400, "unknown form field ''"),
    (FORM, b"model=x", 400, "missing form field(s): agent"),
    (FORM, b"agent=", 400, "'agent' is empty"),
    (FORM, b"agent=a&model=" + b"m" * 11, 400, "over its limit of 10"),
])
def test_a_bad_form_is_refused_with_a_status_and_a_reason(
    content_type: str | None, body: bytes, status: int, words: str
) -> None:
    error = refused(parse_form, content_type, body, FIELDS)
    assert error.status == status and words in str(error), str(error)


def test_a_long_free_text_is_413() -> None:
    fields = {"text": Field(max_length=5, too_long_status=413)}
    assert refused(parse_form, FORM, b"text=123456", fields).status == 413


@given(st.binary(max_size=200))
def test_any_body_parses_or_is_refused_with_a_4xx(body: bytes) -> None:
    try:
        values = parse_form(FORM, body, {"a": Field(), "b": Field()})
    except BadInput as exc:
        assert exc.status in (400, 413, 415)
    else:
        assert set(values) <= {"a", "b"}


def test_yes_no_ids_and_model_names() -> None:
    assert [parse_bool("p", v) for v in ("1", "true", "YES", "on", "0", "", "off", None)] == [
        True, True, True, True, False, False, False, False]
    assert "yes/no" in str(refused(parse_bool, "p", "maybe"))
    assert parse_id("id", "12") == 12
    for bad in ("0", "-1", "1.5", "abc", "١٢", "9" * 19):
        assert refused(parse_id, "id", bad).status == 400
    assert parse_model("  claude-opus  ") == "claude-opus" and parse_model(" ") is None
    for bad in ("two words", "x" * 201, "tab\there", "nul\x00"):
        assert refused(parse_model, bad).status == 400


def event(id_: int, kind: str, agent: str | None, **payload: object) -> Event:
    return Event(id=id_, ts=float(id_), kind=kind, agent=agent, payload=payload)


def test_the_tally_counts_turns_restarts_and_the_last_model_once_per_event() -> None:
    tally = Tally()
    events = [
        event(3, "turn.started", "alice", model="m1"),
        event(5, "turn.ended", "alice", outcome="ok", duration_s=1.5, model="m1"),
        event(6, "agent.restarting", "alice", restart=1),
        event(8, "turn.started", "alice", model="m2"),
        event(9, "turn.ended", "alice", outcome="failure", error="boom"),
        event(10, "turn.ended", None, outcome="ok"),
    ]
    tally.apply(events[:3], upto=6)
    tally.apply(events, upto=12)  # the first three again: applied once
    alice = tally.of("alice")
    assert (alice.turns, alice.restarts, alice.model) == (2, 1, "m2")
    assert alice.last_turn is not None
    assert (alice.last_turn["outcome"], alice.last_turn["error"]) == ("failure", "boom")
    assert tally.position == 12
    assert tally.of("bob").turns == 0


def test_every_agent_but_the_destroyed_has_a_page() -> None:
    states = {
        "alice": AgentState.IDLE, "bob": AgentState.DESTROYED, "carol": AgentState.DRAFT,
        "dave": AgentState.GIVEN_UP,
    }
    plan = plan_pages(states, serving={"bob", "dave", "ghost"})
    assert plan.add == ("alice", "carol")
    assert plan.remove == ("bob", "ghost")
    assert plan_pages({}, serving=()) == plan_pages({}, serving=set())


def test_counts_split_live_agents_drafts_and_kept_state() -> None:
    rows = [
        {"state": "idle", "kept_state": False}, {"state": "draft", "kept_state": False},
        {"state": "destroyed", "kept_state": True}, {"state": "destroyed", "kept_state": False},
    ]
    assert counts(rows, approvals=2, questions=1) == {
        "agents": 1, "approvals": 2, "questions": 1, "drafts": 1, "kept_state": 1}


def test_each_error_has_its_status() -> None:
    assert [status_for(e) for e in (
        BadInput(415, "x"), NotFound("x"), Conflict("x"), ConfigError("x"), Refused("x"),
        ServiceDown("x"), StoreError("x"), TimeoutError("x"), pykka.Timeout("x"), HiveError("x"),
    )] == [415, 404, 409, 400, 409, 503, 503, 504, 504, 500]


class _Log:
    """A list of events read the way the store's log is (after an id, up to a limit)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail: Exception | None = None

    def read(self, after: int, limit: int) -> list[Event]:
        if self.fail is not None:
            raise self.fail
        return [e for e in self.events if e.id > after][:limit]


def test_the_pump_publishes_every_committed_event_once_in_order() -> None:
    bell, log = Bell(), _Log()
    log.events = [event(1, "old", "alice")]
    published: queue.Queue[int] = queue.Queue()
    failures: queue.Queue[BaseException] = queue.Queue()

    def publish(batch: Sequence[Event]) -> None:
        for e in batch:
            published.put(e.id)

    pump = EventPump(
        bell, log.read, publish, after=1, on_failure=failures.put, page=3, idle_timeout=TIMEOUT
    )
    pump.start()
    try:
        for i in range(2, 9):  # more than a page at once: read again without a ring
            log.events.append(event(i, "turn.log", "alice"))
        bell.ring()
        assert [published.get(timeout=TIMEOUT) for _ in range(7)] == list(range(2, 9))
        log.events.append(event(9, "turn.log", "bob"))
        bell.ring()
        assert published.get(timeout=TIMEOUT) == 9
        # A failing read ends the pump and says why.
        log.fail = RuntimeError("disk gone")
        bell.ring()
        assert str(failures.get(timeout=TIMEOUT)) == "disk gone"
        assert published.empty() and pump.last_id == 9
    finally:
        pump.stop(timeout=TIMEOUT)
