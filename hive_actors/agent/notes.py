"""Notes compaction: an agent's ``notes.md`` rewritten shorter by a short-lived claude session.

Agents keep durable knowledge in ``<state>/notes.md``; it only grows. Past a size threshold the
AgentActor (between turns) runs a *secondary* claude session — a fresh session id, no tools —
whose only job is to return a compacted version of the notes. The rewrite is safe against a crash
at any point: the old notes are copied to ``notes.md.old`` first, the new text is written to a
temporary file and renamed over ``notes.md``, and only then is the old copy removed.

The rewrite never loses an edit: the actor starts no turn while a compaction runs, and the
rewrite is applied only if ``notes.md`` is still exactly what the secondary session was given
(anything else writing it meanwhile — a manager staging notes, an operator — wins; the outcome
is then ``changed`` and the next turn's compaction tries again).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hive_actors.harness import TurnEnd, TurnRequest

__all__ = ["COMPACTION_MARKER", "NotesCompaction", "compact_notes", "compaction_prompt"]

COMPACTION_MARKER = "HIVE-NOTES-COMPACTION"
"""Opens every compaction prompt (a scripted model server recognises the request by it)."""


@dataclass(frozen=True)
class NotesCompaction:
    """What one compaction did."""

    before: int
    """Size of the notes before, in bytes."""
    after: int
    """Size after (equal to ``before`` when nothing was written)."""
    outcome: str
    """``compacted``, or why not: ``model-error``, ``empty-answer``, ``not-shorter``,
    ``changed`` (``notes.md`` changed while the session ran: left as it is now), or
    ``error: …`` (the compaction itself failed)."""


def compaction_prompt(notes: str) -> str:
    return (
        f"{COMPACTION_MARKER}\n"
        "Below are an agent's durable notes. Rewrite them to be much shorter: keep every fact, "
        "decision and open task that still matters, drop repetition and stale detail. Answer with "
        "the new notes only, as Markdown, nothing before or after.\n"
        "<notes>\n"
        f"{notes}\n"
        "</notes>"
    )


def compact_notes(
    notes: Path,
    base: TurnRequest,
    run: Callable[[TurnRequest], TurnEnd],
) -> NotesCompaction:
    """Compact ``notes`` in place with one secondary claude session built from ``base``;
    the rewrite lands only if ``notes`` did not change while the session ran."""
    original = notes.read_bytes()
    text = original.decode("utf-8", errors="replace")
    before = len(original)
    request = replace(
        base,
        prompt=compaction_prompt(text),
        session_id=str(uuid.uuid4()),
        resume=False,
        mcp_config={},
        allowed_tools=(),
        tools=(),
        append_system_prompt=None,
        max_turns=1,
    )
    end = run(request)
    if end.outcome not in ("ok", "compact-retry"):
        return NotesCompaction(before, before, "model-error")
    new = (end.result_text or "").strip()
    if not new:
        return NotesCompaction(before, before, "empty-answer")
    new_bytes = (new + "\n").encode()
    if len(new_bytes) >= before:
        return NotesCompaction(before, before, "not-shorter")
    old = notes.with_name(notes.name + ".old")
    tmp = notes.with_name(notes.name + ".tmp")
    if _current(notes) != original:
        return NotesCompaction(before, before, "changed")
    old.write_bytes(original)
    with open(tmp, "wb") as fh:
        fh.write(new_bytes)
        fh.flush()
        os.fsync(fh.fileno())
    # Checked again right before the rename (the window left is this check's own).
    if _current(notes) != original:
        tmp.unlink()
        old.unlink()
        return NotesCompaction(before, before, "changed")
    tmp.replace(notes)
    old.unlink()
    return NotesCompaction(before, len(new_bytes), "compacted")


def _current(notes: Path) -> bytes | None:
    """What ``notes`` holds now (None: gone)."""
    try:
        return notes.read_bytes()
    except FileNotFoundError:
        return None
