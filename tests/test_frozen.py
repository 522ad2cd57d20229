"""``@frozen``: the same frozen dataclass as ``@dataclass(frozen=True)``, built in one step —
checked against the ``__init__`` dataclasses generates, for every class of the hive that uses it."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import field

import pytest

# Every module whose classes use @frozen, so that all of them are registered.
import hive_actors.crash_messages
import hive_actors.supervisors.messages
import hive_actors.supervisors.policy
import hive_actors.watcher.reports
import hive_actors.watcher.verdicts  # noqa: F401
from hive_actors.crash_messages import ContainerCrash
from hive_actors.frozen import STANDARD_INITS, frozen

SPED_UP = sorted(STANDARD_INITS, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def test_the_crash_path_messages_are_sped_up() -> None:
    names = {cls.__name__ for cls in SPED_UP}
    assert {"Crash", "UnitReport", "ContainerCrash", "Restart", "ChildEvent"} <= names


@pytest.mark.parametrize("cls", SPED_UP, ids=lambda cls: cls.__qualname__)
def test_each_sped_up_class_builds_what_its_dataclass_init_builds(cls: type) -> None:
    standard = STANDARD_INITS[cls]
    assert inspect.signature(cls.__init__) == inspect.signature(standard)
    fields = dataclasses.fields(cls)
    values = {f.name: object() for f in fields}
    ours = cls(**values)
    theirs = object.__new__(cls)
    standard(theirs, **values)
    assert vars(ours) == vars(theirs) == values
    assert ours == theirs and repr(ours) == repr(theirs)
    # Positionally, and with every default left out.
    assert cls(*values.values()) == ours
    required = {f.name: values[f.name] for f in fields if f.default is dataclasses.MISSING}
    bare = object.__new__(cls)
    standard(bare, **required)
    assert vars(cls(**required)) == vars(bare)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.__setattr__(fields[0].name, 1)


def test_a_sped_up_message_keeps_everything_a_dataclass_gives() -> None:
    crash = ContainerCrash("alice", 3, "exit-code", 1, None, 12.5)
    assert crash.source == "systemd" and crash.detail == ""
    assert hash(crash) == hash(ContainerCrash("alice", 3, "exit-code", 1, None, 12.5))
    moved = dataclasses.replace(crash, epoch=4)
    assert moved.epoch == 4 and moved.agent == "alice"
    assert pickle.loads(pickle.dumps(crash)) == crash
    match crash:
        case ContainerCrash(agent=agent, epoch=epoch):
            assert (agent, epoch) == ("alice", 3)
        case _:
            pytest.fail("a class pattern must match")
    with pytest.raises(TypeError, match="epoch"):
        ContainerCrash("alice")  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        crash.agent = "bob"  # type: ignore[misc]


def test_classes_it_cannot_speed_up_keep_the_dataclass_init() -> None:
    @frozen
    class WithFactory:
        items: list[int] = field(default_factory=list)

    @frozen
    class WithPostInit:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("n < 0")

    @frozen
    class Plain:
        n: int
        label: str = "x"

    assert WithFactory not in STANDARD_INITS and WithPostInit not in STANDARD_INITS
    assert Plain in STANDARD_INITS
    assert WithFactory().items == [] and WithFactory().items is not WithFactory().items
    with pytest.raises(ValueError, match="n < 0"):
        WithPostInit(-1)
    assert Plain(2) == Plain(n=2, label="x") and Plain(2) != Plain(2, "y")
