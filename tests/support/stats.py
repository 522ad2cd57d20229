"""Helpers shared by the telemetry tests: a hive on a temp dir, a settable wall
clock, TurnEnd builders, a scrape parser, and a rig with a stats actor under a real supervisor."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from hive_actors import lifecycle
from hive_actors.actor import HiveActor
from hive_actors.clock import FakeClock
from hive_actors.config import HiveConfig, StoreConfig
from hive_actors.harness.events import PermissionDenial, Tokens, TurnEnd
from hive_actors.hive import Hive
from hive_actors.stats import HiveTelemetry, StatsConfig
from hive_actors.store import Role, Store
from hive_actors.supervisors import Backoff, ChildEvent, ChildSpec, Supervisor, SupervisorFlags
from tests.support.store import WallClock
from tests.support.timeout import TIMEOUT

T0 = 1_767_225_600.0
"""2026-01-01T00:00:00Z: where the settable wall clock starts."""




class WallHive(Hive):
    """A Hive whose store connections stamp rows with ``wall`` (messages' ``created``...)."""

    wall: WallClock

    def open_store(self) -> Store:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return Store.open(
            self.config.db_path,
            now=self.wall,
            busy_timeout_ms=self.config.store.busy_timeout_ms,
            max_body_bytes=self.config.store.max_body_bytes,
            state_dirs=lambda name: self.agent_paths(name).state,
        )


def make_hive(tmp_path: Path, wall: WallClock, *, busy_timeout_ms: int = 2000) -> WallHive:
    """A hive on ``tmp_path`` whose stores use ``wall``."""
    config = HiveConfig(
        state_dir=str(tmp_path / "hive"), store=StoreConfig(busy_timeout_ms=busy_timeout_ms)
    )
    hive = WallHive(config)
    hive.wall = wall
    return hive


TOKENS = Tokens(input=100, output=50, cache_read=10, cache_creation=5)


def turn_end(
    *,
    outcome: Any = "ok",
    duration_s: float = 2.0,
    tools: Mapping[str, int] | None = None,
    tokens: Tokens = TOKENS,
    cost_usd: float = 0.01,
    model: str | None = "claude-sonnet-4-5",
    denials: int = 0,
) -> TurnEnd:
    """A TurnEnd as the harness builds it."""
    return TurnEnd(
        outcome=outcome,
        duration_s=duration_s,
        tool_calls=MappingProxyType(dict(tools or {})),
        tokens=tokens,
        cost_usd=cost_usd,
        model=model,
        permission_denials=tuple(PermissionDenial("Bash", f"rm {i}") for i in range(denials)),
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus text exposition as {(sample name, sorted labels): value}."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scrape: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """One sample's value; KeyError naming what is there if it is missing."""
    key = (name, tuple(sorted(labels.items())))
    if key not in scrape:
        near = sorted(str(k) for k in scrape if k[0] == name)
        raise KeyError(f"no sample {key}; samples of {name}: {near}")
    return scrape[key]


# -- a hive with telemetry and a stand-in agents supervisor --------------------------------------


@dataclass(frozen=True)
class Crash:
    pass


@dataclass(frozen=True)
class Hold:
    """Block the actor until ``release`` is set (its mailbox fills meanwhile)."""

    held: threading.Event
    release: threading.Event


@dataclass(frozen=True)
class Noop:
    pass


class Worker(HiveActor):
    """A stand-in agent actor under a real supervisor: it crashes or blocks on request."""

    def receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError("asked to crash")
            case Hold(held=held, release=release):
                held.set()
                release.wait(TIMEOUT)
                return None
            case Noop():
                return None
        return super().receive(message)


def _starter(name: str) -> Callable[[], Any]:
    return lambda: Worker.start(name=name)


class TelemetryRig:
    """A hive with a stats actor, a real supervisor registered as ``agents``, and uvicorn
    serving the telemetry routes."""

    def __init__(self, tmp_path: Path) -> None:
        self.wall = WallClock(T0)
        self.clock = FakeClock()
        self.hive = make_hive(tmp_path, self.wall)
        self.store = self.hive.open_store()
        self.store.registry.register("manager", role=Role.MANAGER)
        for name in ("alice", "bob"):
            self.store.registry.register(name)
        self.telemetry = HiveTelemetry(
            self.hive, StatsConfig(scrape_timeout=TIMEOUT), clock=self.clock, wall=self.wall
        )
        self.stats = self.telemetry.child_spec().start()
        self.restarting = threading.Event()
        self.supervisor = Supervisor.start(
            [ChildSpec(name, _starter(name)) for name in ("alice", "bob")],
            SupervisorFlags(
                "one_for_one", intensity=10, period=60,
                backoff=Backoff(min=4.0, max=4.0, jitter=0.0),
            ),
            name="agents",
            clock=self.clock,
            on_child_event=self._child_event,
        )
        # Started children are only known once the supervisor is ready.
        assert lifecycle.wait_ready(self.supervisor, TIMEOUT)
        self.hive.directory.register("agents", self.supervisor)

    def _child_event(self, event: ChildEvent) -> None:
        if event.kind == "restarting":
            self.restarting.set()

    def app(self) -> Starlette:
        return Starlette(routes=self.telemetry.routes())

    def close(self) -> None:
        for ref in (self.supervisor, self.stats):
            if ref.is_alive():
                ref.stop(block=True, timeout=TIMEOUT)
        self.telemetry.close()
        self.store.close()
