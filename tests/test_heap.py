"""The start-up heap leaves the cyclic collector's full scans."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from hive_actors import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def test_settle_collects_first_then_moves_the_living_out_of_full_scans(unfrozen: None) -> None:
    alive = Node()
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    frozen = heap.settle()
    assert frozen == gc.get_freeze_count() > 0
    assert gone() is None  # collected before the freeze: garbage is never frozen
    assert not any(obj is alive for obj in gc.get_objects(generation=2))
    later = Node()  # made after the freeze: scanned as usual
    assert any(obj is later for obj in gc.get_objects())
