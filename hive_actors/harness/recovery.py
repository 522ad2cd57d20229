"""A turn's recoveries: the CLI's session refusals, and "prompt is too long" (one ``/compact``,
one retry, then a fresh session).

``run_turn`` is the policy over any ``run(TurnRequest) -> TurnEnd`` (``run_cli`` in production,
a function over recorded TurnEnds in unit tests). It does no I/O of its own.

Session refusals (see :mod:`hive_actors.harness.sessions` for when they happen): "Session ID …
is already in use" on ``--session-id`` switches to ``--resume`` for that id, once; "No
conversation found" on ``--resume`` (the CLI lost the session, or its file is corrupt) moves the
turn to a fresh session seeded with a hand-off — the same one rule as a prompt that stays too
long. Neither is ever retried further.

With the CLI's auto-compaction on (the default), the CLI has already compacted and retried by
itself before it reports ``prompt_too_long``; the ``/compact`` here then usually finds "not
enough messages" and the fresh session is what helps. With ``auto_compact=False`` the CLI
reports the first overflow and this policy's ``/compact`` does the compaction.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from hive_actors.harness.claude import TurnRequest, compact_request
from hive_actors.harness.events import Tokens, TurnEnd

__all__ = ["HANDOFF_QUOTE_LIMIT", "handoff_prompt", "run_turn", "session_refusal"]

log = logging.getLogger(__name__)

HANDOFF_QUOTE_LIMIT = 20_000
"""Characters of the original prompt a hand-off quotes."""

Runner = Callable[[TurnRequest], TurnEnd]


def handoff_prompt(req: TurnRequest, failed: TurnEnd) -> str:
    """The first prompt of the fresh session that replaces one that ran out of context (``failed``
    ended ``prompt_too_long``) or that the CLI could not resume (any other ``failed``).

    The original request is quoted (``> `` lines, cut at HANDOFF_QUOTE_LIMIT) so it reads as
    context, not as a new instruction block.
    """
    original = req.prompt
    if len(original) > HANDOFF_QUOTE_LIMIT:
        original = (
            original[:HANDOFF_QUOTE_LIMIT] + "\n[… cut: the request was too long to quote in full]"
        )
    quoted = "\n".join(f"> {line}" for line in original.splitlines() or [""])
    if failed.terminal_reason == "prompt_too_long":
        what = "ran out of context and could not be compacted"
        request = "The request that did not fit was"
        ask = "Carry it out if it still applies, in smaller steps."
    else:
        what = "could not be resumed (the claude CLI no longer knows it)"
        request, ask = "The request it was to handle was", "Carry it out if it still applies."
    return (
        f"Your previous claude session ({failed.session_id or req.session_id}) {what}, so this "
        "is a fresh session. Your durable notes are in /state/notes.md: read them first to pick "
        f"up where you left off. {request}:\n\n{quoted}\n\n{ask}"
    )


_IN_USE = "is already in use"
"""How CLI 2.1.331 refuses ``--session-id`` for a session it has (stderr, exit 1, no result)."""
_NOT_FOUND = "No conversation found"
"""How it refuses ``--resume`` for a session it has not, or cannot read (an error result)."""


def session_refusal(req: TurnRequest, end: TurnEnd) -> str | None:
    """``"in-use"`` when the CLI refused ``req``'s ``--session-id`` because it has that session,
    ``"unknown"`` when it refused ``--resume`` because it has no (readable) such session, else
    None. Only an ``error`` run counts: a timeout or a cancel is never a refusal."""
    if end.outcome != "error":
        return None
    said = f"{end.error or ''}\n{end.stderr}"
    if not req.resume and _IN_USE in said:
        return "in-use"
    if req.resume and _NOT_FOUND in said:
        return "unknown"
    return None


def _who(req: TurnRequest) -> str:
    """The agent a request is for (its env's HIVE_AGENT), for log lines."""
    return req.env.get("HIVE_AGENT") or "claude"


def _merge(ends: list[TurnEnd], last: TurnEnd) -> TurnEnd:
    calls: Counter[str] = Counter()
    for end in ends:
        calls.update(end.tool_calls)
    return replace(
        last,
        duration_s=sum(e.duration_s for e in ends),
        tool_calls=MappingProxyType(dict(calls)),
        tokens=Tokens(
            input=sum(e.tokens.input for e in ends),
            output=sum(e.tokens.output for e in ends),
            cache_read=sum(e.tokens.cache_read for e in ends),
            cache_creation=sum(e.tokens.cache_creation for e in ends),
        ),
        cost_usd=sum(e.cost_usd for e in ends),
        permission_denials=tuple(d for e in ends for d in e.permission_denials),
        compacted=any(e.compacted for e in ends),
        attempts=len(ends),
    )


def _fresh_session(
    req: TurnRequest,
    failed: TurnEnd,
    run: Runner,
    new_session_id: Callable[[], str],
    handoff: Callable[[TurnRequest, TurnEnd], str],
) -> tuple[TurnRequest, TurnEnd]:
    """The one rule for a session that cannot go on: a fresh session id, seeded with a hand-off
    that quotes ``req``. Returns the fresh request and its run."""
    fresh = replace(
        req, session_id=new_session_id(), resume=False, prompt=handoff(req, failed)
    )
    return fresh, run(fresh)


def run_turn(
    req: TurnRequest,
    run: Runner,
    *,
    new_session_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    handoff: Callable[[TurnRequest, TurnEnd], str] = handoff_prompt,
) -> TurnEnd:
    """Run ``req``; recover from a session refusal, then from ``prompt_too_long``.

    A refused ``--session-id`` ("already in use") is retried once with ``--resume``; a refused
    ``--resume`` ("No conversation found") goes on in a fresh session seeded with a hand-off. On
    ``prompt_too_long`` compact once, retry once, then start a fresh session with a hand-off.

    The returned TurnEnd sums every run (duration, tokens, cost, tool calls; ``attempts``
    counts them). Its outcome is ``compact-retry`` when a retry or the fresh session succeeded
    a prompt too long; its ``session_id`` is the session to resume next time (the fresh one
    after a hand-off).
    """
    who = _who(req)
    first = run(req)
    ends = [first]
    refusal = session_refusal(req, first)
    if refusal == "in-use":
        log.warning(
            "%s: claude session %s is already in use (a run cut short created it); "
            "resuming it instead", who, req.session_id,
        )
        req = replace(req, resume=True)
        first = run(req)
        ends.append(first)
        refusal = session_refusal(req, first)
    if refusal == "unknown":
        failed_id = req.session_id
        req, first = _fresh_session(req, first, run, new_session_id, handoff)
        ends.append(first)
        log.warning(
            "%s: claude session %s could not be resumed (the CLI no longer knows it); "
            "went on in fresh session %s with a hand-off: %s",
            who, failed_id, req.session_id, first.outcome,
        )
        first = replace(first, session_id=first.session_id or req.session_id)
    if first.terminal_reason != "prompt_too_long":
        return first if len(ends) == 1 else _merge(ends, first)
    log.warning("turn: session %s: prompt too long; compacting and retrying once", req.session_id)
    compaction = run(compact_request(req))
    ends.append(compaction)
    if compaction.outcome in ("timeout", "cancelled"):
        return _merge(ends, compaction)
    retry = run(replace(req, resume=True))
    ends.append(retry)
    if retry.outcome == "ok":
        return replace(_merge(ends, retry), outcome="compact-retry")
    if retry.terminal_reason != "prompt_too_long":
        return _merge(ends, retry)
    too_long_id = req.session_id
    fresh_req, fresh = _fresh_session(req, retry, run, new_session_id, handoff)
    log.warning(
        "turn: session %s still too long after /compact; handed off to fresh session %s",
        too_long_id,
        fresh_req.session_id,
    )
    ends.append(fresh)
    merged = _merge(ends, fresh)
    return replace(merged, outcome="compact-retry") if fresh.outcome == "ok" else merged
