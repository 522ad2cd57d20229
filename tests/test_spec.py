"""Malformed specs and flags are refused when built, naming the field and the allowed values."""

from __future__ import annotations

from typing import Any

import pytest

from hive_actors.errors import SpecError
from hive_actors.supervisors import Backoff, ChildSpec, RestartLimit, Supervisor, SupervisorFlags
from hive_actors.supervisors.spec import RestartType, Strategy


def start() -> Any:
    return None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"restart": "sometimes"},
         "child spec 'db': restart='sometimes' is not one of the allowed values: "
         "permanent, transient, temporary"),
        ({"shutdown": 0}, "child spec 'db': shutdown=0 must be a number > 0"),
        ({"shutdown": -1}, "child spec 'db': shutdown=-1 must be a number > 0"),
        ({"ready_timeout": float("nan")}, "ready_timeout=nan must be a number > 0"),
        ({"start": "not callable"}, "start='not callable' must be a callable"),
        ({"limit": RestartLimit(-1, 5)}, "intensity=-1 must be a whole number >= 0"),
        ({"limit": RestartLimit(1, 0)}, "period=0 must be a number > 0"),
        ({"limit": RestartLimit(1, 5, 0)}, "consecutive=0 must be a whole number >= 1"),
        ({"limit": RestartLimit(1, 5, True)}, "consecutive=True must be a whole number >= 1"),
    ],
)
def test_bad_child_spec_names_the_field(kwargs: dict[str, Any], message: str) -> None:
    args = {"start": start, **kwargs}
    with pytest.raises(SpecError) as err:
        ChildSpec("db", **args)
    assert message in str(err.value)


def test_empty_child_id_is_refused() -> None:
    with pytest.raises(SpecError, match="id='' must be a non-empty string"):
        ChildSpec("", start)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "one_for_some"},
         "strategy='one_for_some' is not one of the allowed values: "
         "one_for_one, one_for_all, rest_for_one"),
        ({"intensity": -1}, "intensity=-1 must be a whole number >= 0"),
        ({"intensity": 1.5}, "intensity=1.5 must be a whole number >= 0"),
        ({"period": 0}, "period=0 must be a number > 0 (the window in seconds)"),
        ({"backoff": 3}, "backoff=3 must be a Backoff"),
    ],
)
def test_bad_flags_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        SupervisorFlags(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min": -1}, "min=-1 must be a number >= 0"),
        ({"min": 5, "max": 1}, "max=1 is below min=5"),
        ({"factor": 0.5}, "factor=0.5 must be >= 1"),
        ({"jitter": 1}, "jitter=1 must be in [0, 1)"),
        ({"reset_after": 0}, "reset_after=0 must be a number > 0"),
    ],
)
def test_bad_backoff_names_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        Backoff(**kwargs)
    assert message in str(err.value)


def test_duplicate_child_ids_are_refused_when_the_supervisor_is_built() -> None:
    with pytest.raises(SpecError, match="duplicate child id 'a'"):
        Supervisor([ChildSpec("a", start), ChildSpec("a", start)])


def test_strings_become_enums() -> None:
    spec = ChildSpec("a", start, restart="transient")
    assert spec.restart is RestartType.TRANSIENT
    assert SupervisorFlags("rest_for_one").strategy is Strategy.REST_FOR_ONE
