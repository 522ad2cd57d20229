"""A probe actor: every message it receives lands in a queue the test thread reads."""

from __future__ import annotations

import queue
from typing import Any

from hive_actors.actor import HiveActor
from tests.support.timeout import TIMEOUT

__all__ = ["Probe", "ProbeHandle"]


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
