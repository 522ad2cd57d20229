"""Notes compaction never loses a turn's edits (issue 19, item 4).

Two guards, raced deterministically (events and barriers, no sleeps):

* ``compact_notes`` applies the rewrite only if ``notes.md`` is still what the secondary
  session was given: an edit made while the session runs survives (outcome ``changed``);
* the AgentActor starts no turn while its last turn's worker compacts: a message arriving
  during the compaction gets its turn only after ``notes.compacted`` (and ``turn.ended`` of
  the compacted turn is still recorded when that turn ended, before the compaction).
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

import hive_actors.agent.notes as notes_mod
from hive_actors.agent.notes import compact_notes
from hive_actors.harness import TurnEnd, TurnRequest
from hive_actors.modelserver.conversation import newest_prompt
from hive_actors.modelserver.script import NOTES_COMPACTION_MARKER, script_policy
from hive_actors.protocol import MailArrived
from hive_actors.store import EventKind, Role
from hive_actors.watcher.messages import agent_service
from tests.support.hive import running_hive, send
from tests.support.timeout import TIMEOUT

NOTES = "".join(f"- fact {i}: the build uses make\n" for i in range(200))
SHORT = "# Notes (compacted)\n- the build uses make\n"


def request(tmp_path: Path) -> TurnRequest:
    return TurnRequest(
        prompt="x", model="claude-sonnet-test", session_id=str(uuid.uuid4()), base_url="http://127.0.0.1:9",
        env={"HOME": str(tmp_path), "CLAUDE_CONFIG_DIR": str(tmp_path)}, cwd=str(tmp_path),
    )


def answer(text: str) -> TurnEnd:
    return TurnEnd(outcome="ok", duration_s=0.1, result_text=text)


def leftovers(notes: Path) -> list[str]:
    return sorted(p.name for p in notes.parent.iterdir() if p.name != notes.name)


def test_an_edit_made_while_the_session_runs_survives(tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    reached, appended = threading.Event(), threading.Event()

    def run(_req: TurnRequest) -> TurnEnd:
        reached.set()  # the session has the notes; the writer goes now
        assert appended.wait(TIMEOUT)
        return answer(SHORT)

    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(compact_notes(notes, request(tmp_path), run))
    )
    worker.start()
    assert reached.wait(TIMEOUT)
    with open(notes, "a", encoding="utf-8") as fh:  # the next turn's edit
        fh.write("- new: the deploy needs a tag\n")
    appended.set()
    worker.join(TIMEOUT)
    assert not worker.is_alive()
    (result,) = results
    assert result.outcome == "changed"
    assert result.before == result.after == len(NOTES.encode())
    assert notes.read_text() == NOTES + "- new: the deploy needs a tag\n"
    assert leftovers(notes) == []


def test_an_edit_right_before_the_rename_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second check: the notes change after the rewrite is on disk, before it is renamed."""
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    real_fsync = os.fsync

    def fsync_then_edit(fd: int) -> None:
        real_fsync(fd)
        with open(notes, "a", encoding="utf-8") as fh:
            fh.write("- late edit\n")

    monkeypatch.setattr(notes_mod, "os", _OsWith(fsync_then_edit))
    result = compact_notes(notes, request(tmp_path), lambda _req: answer(SHORT))
    assert result.outcome == "changed"
    assert notes.read_text() == NOTES + "- late edit\n"
    assert leftovers(notes) == []


class _OsWith:
    """``os`` as :mod:`hive_actors.agent.notes` sees it, with another ``fsync``."""

    def __init__(self, fsync: Any) -> None:
        self.fsync = fsync

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_unchanged_notes_are_compacted(tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    result = compact_notes(notes, request(tmp_path), lambda _req: answer(SHORT))
    assert result.outcome == "compacted" and result.after == len(SHORT.encode())
    assert notes.read_text() == SHORT
    assert leftovers(notes) == []


def turn_threads(agent: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"turn:{agent}" and t.is_alive()]


def test_no_turn_starts_while_the_notes_are_compacted(tmp_path: Path) -> None:
    reached, release = threading.Event(), threading.Event()

    def policy(body: Any) -> Any:
        prompt = newest_prompt(body)
        if prompt is not None and prompt.text.startswith(NOTES_COMPACTION_MARKER):
            reached.set()
            release.wait(TIMEOUT * 3)
        return script_policy(body)

    with running_hive(tmp_path, {"alice": Role.AGENT}) as (daemon, _root, model, events):
        model.policy = policy
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "alice"
                        and e.payload["to"] == "idle")
        notes = daemon.hive.agent_paths("alice").state / "notes.md"
        notes.write_text(NOTES * 4)
        assert notes.stat().st_size > daemon.runtime.notes_threshold
        try:
            send(daemon, "alice", "first")
            first_end = events.wait_for(
                lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice")
            assert reached.wait(TIMEOUT * 3), "the compaction never reached the model"
            # The turn's end is recorded as it ended: before the compaction is over.
            assert first_end.payload["outcome"] == "ok"
            # A second message arrives while the compaction runs; the ask returns once the
            # actor has handled the notice (as it handles the bus's).
            send(daemon, "alice", "second")
            actor = daemon.hive.directory.get(agent_service("alice"))
            actor.ask(MailArrived("alice"), timeout=TIMEOUT)
            # Only the compacting worker: no second turn was started.
            assert len(turn_threads("alice")) == 1
            with daemon.hive.open_store() as store:
                started = [e for e in store.events.events_since(first_end.id, 1000)
                           if e.kind == EventKind.TURN_STARTED and e.agent == "alice"]
            assert started == []
            # Meanwhile someone edits the notes: the rewrite must not replace the edit.
            with open(notes, "a", encoding="utf-8") as fh:
                fh.write("- new: the deploy needs a tag\n")
        finally:
            release.set()
        compacted = events.wait_for(
            lambda e: e.kind == EventKind.NOTES_COMPACTED and e.agent == "alice",
            after=first_end.id)
        assert compacted.payload["outcome"] == "changed", compacted.payload
        assert "skipped (changed)" in compacted.payload["line"]
        assert notes.read_text().endswith("- new: the deploy needs a tag\n")
        second = events.wait_for(
            lambda e: e.kind == EventKind.TURN_STARTED and e.agent == "alice",
            after=first_end.id)
        assert second.id > compacted.id
        events.wait_for(lambda e: e.kind == EventKind.TURN_ENDED and e.agent == "alice",
                        after=second.id)
