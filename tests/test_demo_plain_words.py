"""The demo model does something with plain words, in a whole hive.

A hive on the demo's model (``claude-sonnet-demo``) with a manager (``boss``) and an agent
(``alice``), the real claude CLI against the loopback model server. The operator writes to the
manager in plain English, no directive: the manager's turn passes the words on to alice
(``mcp__hive__send``) and answers the operator; alice's turn reads her notes and tells the
manager she is on it; the manager's turn on that reply passes nothing on (no ping-pong). A later
plain message goes to the agent the manager talked with last, with no name in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from hive_actors.config import ModelConfig
from hive_actors.daemon import Daemon
from hive_actors.modelserver import ModelServer
from hive_actors.store import EventKind, Role
from tests.support.hive import EventWatch, hive_config, send, start_tree
from tests.support.timeout import TIMEOUT

AGENTS = {"boss": Role.MANAGER, "alice": Role.AGENT}


@contextmanager
def demo_hive(tmp_path: Path) -> Iterator[tuple[Daemon, EventWatch]]:
    """``running_hive``'s hive, on the demo's model."""
    with ModelServer() as model:
        config = hive_config(tmp_path, model.url)
        config = replace(config, model=ModelConfig(base_url=model.url,
                                                   default="claude-sonnet-demo"))
        daemon = Daemon(config, api_key="loopback-test-key")
        root = None
        try:
            root = start_tree(daemon, AGENTS)
            yield daemon, EventWatch(daemon.hive.open_store, daemon.hive.bell)
        finally:
            if root is not None:
                root.stop(block=True, timeout=TIMEOUT * 6)
            daemon.close()


def _sent(sender: str, recipient: str) -> Any:
    return lambda e: (e.kind == EventKind.MESSAGE_SENT and e.agent == recipient
                      and e.payload.get("from") == sender)


def _ended(agent: str) -> Any:
    return lambda e: e.kind == EventKind.TURN_ENDED and e.agent == agent


def test_plain_words_to_the_manager_reach_an_agent_that_acts_and_replies(
    tmp_path: Path,
) -> None:
    with demo_hive(tmp_path) as (daemon, events):
        send(daemon, "boss", "alice, please write the docs")
        forwarded = events.wait_for(_sent("boss", "alice"), timeout=TIMEOUT * 6)
        boss_turn = events.wait_for(_ended("boss"), timeout=TIMEOUT * 6)
        assert boss_turn.payload["outcome"] == "ok", boss_turn.payload
        assert boss_turn.payload["tool_calls"] == {"mcp__hive__send": 1}
        with daemon.hive.open_store() as store:
            body = store.messages.get(int(forwarded.payload["id"])).body
        assert body.startswith("alice, please write the docs")

        # alice acts on it: reads her notes, tells the manager.
        replied = events.wait_for(_sent("alice", "boss"), timeout=TIMEOUT * 6)
        alice_turn = events.wait_for(_ended("alice"), timeout=TIMEOUT * 6)
        assert alice_turn.payload["outcome"] == "ok", alice_turn.payload
        assert alice_turn.payload["tool_calls"] == {"Read": 1, "mcp__hive__send": 1}
        assert not alice_turn.payload["permission_denials"]
        with daemon.hive.open_store() as store:
            assert "alice here" in store.messages.get(int(replied.payload["id"])).body

        # The manager's turn on alice's reply (a turn after the first) passes nothing on.
        first = boss_turn.payload["turn_id"]
        reply_turn = events.wait_for(
            lambda e: _ended("boss")(e) and e.payload["turn_id"] != first,
            timeout=TIMEOUT * 6, after=replied.id,
        )
        assert reply_turn.payload["outcome"] == "ok", reply_turn.payload
        assert reply_turn.payload["tool_calls"] == {}

        # Plain words naming nobody go to the agent the manager talked with last.
        send(daemon, "boss", "please also add an index")
        again = events.wait_for(_sent("boss", "alice"), timeout=TIMEOUT * 6,
                                after=reply_turn.id)
        events.wait_for(_sent("alice", "boss"), timeout=TIMEOUT * 6, after=again.id)
        sent = [e for e in events.events if e.kind == EventKind.MESSAGE_SENT]
        assert [(e.payload.get("from"), e.agent) for e in sent] == [
            ("operator", "boss"), ("boss", "alice"), ("alice", "boss"),
            ("operator", "boss"), ("boss", "alice"), ("alice", "boss"),
        ]
