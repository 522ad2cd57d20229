"""Drafts follow the port rule (issue 19, item 3).

A two-step spawn's draft is created with a config repository (and so an applied commit), but it
is a fresh spawn, not a legacy agent: its page's port is probed forward from its hashed port,
skipping every port the hive has handed out (the other agents' recorded ports, bound or not,
and the dashboard's), and recorded. Here the draft's hash collides with another agent's port.
"""

from __future__ import annotations

from pathlib import Path

from hive_actors.agentconfig.repo import ConfigRepo
from hive_actors.httpd.ports import (
    PORT_FILE,
    PersistHashed,
    ProbeForward,
    decide_port,
    port_hash,
    probe_order,
)
from hive_actors.store import AgentState, Role
from tests.support.gateway import Hive, agent_port, gateway_hive, served_pages, state_of

SPAN = 4
"""A tiny range: names whose hashes collide are easy to find."""


def colliding_name(port: int, base: int, prefix: str) -> str:
    """A valid agent name whose hashed port is ``port``."""
    for i in range(1000):
        name = f"{prefix}{i}"
        if port_hash(name, base, SPAN) == port:
            return name
    raise AssertionError(f"no name hashes to {port} in {base}+{SPAN}")


def stage_draft(hive: Hive, name: str) -> None:
    hive.daemon.desk.stage(name, by="boss")
    with hive.daemon.hive.open_store() as store:
        assert store.registry.get(name).state is AgentState.DRAFT


def expected_port(name: str, base: int, taken: set[int]) -> int:
    return next(p for p in probe_order(port_hash(name, base, SPAN), base, SPAN) if p not in taken)


def test_a_draft_whose_hash_is_another_agents_port_gets_the_next_free_one(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}, web={"agent_port_span": SPAN}) as hive:
        base = hive.daemon.hive.config.web.agent_port_base
        alice = agent_port(hive, "alice")
        name = colliding_name(alice, base, "dora")
        stage_draft(hive, name)
        paths = hive.daemon.hive.agent_paths(name)
        # The draft has an applied commit: by that alone it would look like a legacy agent.
        assert ConfigRepo(paths).applied_exists()
        port = agent_port(hive, name)
        assert port != alice
        assert port == expected_port(name, base, {alice, hive.port})
        assert (paths.state / PORT_FILE).read_text().strip() == str(port)
        assert state_of(hive, name)["web_port"] == port
        assert state_of(hive, name)["page_error"] is None
        assert served_pages(hive)["alice"] == alice  # alice keeps hers


def test_a_draft_skips_a_port_handed_out_to_an_agent_that_is_not_bound(tmp_path: Path) -> None:
    """The port of a destroyed agent (state kept: revived, it gets its port back) is not
    listening, yet it is handed out: a draft hashing onto it takes another one."""
    with gateway_hive(tmp_path, {"alice": Role.AGENT}, web={"agent_port_span": SPAN}) as hive:
        base = hive.daemon.hive.config.web.agent_port_base
        alice = agent_port(hive, "alice")
        free = [p for p in range(base, base + SPAN) if p not in (alice, hive.port)]
        ghost_port = free[0]
        with hive.daemon.hive.open_store() as store:
            store.registry.register("ghost", state=AgentState.DRAFT, web_port=ghost_port)
            store.registry.destroy("ghost", keep_state=True)
        hive.daemon.hive.bell.ring()
        assert "ghost" not in served_pages(hive)
        name = colliding_name(ghost_port, base, "dora")
        stage_draft(hive, name)
        port = agent_port(hive, name)
        assert port not in (ghost_port, alice)
        assert port == expected_port(name, base, {alice, ghost_port, hive.port})


def test_two_drafts_with_the_same_hash_get_two_ports(tmp_path: Path) -> None:
    with gateway_hive(tmp_path, {"alice": Role.AGENT}, web={"agent_port_span": SPAN}) as hive:
        base = hive.daemon.hive.config.web.agent_port_base
        alice = agent_port(hive, "alice")
        target = next(p for p in range(base, base + SPAN) if p not in (alice, hive.port))
        first = colliding_name(target, base, "dora")
        second = colliding_name(target, base, "eden")
        stage_draft(hive, first)
        stage_draft(hive, second)
        pages = served_pages(hive)
        assert pages[first] != pages[second]
        assert alice not in (pages[first], pages[second])


def test_a_legacy_agent_whose_hashed_port_is_held_probes_forward() -> None:
    hashed = port_hash("alice", 8100, SPAN)
    assert decide_port("alice", "f", None, True, 8100, SPAN) == PersistHashed(hashed)
    moved = decide_port("alice", "f", None, True, 8100, SPAN, reserved={hashed})
    assert isinstance(moved, ProbeForward) and hashed not in moved.candidates
