"""The "prompt is too long" recovery: one ``/compact``, one retry, then a fresh session.

``run_turn`` is the policy over any ``run(TurnRequest) -> TurnEnd`` (``run_cli`` in production,
a function over recorded TurnEnds in unit tests). It does no I/O of its own.

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

__all__ = ["HANDOFF_QUOTE_LIMIT", "handoff_prompt", "run_turn"]

log = logging.getLogger(__name__)

HANDOFF_QUOTE_LIMIT = 20_000
"""Characters of the original prompt a hand-off quotes."""

Runner = Callable[[TurnRequest], TurnEnd]


def handoff_prompt(req: TurnRequest, failed: TurnEnd) -> str:
    """The first prompt of the fresh session that replaces one that ran out of context.

    The original request is quoted (``> `` lines, cut at HANDOFF_QUOTE_LIMIT) so it reads as
    context, not as a new instruction block.
    """
    original = req.prompt
    if len(original) > HANDOFF_QUOTE_LIMIT:
        original = (
            original[:HANDOFF_QUOTE_LIMIT] + "\n[… cut: the request was too long to quote in full]"
        )
    quoted = "\n".join(f"> {line}" for line in original.splitlines() or [""])
    return (
        f"Your previous claude session ({failed.session_id or req.session_id}) ran out of context "
        "and could not be compacted, so this is a fresh session. Your durable notes are in "
        "/state/notes.md: read them first to pick up where you left off. The request that did "
        f"not fit was:\n\n{quoted}\n\nCarry it out if it still applies, in smaller steps."
    )


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


def run_turn(
    req: TurnRequest,
    run: Runner,
    *,
    new_session_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    handoff: Callable[[TurnRequest, TurnEnd], str] = handoff_prompt,
) -> TurnEnd:
    """Run ``req``; on ``prompt_too_long`` compact once, retry once, then start a fresh session.

    The returned TurnEnd sums every run (duration, tokens, cost, tool calls; ``attempts``
    counts them). Its outcome is ``compact-retry`` when a retry or the fresh session succeeded;
    its ``session_id`` is the session to resume next time (the fresh one after a hand-off).
    """
    first = run(req)
    if first.terminal_reason != "prompt_too_long":
        return first
    ends = [first]
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
    fresh_id = new_session_id()
    log.warning(
        "turn: session %s still too long after /compact; handing off to fresh session %s",
        req.session_id,
        fresh_id,
    )
    fresh = run(replace(req, session_id=fresh_id, resume=False, prompt=handoff(req, retry)))
    ends.append(fresh)
    merged = _merge(ends, fresh)
    return replace(merged, outcome="compact-retry") if fresh.outcome == "ok" else merged
