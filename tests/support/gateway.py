"""Helpers shared by the gateway and page tests: a whole hive whose agent pages live in a port
range of their own, HTTP and websocket clients, waits on the events log."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pykka

from hive_actors.config import WebConfig
from hive_actors.daemon import Daemon
from hive_actors.gateway.actor import ServedPages
from hive_actors.modelserver import ModelServer
from hive_actors.store import AgentState, Event, Role
from hive_actors.supervisors.client import SupervisorClient
from tests.support.hive import EventWatch, hive_config, start_tree
from tests.support.timeout import TIMEOUT
from tests.support.web import bearer

__all__ = [
    "Hive",
    "agent_port",
    "free_port_range",
    "gateway_hive",
    "gateway_ref",
    "http",
    "served_pages",
    "state_of",
    "wait_state",
]

SPAN = 64
"""Agent pages of a test hive get ports in [base, base + SPAN)."""


def free_port_range(span: int = SPAN) -> int:
    """A base port whose range [base, base + span) is free right now (away from the default
    8100+ range, which other hives on this machine use)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(30000, 40000 - span)
        probes = [base, base + span // 2, base + span - 1]
        ok = True
        for port in probes:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no free port range in 30000-40000")


@dataclass
class Hive:
    """A running test hive."""

    daemon: Daemon
    root: pykka.ActorRef[Any]
    model: ModelServer
    events: EventWatch
    base: str
    """The dashboard's ``http://127.0.0.1:PORT``."""

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    @property
    def token(self) -> str:
        """The operator token (every API call and websocket needs it)."""
        return self.daemon.token.value

    def login_url(self) -> str:
        """A one-time login link, as ``hive serve`` prints one (a browser opens it once)."""
        return self.daemon.login_url()

    def api(self, port: int | None = None) -> httpx.Client:
        """An operator's HTTP client for the dashboard, or for the agent page on ``port``."""
        base = self.base if port is None else f"http://127.0.0.1:{port}"
        return http(base, token=self.token)

    def ask(self, service: str, message: Any) -> Any:
        return self.daemon.hive.directory.get(service).ask(message, timeout=TIMEOUT)

    def wait_for(self, predicate: Callable[[Event], bool], after: int = 0) -> Event:
        return self.events.wait_for(predicate, after=after)

    def last_event_id(self) -> int:
        with self.daemon.hive.open_store() as store:
            return store.events.last_event_id()


@contextlib.contextmanager
def gateway_hive(
    tmp_path: Path,
    agents: dict[str, Role],
    *,
    web: dict[str, Any] | None = None,
    **supervision: Any,
) -> Iterator[Hive]:
    """A whole hive (real CLI agents, loopback model) with ``agents`` registered; the agent
    pages get a free port range. Waits until every agent is idle."""
    model = ModelServer()
    model.start()
    try:
        base_config = hive_config(tmp_path, model.url, **supervision)
        web_config = replace(
            WebConfig(port=0, agent_port_base=free_port_range(), agent_port_span=SPAN),
            **(web or {}),
        )
        daemon = Daemon(replace(base_config, web=web_config), api_key="loopback-test-key")
        root = start_tree(daemon, agents)
        try:
            hive = Hive(
                daemon, root, model, EventWatch(daemon.hive.open_store, daemon.hive.bell),
                daemon.endpoints.base_url(timeout=TIMEOUT),
            )
            for name in agents:
                wait_state(hive, name, AgentState.IDLE)
            yield hive
        finally:
            root.stop(block=True, timeout=TIMEOUT * 6)
            daemon.close()
    finally:
        model.stop()


def wait_state(hive: Hive, name: str, state: AgentState, after: int = 0) -> Event:
    """The event that put ``name`` into ``state`` (now or before), after event ``after``."""
    with hive.daemon.hive.open_store() as store:
        row = store.registry.find(name)
        if row is not None and row.state is state and after == 0:
            return Event(0, 0.0, "agent.state", name, {"to": str(state)})
    return hive.wait_for(
        lambda e: e.agent == name and (
            (e.kind == "agent.state" and e.payload.get("to") == str(state))
            or (e.kind == "agent.destroyed" and state is AgentState.DESTROYED)
        ),
        after=after,
    )


def http(base: str, token: str | None = None, **kwargs: Any) -> httpx.Client:
    """An HTTP client for a local site (environment proxies ignored), sending the operator
    ``token`` when given."""
    if token is not None:
        kwargs["headers"] = {**kwargs.get("headers", {}), **bearer(token)}
    return httpx.Client(base_url=base, trust_env=False, timeout=TIMEOUT, **kwargs)


def state_of(hive: Hive, name: str) -> dict[str, Any]:
    """The agent's row as ``GET /api/state`` shows it."""
    with hive.api() as client:
        rows = client.get("/api/state").json()["agents"]
    found = [row for row in rows if row["name"] == name]
    assert found, f"{name} not in /api/state: {[r['name'] for r in rows]}"
    return dict(found[0])


def gateway_ref(hive: Hive) -> pykka.ActorRef[Any]:
    """The running GatewayActor."""
    children = SupervisorClient(hive.root, TIMEOUT).which_children()
    found = [c.ref for c in children if c.id == "gateway" and c.ref is not None]
    assert found, f"no gateway among {children}"
    return found[0]


def served_pages(hive: Hive) -> dict[str, int]:
    """``{agent: port}`` of the pages served, with every committed registry change applied."""
    pages = gateway_ref(hive).ask(ServedPages(), timeout=TIMEOUT * 2)
    assert isinstance(pages, dict)
    return pages


def agent_port(hive: Hive, name: str) -> int:
    """The port of ``name``'s page (served once this returns)."""
    pages = served_pages(hive)
    assert name in pages, f"no page for {name}: {pages}"
    return pages[name]


