"""The store's pure parts: the agent-name rule and the lifecycle table."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hive_actors.errors import ConfigError, Conflict, Refused
from hive_actors.store import TRANSITIONS, AgentState, ApprovalKind, MessageKind, Role
from hive_actors.store.names import MAX_NAME_LENGTH, is_valid_name, validate_name
from hive_actors.store.rules import (
    SPAWN_SOURCES,
    check_approval_request,
    check_body,
    check_sender,
    check_transition,
    clip_utf8,
    format_ts,
)

# The model: the rule exactly as the brief words it.
NAME_MODEL = re.compile(r"[a-z][a-z0-9-]{0,10}")

S = AgentState


@pytest.mark.parametrize("name", ["a", "alice", "web-2", "a-", "x1234567890", "m-a-n-a-g-e"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Alice",
        "1abc",
        "-abc",
        "web_2",
        "web.2",
        "x12345678901",
        "al ice",
        "alice\n",
        "é",
        "\uff41",
    ],
)
def test_invalid_names_state_the_rule_and_the_value(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_name(name)
    message = str(info.value)
    assert repr(name) in message
    assert f"1 to {MAX_NAME_LENGTH} characters" in message
    assert "lower-case letters a-z, digits 0-9 and '-', starting with a letter" in message


@pytest.mark.parametrize("value", [None, 3, b"alice", ["alice"]])
def test_non_strings_are_invalid(value: object) -> None:
    with pytest.raises(ConfigError, match="is invalid"):
        validate_name(value)


_NAME_CHARS = st.sampled_from(list("abcxyz019-_A.Z \n\té\uff5a"))


@given(st.one_of(st.text(_NAME_CHARS, max_size=14), st.text(max_size=14)))
@example("abc\n")
@example("a" * 11)
@example("a" * 12)
def test_validator_matches_the_regex_model(name: str) -> None:
    assert is_valid_name(name) == (NAME_MODEL.fullmatch(name) is not None)


# --- lifecycle table ----------------------------------------------------------------------


def test_every_state_has_a_row_and_targets_are_states() -> None:
    assert set(TRANSITIONS) == set(AgentState)
    for source, targets in TRANSITIONS.items():
        assert source not in targets, f"{source} lists itself"
        assert targets <= set(AgentState)


def test_the_lifecycle_in_words() -> None:
    # The paths the supervisor and the approvals walk, spelled out once.
    path = [S.DRAFT, S.PENDING, S.STARTING, S.IDLE, S.BUSY, S.WAITING_OPERATOR, S.BUSY, S.IDLE]
    for a, b in itertools.pairwise(path):
        check_transition("alice", a, b)
    crash = [S.BUSY, S.CRASHED, S.BACKOFF, S.STARTING, S.CRASHED, S.GIVEN_UP, S.STOPPED]
    for a, b in itertools.pairwise(crash):
        check_transition("alice", a, b)
    assert {S.PENDING, S.CRASHED, S.BACKOFF, S.GIVEN_UP, S.STOPPED} == SPAWN_SOURCES


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.IDLE, S.DESTROYED),  # destroy needs the container down first
        (S.DRAFT, S.STARTING),  # a draft is spawned only after its commit is approved
        (S.DESTROYED, S.STARTING),
        (S.GIVEN_UP, S.IDLE),
        (S.STOPPED, S.CRASHED),
    ],
)
def test_illegal_moves_are_refused_with_what_is_allowed(
    source: AgentState, target: AgentState
) -> None:
    with pytest.raises(Conflict) as info:
        check_transition("alice", source, target)
    message = str(info.value)
    assert f"agent alice cannot go from {source} to {target}" in message
    for allowed in TRANSITIONS[source]:
        assert str(allowed) in message


def test_body_limit_states_size_and_limit() -> None:
    assert check_body("é" * 32, 64) == 64
    with pytest.raises(Refused, match=r"message body is 66 bytes, over the 64-byte limit"):
        check_body("é" * 33, 64)


def test_sender_must_match_the_kind() -> None:
    check_sender(MessageKind.MANAGER, "boss", Role.MANAGER)
    check_sender(MessageKind.OPERATOR, "operator", None)
    with pytest.raises(Refused, match="must come from the manager, not from alice"):
        check_sender(MessageKind.MANAGER, "alice", Role.AGENT)
    with pytest.raises(Refused, match="needs a sender"):
        check_sender(MessageKind.SYSTEM, "", None)


def test_approval_requests_against_agent_states() -> None:
    check_approval_request(ApprovalKind.SPAWN, "bob", None, None)
    check_approval_request(ApprovalKind.SPAWN, "bob", S.DESTROYED, None)
    check_approval_request(ApprovalKind.SPAWN_COMMIT, "bob", S.DRAFT, "abc123")
    check_approval_request(ApprovalKind.APPLY_COMMIT, "bob", S.IDLE, "abc123")
    with pytest.raises(Conflict, match=r"an agent bob exists \(idle\)"):
        check_approval_request(ApprovalKind.SPAWN, "bob", S.IDLE, None)
    with pytest.raises(Refused, match="needs a config ref"):
        check_approval_request(ApprovalKind.APPLY_COMMIT, "bob", S.IDLE, "")
    with pytest.raises(Conflict, match="only a draft can be spawned"):
        check_approval_request(ApprovalKind.SPAWN_COMMIT, "bob", S.IDLE, "abc")
    with pytest.raises(Conflict, match="it does not exist"):
        check_approval_request(ApprovalKind.APPLY_COMMIT, "bob", None, "abc")


@given(st.text(max_size=40), st.integers(min_value=0, max_value=60))
def test_clip_utf8_never_exceeds_and_keeps_a_prefix(text: str, limit: int) -> None:
    clipped = clip_utf8(text, limit)
    assert len(clipped.encode("utf-8")) <= limit
    assert text.startswith(clipped)


def test_format_ts_is_utc() -> None:
    assert format_ts(1_750_000_000.0) == "2025-06-15 15:06:40Z"
