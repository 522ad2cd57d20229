"""Hive MCP tokens last one turn: issued as a turn starts, revoked as it ends (issue 17, item 2).

An agent (or another agent that reads its ``--mcp-config``) that keeps a token cannot replay it
once the turn is over: the hive's guard answers 401 and nothing is done. The whole-hive test runs
the real ``claude`` CLI against the loopback model, whose answers it holds while it reads the
turn's ``--mcp-config`` from the agent's state dir.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hive_actors.mcp import Caller, TokenBook
from hive_actors.modelserver import ModelServer, Reply
from hive_actors.modelserver.conversation import newest_prompt
from hive_actors.modelserver.script import script_policy
from hive_actors.store import EventKind, Role
from tests.support.hive import EventWatch, running_hive, send
from tests.support.timeout import TIMEOUT

# -- the book ------------------------------------------------------------------------------------


def test_a_token_lives_from_its_issue_to_its_revoke(caplog: pytest.LogCaptureFixture) -> None:
    book = TokenBook()
    with caplog.at_level(logging.DEBUG):
        turn1 = book.issue("alice", Role.AGENT)
        assert book.who(turn1) == Caller("alice", Role.AGENT) and len(book) == 1
        # The next turn's token replaces it at once.
        turn2 = book.issue("alice", Role.AGENT)
        assert book.who(turn1) is None and book.who(turn2) == Caller("alice", Role.AGENT)
        # A late revoke of turn 1 (or of a token that is not alice's) leaves turn 2's alone.
        assert not book.revoke("alice", token=turn1)
        boss = book.issue("boss", Role.MANAGER)
        assert not book.revoke("alice", token=boss)
        assert not book.revoke("alice", token="x" * 43)
        assert book.who(turn2) == Caller("alice", Role.AGENT)
        assert book.who(boss) == Caller("boss", Role.MANAGER)
        # Its own revoke ends it; a second one finds nothing.
        assert book.revoke("alice", token=turn2)
        assert book.who(turn2) is None and not book.revoke("alice", token=turn2)
        assert not book.revoke("alice")
        # Without a token, whatever the agent holds goes.
        assert book.revoke("boss") and book.who(boss) is None and len(book) == 0
    for token in (turn1, turn2, boss):
        assert token not in caplog.text


def _race_revoke_and_issue(book: TokenBook, old: str) -> str:
    """Revoke ``old`` and issue alice a new token at once, in two threads; the new token."""
    new: list[str] = []
    barrier = threading.Barrier(2)

    def late_revoke() -> None:
        barrier.wait(TIMEOUT)
        book.revoke("alice", token=old)

    def next_issue() -> None:
        barrier.wait(TIMEOUT)
        new.append(book.issue("alice", Role.AGENT))

    threads = [threading.Thread(target=late_revoke), threading.Thread(target=next_issue)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    return new[0]


def test_exact_revokes_race_newer_issues_safely() -> None:
    """Turn N's revoke racing turn N+1's issue never leaves N live nor kills N+1."""
    book = TokenBook()
    for _ in range(200):
        old = book.issue("alice", Role.AGENT)
        new = _race_revoke_and_issue(book, old)
        assert book.who(old) is None
        assert book.who(new) == Caller("alice", Role.AGENT)


# -- a whole hive: a token kept from a turn is refused after it ------------------------------------


class _Gate:
    """The scripted model, except that a prompt carrying a hold marker is not answered until the
    test releases that marker (so the test can look at a turn while it runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, threading.Event] = {}
        self._release: dict[str, threading.Event] = {}

    def _events(self, marker: str) -> tuple[threading.Event, threading.Event]:
        with self._lock:
            return (self._held.setdefault(marker, threading.Event()),
                    self._release.setdefault(marker, threading.Event()))

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        prompt = newest_prompt(request)
        text = prompt.text if prompt is not None else ""
        with self._lock:
            markers = [m for m in self._release if m in text]
        for marker in markers:
            held, release = self._events(marker)
            held.set()
            if not release.wait(TIMEOUT * 6):
                raise AssertionError(f"the test never released {marker}")
        return script_policy(request)

    def arm(self, marker: str) -> None:
        self._events(marker)

    def wait_held(self, marker: str) -> None:
        held, _ = self._events(marker)
        assert held.wait(TIMEOUT * 3), f"no model request carrying {marker} arrived"

    def release(self, marker: str) -> None:
        self._events(marker)[1].set()

    def release_all(self) -> None:
        with self._lock:
            for event in self._release.values():
                event.set()


@contextmanager
def _gated_hive(tmp_path: Path) -> Iterator[tuple[Any, EventWatch, _Gate]]:
    gate = _Gate()
    with ModelServer(gate) as model:
        try:
            with running_hive(tmp_path, {"boss": Role.MANAGER}, model) as (daemon, _r, _m, events):
                yield daemon, events, gate
        finally:
            gate.release_all()


def _turn_config(daemon: Any, agent: str) -> tuple[str, str]:
    """(the hive MCP url, the bearer token) of ``agent``'s running turn, read from the
    ``--mcp-config`` file the turn's CLI reads."""
    scratch = daemon.hive.agent_paths(agent).state / ".hive-run"
    (path,) = sorted(scratch.glob("mcp-*.json"))
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
    hive = json.loads(path.read_text())["mcpServers"]["hive"]
    header = hive["headers"]["Authorization"]
    assert header.startswith("Bearer ")
    return hive["url"], header.removeprefix("Bearer ")


def _rpc(url: str, token: str, method: str, params: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        url,
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        headers={"Accept": "application/json, text/event-stream",
                 "Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )


def _spawn_call(url: str, token: str, name: str) -> httpx.Response:
    return _rpc(url, token, "tools/call", {"name": "request_spawn", "arguments": {"name": name}})


def _assert_refused(response: httpx.Response, token: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    message = response.json()["message"]
    assert "revoked" in message and "one turn" in message, message
    assert token not in response.text


def test_a_token_kept_from_a_turn_is_refused_after_it(tmp_path: Path) -> None:
    with _gated_hive(tmp_path) as (daemon, events, gate):
        # Turn 1: the manager's CLI runs, its model held; the token is read from its config.
        gate.arm("HOLD-TURN-1")
        send(daemon, "boss", "HOLD-TURN-1\nkeep this turn open a moment")
        gate.wait_held("HOLD-TURN-1")
        url, first = _turn_config(daemon, "boss")
        assert daemon.tokens.who(first) == Caller("boss", Role.MANAGER)
        assert _rpc(url, first, "tools/list", {}).status_code == 200  # live during its turn
        gate.release("HOLD-TURN-1")
        ended = events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "boss")
        assert ended.payload["outcome"] == "ok", ended.payload

        # Replayed after the turn, as the manager: refused, and nothing is asked for.
        assert daemon.tokens.who(first) is None
        _assert_refused(_spawn_call(url, first, "mallory"), first)
        _assert_refused(_rpc(url, first, "tools/list", {}), first)
        with daemon.hive.open_store() as store:
            assert store.approvals.pending() == []
            assert "mallory" not in {a.name for a in store.registry.agents()}

        # Turn 2 of the same agent has its own token and its hive calls work; turn 1's stays
        # dead meanwhile.
        gate.arm("HOLD-TURN-2")
        call = json.dumps({"name": "carol"})
        send(daemon, "boss", f"HOLD-TURN-2\n@tool mcp__hive__request_spawn {call}")
        gate.wait_held("HOLD-TURN-2")
        _, second = _turn_config(daemon, "boss")
        assert second != first
        assert daemon.tokens.who(second) == Caller("boss", Role.MANAGER)
        _assert_refused(_spawn_call(url, first, "mallory"), first)
        gate.release("HOLD-TURN-2")
        again = events.wait_for(
            lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "boss", after=ended.id
        )
        assert again.payload["outcome"] == "ok", again.payload
        assert again.payload["tool_calls"] == {"mcp__hive__request_spawn": 1}
        with daemon.hive.open_store() as store:
            (approval,) = store.approvals.pending()
        assert (approval.kind, approval.agent, approval.requested_by) == ("spawn", "carol", "boss")

        # And turn 2's token dies with turn 2.
        _assert_refused(_spawn_call(url, second, "mallory"), second)
        assert daemon.tokens.who(second) is None
        with daemon.hive.open_store() as store:
            assert [a.agent for a in store.approvals.pending()] == ["carol"]
