"""Shared test tools: one scaled timeout, a probe actor, and no actor left behind."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from hive_actors.actor import HiveActor
from hive_actors.harness import ClaudeBinary, find_claude
from hive_actors.modelserver import ModelServer

# One timeout unit for every wait; CI machines are slower, so it scales.
TIMEOUT = float(os.environ.get("HIVE_TEST_TIMEOUT", "10"))

os.environ.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")


class Probe(HiveActor):
    """An actor that hands every message it receives to the test thread."""

    def __init__(self, name: str = "probe") -> None:
        super().__init__(name=name)
        self.inbox: queue.Queue[Any] = queue.Queue()

    def receive(self, message: Any) -> Any:
        self.inbox.put(message)
        return None


class ProbeHandle:
    """The test side of a :class:`Probe`."""

    def __init__(self) -> None:
        self.ref = Probe.start()
        self.inbox: queue.Queue[Any] = self.ref.proxy().inbox.get(timeout=TIMEOUT)

    def get(self, timeout: float = TIMEOUT) -> Any:
        return self.inbox.get(timeout=timeout)

    def empty(self) -> bool:
        return self.inbox.empty()


@pytest.fixture
def probe() -> ProbeHandle:
    return ProbeHandle()


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Any:
    yield
    # Oldest first: a tree's root stops its own children (in reverse order), so no supervisor
    # sees a child vanish under it and restarts it mid-teardown.
    for _ in range(5):
        refs = pykka.ActorRegistry.get_all()
        if not refs:
            return
        for ref in refs:
            try:
                ref.stop(block=True, timeout=TIMEOUT)
            except pykka.ActorDeadError:
                pass
    raise AssertionError(f"actors still alive after the test: {pykka.ActorRegistry.get_all()}")


@pytest.fixture(scope="session")
def claude() -> ClaudeBinary:
    """The real ``claude`` CLI (bundled with claude-agent-sdk), found and version-checked once."""
    return find_claude()


@pytest.fixture
def server() -> Iterator[ModelServer]:
    """The project's loopback model server, on a free port of 127.0.0.1."""
    with ModelServer() as s:
        yield s
