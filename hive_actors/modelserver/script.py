"""The default policy: answer each request as the directives of its newest user prompt say.

Every decision is read from the request itself, never from a counter, because the CLI interleaves
side requests and retries with the turn's own round trips:

- a compaction request (``/compact`` or auto-compaction) gets a summary; the summary *absorbs*
  each ``@too-long`` prompt it saw, so that prompt fits afterwards (as a real summary shrinks a
  huge prompt);
- ``@stall`` wins over everything else: the answer never comes (the client gives up), unless
  the prompt marks a message ``(redelivered)`` — the hive's turn prompt does for mail a turn cut
  short had taken — so the turn after the agent's restart goes through;
- ``@error``, then ``@too-long`` (unless absorbed), win over everything else;
- ``@tool`` lines are asked for one per round trip, counting the tool calls already in the
  conversation after the prompt; once all came back, a final text quotes their results;
- no directive: a short text answer — but a demo model (a model id ending in ``-demo``) does
  something with a hive turn of the operator's plain words (:mod:`.plain`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from hive_actors.modelserver.conversation import (
    ToolExchange,
    block_text,
    is_compaction_request,
    iter_blocks,
    newest_prompt,
    offered_tools,
    tool_exchanges_after,
    user_texts,
)
from hive_actors.modelserver.directives import DirectiveError, parse_script
from hive_actors.modelserver.plain import plain_reply
from hive_actors.modelserver.replies import (
    Reply,
    ToolUseBlock,
    api_error,
    text_reply,
    tool_use_reply,
)

__all__ = [
    "ABSORBED_MARKER",
    "NOTES_COMPACTION_MARKER",
    "PROMPT_TOO_LONG_MESSAGE",
    "REDELIVERED_MARKER",
    "STALL_S",
    "compacted_notes",
    "compaction_summary",
    "prompt_digest",
    "script_policy",
]

# The exact wording of the real API; CLI 2.1.331 matches /^prompt is too long: \d+ tokens > \d+
# maximum$/ to end a turn with terminal_reason "prompt_too_long" (and to try auto-compaction).
PROMPT_TOO_LONG_MESSAGE = "prompt is too long: 210000 tokens > 200000 maximum"
ABSORBED_MARKER = "absorbed-prompt:"
_QUOTE_LIMIT = 300
STALL_S = 24 * 3600.0
"""How long a ``@stall`` answer waits: for ever, as far as a turn is concerned (the server's
``stop`` or the client's leaving ends the wait)."""
REDELIVERED_MARKER = "(redelivered)"
"""What the hive's turn prompt says of a message a turn cut short had taken
(``hive_actors.agent.prompt``): ``@stall`` does not stall it again."""
# The CLI appends reminders to tool results; they are not part of what the tool said.
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)


def prompt_digest(text: str) -> str:
    """A short stable digest naming a prompt inside a summary."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def _all_text(request: Mapping[str, Any]) -> str:
    messages = request.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(
        block_text(block)
        for message in messages
        if isinstance(message, Mapping)
        for _, block in iter_blocks(message)
    )


def _quote(text: str, limit: int = _QUOTE_LIMIT) -> str:
    # Quoted with "> " so a directive line in it can never be read as a directive again.
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return "\n".join(f"> {line}" for line in short.splitlines() or [""])


def compaction_summary(request: Mapping[str, Any]) -> Reply:
    """The answer to a compaction request: ``<analysis>`` + ``<summary>``, as the CLI demands.

    The summary lists the user's messages (quoted) and one ``absorbed-prompt: <digest>`` line
    per ``@too-long`` prompt in the conversation being summarized.
    """
    messages = request.get("messages")
    history = (
        [m for m in messages[:-1] if isinstance(m, Mapping)] if isinstance(messages, list) else []
    )
    # The compaction prompt may share its user message with the last prompt; drop only it.
    texts = user_texts(history)
    if isinstance(messages, list) and messages and isinstance(messages[-1], Mapping):
        texts += [t for t in user_texts([messages[-1]]) if "create a detailed summary" not in t]
    absorbed = []
    for text in texts:
        try:
            if parse_script(text).too_long:
                absorbed.append(prompt_digest(text))
        except DirectiveError:
            continue
    lines = ["<analysis>The conversation is summarized for the loopback model server.</analysis>"]
    lines.append("<summary>")
    lines.append("1. Primary Request and Intent:")
    lines.extend(_quote(t) for t in texts)
    lines.extend(f"{ABSORBED_MARKER} {digest}" for digest in absorbed)
    lines.append("</summary>")
    return text_reply("\n".join(lines), kind="summary")


def _tool_use_id(prompt_text: str, message_index: int, n: int) -> str:
    # Stable for one prompt in one place of the conversation, unique across a retried prompt.
    seed = f"{prompt_digest(prompt_text)}:{message_index}:{n}".encode()
    return "toolu_" + hashlib.sha256(seed).hexdigest()[:24]


def _final_text(say: str | None, exchanges: list[ToolExchange]) -> str:
    parts = [say] if say else []
    for ex in exchanges:
        status = "error" if ex.is_error else "ok"
        result = _REMINDER.sub("", ex.result or "").strip()
        if len(result) > _QUOTE_LIMIT:
            result = result[: _QUOTE_LIMIT - 1] + "…"
        parts.append(f"{ex.name} ({status}): {result}")
    return "\n".join(parts) if parts else "Done."


NOTES_COMPACTION_MARKER = "HIVE-NOTES-COMPACTION"
"""Opens the hive's notes-compaction prompt (``hive_actors.agent.notes``)."""
_NOTES = re.compile(r"<notes>\n(.*)\n</notes>", re.DOTALL)


def compacted_notes(prompt_text: str) -> str:
    """A scripted "compaction" of the notes quoted in the prompt: repeated lines dropped, then
    the first half kept — shorter, deterministic, and recognisably the same notes."""
    found = _NOTES.search(prompt_text)
    lines = found.group(1).splitlines() if found else []
    seen: set[str] = set()
    unique = [ln for ln in lines if ln.strip() and not (ln in seen or seen.add(ln))]  # type: ignore[func-returns-value]
    kept = unique[: max(1, len(unique) // 2)]
    return "\n".join(["# Notes (compacted)", *kept])


def script_policy(request: Mapping[str, Any]) -> Reply:
    """The default policy: the directive script of the newest user prompt (module docstring)."""
    if is_compaction_request(request):
        return compaction_summary(request)
    prompt = newest_prompt(request)
    if prompt is None:
        return text_reply("Hello from the hive loopback model.", kind="default")
    if prompt.text.startswith(NOTES_COMPACTION_MARKER):
        return text_reply(compacted_notes(prompt.text), kind="notes-compaction")
    try:
        script = parse_script(prompt.text)
    except DirectiveError as exc:
        return text_reply(f"I could not follow the script: {exc}", kind="directive-error")
    delay = script.sleep_s
    if script.stall and REDELIVERED_MARKER not in prompt.text:
        return text_reply("(stalled)", kind="stall", delay_s=STALL_S)
    if script.error == "overloaded":
        return api_error(529, "overloaded_error", "Overloaded", kind="error-overloaded")
    if script.error == "api":
        return api_error(
            400, "invalid_request_error", "scripted API error (@error api)", kind="error-api"
        )
    if script.too_long:
        marker = f"{ABSORBED_MARKER} {prompt_digest(prompt.text)}"
        if marker not in _all_text(request):
            return api_error(400, "invalid_request_error", PROMPT_TOO_LONG_MESSAGE, kind="too-long")
    if script.tools:
        exchanges = tool_exchanges_after(request, prompt)
        done = len(exchanges)
        if done < len(script.tools):
            wanted = script.tools[done]
            offered = offered_tools(request)
            if wanted.name not in offered:
                return text_reply(
                    f"I cannot call {wanted.name}: this request does not offer it "
                    f"(offered: {', '.join(offered) or 'no tools'}).",
                    kind="tool-not-offered",
                    delay_s=delay,
                )
            block = ToolUseBlock(
                id=_tool_use_id(prompt.text, prompt.message_index, done),
                name=wanted.name,
                input=wanted.args,
            )
            return tool_use_reply(block, delay_s=delay)
        return text_reply(_final_text(script.say, exchanges), kind="final", delay_s=delay)
    if script.say is not None:
        return text_reply(script.say, kind="say", delay_s=delay)
    if not script.directives:
        plain = plain_reply(request, prompt)
        if plain is not None:
            return plain
    echo = script.text.splitlines()[0][:80] if script.text else ""
    return text_reply(
        f"Hello from the hive loopback model. You said: {json.dumps(echo)}",
        kind="default",
        delay_s=delay,
    )
