"""A whole hive whose CrashWatcherActor watches a private dbus-daemon with the stand-in systemd.

The agents run in the process backend (real keeper processes, the real claude CLI against the
loopback model). :class:`TiedBackend` ties each agent's ``container@<agent>.service`` on the
stand-in to its container, as NixOS does: starting the container starts the unit (a new run,
a new ``InvocationID``), stopping it stops the unit. The test crashes units through the
stand-in's driver API and follows what the watcher actor handled through a probe
(:class:`Follower`).
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pykka

from hive_actors.config import WatcherConfig
from hive_actors.containers.process import ProcessBackend
from hive_actors.daemon import Daemon
from hive_actors.modelserver import ModelServer
from hive_actors.store import Event, EventKind, MessageKind, Role
from hive_actors.testing.systemd_standin import StandinSystemd
from hive_actors.watcher import SystemdWatch, UnitReport, Verdict, WatcherNotice
from hive_actors.watcher.messages import RunBound, WatchReports, WatchState
from tests.support.hive import EventWatch, hive_config, start_tree
from tests.support.probe import ProbeHandle
from tests.support.timeout import TIMEOUT

__all__ = [
    "CrashHive",
    "Follower",
    "TiedBackend",
    "crash_hive",
    "notice",
    "run_of",
    "unit",
    "verdict",
]


def unit(agent: str) -> str:
    """The agent's unit on the stand-in."""
    return f"container@{agent}.service"


class TiedBackend:
    """The process backend, with each agent's unit on the stand-in following its container
    (except for the agents in ``untied``)."""

    def __init__(self, inner: ProcessBackend, fake: StandinSystemd,
                 untied: frozenset[str] = frozenset()) -> None:
        self.inner = inner
        self.fake = fake
        self.untied = untied
        self._units: set[str] = set()
        self._lock = threading.Lock()

    def start(self, name: str) -> None:
        self.inner.start(name)
        if name in self.untied:
            return
        with self._lock:
            if unit(name) not in self._units:
                self.fake.add_unit(unit(name))
                self._units.add(unit(name))
        if self.fake.unit(unit(name)).active_state != "active":
            self.fake.start_unit(unit(name))

    def stop(self, name: str, *, grace: Any = None) -> Any:
        with self._lock:
            tied = unit(name) in self._units
        if tied and self.fake.unit(unit(name)).active_state == "active":
            self.fake.operator_stop(unit(name))  # the stand-in's StopUnit: a stop job
        return self.inner.stop(name, grace=grace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def verdict(agent: str, kind: type[Verdict]) -> Callable[[Any], bool]:
    """Matches a handled UnitReport about ``agent`` whose verdict is a ``kind``."""
    return lambda item: (isinstance(item, UnitReport) and item.agent == agent
                         and isinstance(item.verdict, kind))


def notice(kind: str, contains: str = "") -> Callable[[Any], bool]:
    """Matches a handled WatcherNotice of ``kind`` whose detail contains ``contains``."""
    return lambda item: (isinstance(item, WatcherNotice) and item.kind == kind
                         and contains in item.detail)


def run_of(agent: str, epoch: int) -> Callable[[Any], bool]:
    """Matches the watcher tying a run of ``agent``'s unit to ``epoch``."""
    return lambda item: (isinstance(item, RunBound) and item.agent == agent
                         and item.epoch == epoch)


class Follower:
    """What the CrashWatcherActor handled, as its probe received it, waited on with a timeout."""

    def __init__(self, probe: ProbeHandle) -> None:
        self.probe = probe
        self.seen: list[Any] = []

    def wait_for(self, predicate: Callable[[Any], bool], what: str,
                 timeout: float = TIMEOUT) -> Any:
        """Take items until one matches; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while True:
            try:
                item = self.probe.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise AssertionError(
                    f"the watcher handled no {what} within {timeout:g} s; got "
                    f"{self.seen[start:]!r}"
                ) from None
            self.seen.append(item)
            if predicate(item):
                return item

    def until(self, predicate: Callable[[Any], bool], what: str) -> list[Any]:
        """Take items up to and including the first match; return them all."""
        start = len(self.seen)
        self.wait_for(predicate, what)
        return self.seen[start:]

    def barrier(self, fake: StandinSystemd) -> list[Any]:
        """Everything the watcher actor handled about signals sent before now: ``Reloading``
        follows them on the stand-in's connection and the watcher handles events in order."""
        fake.emit_reloading()
        return self.until(notice("rescanned", "daemon-reload"), "the rescan after Reloading")


@dataclass
class CrashHive:
    """A running hive with its crash watcher on the test bus."""

    daemon: Daemon
    root: pykka.ActorRef[Any]
    model: ModelServer
    events: EventWatch
    fake: StandinSystemd
    backend: TiedBackend
    follower: Follower | None = None

    def follow(self) -> Follower:
        """Subscribe a probe to the watcher actor now running; returns once its first scan
        of the units is handled."""
        probe = ProbeHandle()
        follower = Follower(probe)
        watcher = self.daemon.hive.directory.wait("watcher", TIMEOUT)
        state = watcher.ask(WatchReports(probe.ref), timeout=TIMEOUT)
        assert isinstance(state, WatchState)
        if state.scans == 0:
            follower.wait_for(notice("rescanned"), "the first scan")
        self.follower = follower
        return follower

    def epoch(self, agent: str) -> int:
        with self.daemon.hive.open_store() as store:
            return store.registry.get(agent).epoch

    def after(self, kind: EventKind, agent: str, after: int = 0,
              where: Callable[[Event], bool] = lambda e: True,
              timeout: float = TIMEOUT * 3) -> Event:
        """The first ``kind`` event about ``agent`` after event id ``after``."""
        return self.events.wait_for(
            lambda e: e.kind == kind and e.agent == agent and where(e), timeout, after=after)

    def kinds(self, agent: str, *kinds: EventKind, after: int = 0) -> list[Event]:
        """Every event of ``kinds`` about ``agent`` in the store after id ``after``."""
        with self.daemon.hive.open_store() as store:
            return [e for e in store.events.events_since(after, 100_000)
                    if e.agent == agent and e.kind in kinds]


@contextlib.contextmanager
def crash_hive(
    tmp_path: Path,
    bus_address: str,
    agents: dict[str, Role],
    *,
    untied: frozenset[str] = frozenset(),
    watch_factory: Callable[..., SystemdWatch] = SystemdWatch,
    fake_version: int = 254,
    **supervision: Any,
) -> Iterator[CrashHive]:
    """Start the stand-in on ``bus_address`` and a hive with ``agents`` whose watcher watches it;
    yields once the tree is up and a probe follows the watcher."""
    supervision = {"backoff_min": 0.05, "backoff_max": 1.0, "backoff_jitter": 0.0,
                   **supervision}
    model = ModelServer()
    model.start()
    fake = StandinSystemd(bus_address, version=fake_version, timeout=TIMEOUT)
    with contextlib.ExitStack() as stack:
        stack.callback(model.stop)
        fake.start()
        stack.callback(fake.stop)
        config = replace(hive_config(tmp_path, model.url, **supervision),
                         watcher=WatcherConfig(bus_address=bus_address))
        backend = TiedBackend(ProcessBackend(config.state_dir), fake, untied)
        daemon = Daemon(config, backend=backend, api_key="loopback-test-key",
                        watch_factory=watch_factory)
        stack.callback(daemon.close)
        root = start_tree(daemon, agents)
        stack.callback(root.stop, block=True, timeout=TIMEOUT * 6)
        hive = CrashHive(daemon, root, model, EventWatch(daemon.hive.open_store, daemon.hive.bell),
                         fake, backend)
        for name in agents:
            hive.after(EventKind.AGENT_STATE, name, where=lambda e: e.payload.get("to") == "idle")
        hive.follow()
        yield hive


def system_messages_to(hive: CrashHive, manager: str, count: int) -> list[str]:
    """The texts of the first ``count`` ``system`` messages the hive sent the manager, read
    from its inbox in the store (waiting for each to be committed)."""
    bodies, after = [], 0
    for _ in range(count):
        sent = hive.after(EventKind.MESSAGE_SENT, manager, after=after,
                          where=lambda e: e.payload["from"] == "hive")
        after = sent.id
        with hive.daemon.hive.open_store() as store:
            message = store.messages.get(sent.payload["id"])
        assert (message.sender, message.kind, message.recipient) == (
            "hive", MessageKind.SYSTEM, manager)
        body = message.body
        if body.startswith("{"):  # a structured notice: its readable text
            body = json.loads(body)["text"]
        bodies.append(body)
    return bodies
