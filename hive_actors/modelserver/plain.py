"""The demo model: what the loopback model does with a hive turn of plain words.

For a request that asks for a demo model (a model id ending in ``-demo``: ``hive demo`` runs its
hive on ``claude-sonnet-demo``) whose newest prompt is a hive turn (``N new message(s) for
NAME:``, see ``hive_actors.agent.prompt``) with no directive at all, the loopback model does a
small, useful, scripted thing instead of echoing — so a newcomer sees the hive act without
learning the directives. What it does is read from the request alone (no counter, no
randomness), one tool call per round trip, like a directive script:

- **the manager**, given the operator's words: passes them on to an agent with
  ``mcp__hive__send`` and answers the operator (the turn's final text) that it did. The agent is
  the one the words name (one the manager has talked with, or one addressed as ``alice, …`` or
  ``ask alice to …``), else the agent the manager talked with last in its session; when it knows
  no agent yet, it asks the operator which one (``mcp__hive__ask_operator``). An operator's
  answer to a question is acknowledged, not passed on.
- **an agent**, given words from the operator or the manager: reads its notes (``Read`` of the
  ``notes.md`` its system prompt names), then tells the manager that sent the words that it is
  on it (``mcp__hive__send``), and says what it did.

Only the operator's words set this off: a message between agents (``peer``), a system notice or
the manager's acknowledgement never does, and what an agent sends back is a ``peer`` message —
so nothing is passed on twice and no two agents answer each other for ever. A prompt with a
directive in it is the directives' (:mod:`.script`), exactly as for every other model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hive_actors.modelserver.conversation import (
    Prompt,
    ToolExchange,
    block_text,
    iter_blocks,
    offered_tools,
    tool_exchanges_after,
)
from hive_actors.modelserver.replies import Reply, ToolUseBlock, text_reply, tool_use_reply

__all__ = ["DEMO_MODEL_SUFFIX", "TurnMessage", "is_demo_model", "parse_turn", "plain_reply"]

DEMO_MODEL_SUFFIX = "-demo"
"""A requested model id ending so gets the demo model's answers to plain words."""

SEND = "mcp__hive__send"
ASK = "mcp__hive__ask_operator"
READ = "Read"

_HEADER = re.compile(r"\A\d+ new message\(s\) for ([a-z][a-z0-9-]*):")
_MESSAGE = re.compile(
    r"^--- message (\d+) from (\S+) \(([a-z]+)\)( \(redelivered\))?$", re.MULTILINE
)
_WHO = re.compile(r"You are ([a-z][a-z0-9-]*), the (manager|an agent) of a hive")
_NOTES = re.compile(r"keep durable knowledge in (\S+/notes\.md)")
_NAME = re.compile(r"[a-z][a-z0-9-]{0,10}")
_WORD = re.compile(r"[a-z0-9][a-z0-9-]*")
_ADDRESSED = re.compile(r"\A\s*([A-Za-z][A-Za-z0-9-]{0,10})\s*[,:]")
_ASK_TO = re.compile(r"\b(?:ask|tell|have|get|let)\s+([a-z][a-z0-9-]{0,10})\s+to\b", re.IGNORECASE)
_NOT_AGENTS = frozenset({
    "operator", "hive", "please", "hi", "hello", "hey", "ok", "okay", "so", "now", "then",
    "well", "also", "and", "but", "thanks", "thank", "dear", "yes", "no", "note", "team", "all",
    "everyone", "someone", "somebody", "anyone", "us", "me", "you", "them", "it",
})
_ANSWER = "Answer to your question "
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_QUOTE = 80


@dataclass(frozen=True)
class TurnMessage:
    """One inbox message of a hive turn's prompt."""

    id: int
    sender: str
    kind: str
    """``operator``, ``manager``, ``peer`` or ``system``."""
    body: str


def is_demo_model(model: object) -> bool:
    """Whether ``model`` (a request's ``model``) is one of the demo's."""
    return isinstance(model, str) and model.endswith(DEMO_MODEL_SUFFIX)


def parse_turn(text: str) -> tuple[str, list[TurnMessage]] | None:
    """A hive turn's prompt as (recipient, its messages); None for any other prompt."""
    header = _HEADER.match(text)
    if header is None:
        return None
    found = list(_MESSAGE.finditer(text))
    messages = []
    for i, match in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        messages.append(TurnMessage(int(match.group(1)), match.group(2), match.group(3),
                                    text[match.end():end].strip("\n")))
    return header.group(1), messages


def _system_text(request: Mapping[str, Any]) -> str:
    system = request.get("system")
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(block_text(b) for b in system if isinstance(b, Mapping))
    return ""


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE else flat[: _QUOTE - 1] + "…"


def _clean(result: str | None) -> str:
    return _REMINDER.sub("", result or "").strip()


def _tool_use_id(prompt: Prompt, n: int) -> str:
    seed = f"plain:{prompt.text}:{prompt.message_index}:{n}".encode()
    return "toolu_" + hashlib.sha256(seed).hexdigest()[:24]


def _known_agents(request: Mapping[str, Any], prompt: Prompt, me: str,
                  turn: Sequence[TurnMessage]) -> list[str]:
    """The agents the conversation shows ``me`` talking with, oldest first (each once, at its
    latest place): the recipients of its earlier sends, the senders of the agent messages it
    got (this turn's included)."""
    seen: list[str] = []

    def saw(name: object) -> None:
        if isinstance(name, str) and _NAME.fullmatch(name) and name != me and (
            name not in _NOT_AGENTS
        ):
            if name in seen:
                seen.remove(name)
            seen.append(name)

    raw = request.get("messages")
    messages = [m for m in raw if isinstance(m, Mapping)] if isinstance(raw, list) else []
    for message in messages[: prompt.message_index]:  # as newest_prompt counts them
        for _, block in iter_blocks(message):
            if message.get("role") == "assistant" and block.get("type") == "tool_use":
                args = block.get("input")
                if block.get("name") == SEND and isinstance(args, Mapping):
                    saw(args.get("to"))
            elif message.get("role") == "user" and block.get("type") == "text":
                for match in _MESSAGE.finditer(block_text(block)):
                    if match.group(3) in ("peer", "manager"):
                        saw(match.group(2))
    for got in turn:
        if got.kind in ("peer", "manager"):
            saw(got.sender)
    return seen


def _target(words: str, known: Sequence[str], me: str) -> str | None:
    """Who the manager passes ``words`` on to (see the module)."""
    named = [str(w) for w in _WORD.findall(words.lower()) if w in known]
    if named:
        return named[0]
    for pattern in (_ADDRESSED, _ASK_TO):
        found = pattern.search(words)
        if found:
            name = found.group(1).lower()
            if name != me and name not in _NOT_AGENTS:
                return name
    return known[-1] if known else None


def _tool(request: Mapping[str, Any], prompt: Prompt, n: int, name: str,
          args: Mapping[str, Any]) -> Reply | None:
    if name not in offered_tools(request):
        return None  # a side request without the tools: the plain echo answers it
    block = ToolUseBlock(id=_tool_use_id(prompt, n), name=name, input=dict(args))
    return tool_use_reply(block)


def _manager(request: Mapping[str, Any], prompt: Prompt, me: str,
             turn: Sequence[TurnMessage], done: Sequence[ToolExchange]) -> Reply | None:
    asks = [m for m in turn if m.kind == "operator"]
    if not asks:
        return None
    answers = [m for m in asks if m.body.startswith(_ANSWER)]
    words = "\n".join(m.body for m in asks if m not in answers).strip()
    if not words:
        first = answers[0].body.splitlines()[1:] or [""]
        return text_reply(f"Thank you, noted: {_quote(' '.join(first))}", kind="plain-noted")
    target = _target(words, _known_agents(request, prompt, me, turn), me)
    if target is None:
        question = (f"Which agent should take this on: \"{_quote(words)}\"? Tell me its name "
                    "(e.g. \"alice, please …\"), or approve a new agent for it.")
        if not done:
            return _tool(request, prompt, 0, ASK, {"question": question})
        result = _clean(done[0].result)
        if done[0].is_error:
            return text_reply(f"I could not ask you which agent should take \"{_quote(words)}\": "
                              f"{result}", kind="plain-final")
        return text_reply(f"I know no agent to give \"{_quote(words)}\" to yet, so I asked you "
                          f"which one on the dashboard ({result}).", kind="plain-final")
    if not done:
        body = f"{words}\n\n(from the operator, passed on by {me})"
        return _tool(request, prompt, 0, SEND, {"to": target, "body": body})
    result = _clean(done[0].result)
    if done[0].is_error:
        return text_reply(f"I could not pass \"{_quote(words)}\" on to {target}: {result}",
                          kind="plain-final")
    return text_reply(f"Got it. I passed \"{_quote(words)}\" on to {target} ({result}); "
                      f"{target} will report back to me.", kind="plain-final")


def _notes_summary(exchange: ToolExchange) -> str:
    if exchange.is_error:
        return "none yet"
    lines = [ln for ln in _clean(exchange.result).splitlines() if re.match(r"\s*\d+\t", ln)]
    return f"{len(lines)} line{'s' if len(lines) != 1 else ''}" if lines else "empty"


def _agent(request: Mapping[str, Any], prompt: Prompt, me: str, notes: str | None,
           turn: Sequence[TurnMessage], done: Sequence[ToolExchange]) -> Reply | None:
    asks = [m for m in turn if m.kind in ("operator", "manager")]
    if not asks:
        return None
    words = "\n".join(m.body for m in asks).strip()
    reply_to = next((m.sender for m in asks if m.kind == "manager"), None)
    steps: list[str] = ([READ] if notes else []) + ([SEND] if reply_to else [])
    looked = _notes_summary(done[0]) if notes and done else None
    if len(done) < len(steps):
        step = steps[len(done)]
        if step == READ:
            return _tool(request, prompt, len(done), READ, {"file_path": notes})
        what = f"I read my notes ({looked}) and " if looked else ""
        body = f"{me} here, on \"{_quote(words)}\": {what}I am on it."
        return _tool(request, prompt, len(done), SEND, {"to": reply_to, "body": body})
    did = [f"read my notes ({looked})"] if looked else []
    if reply_to:
        sent = done[-1]
        did.append(f"told {reply_to} I am on it" if not sent.is_error
                   else f"could not tell {reply_to}: {_clean(sent.result)}")
    return text_reply(f"I took on \"{_quote(words)}\": {' and '.join(did) or 'noted'}.",
                      kind="plain-final")


def plain_reply(request: Mapping[str, Any], prompt: Prompt) -> Reply | None:
    """The demo model's answer to a hive turn of plain words (the prompt holds no directive:
    the caller checked); None when it does not apply (see the module)."""
    if not is_demo_model(request.get("model")):
        return None
    turn = parse_turn(prompt.text)
    who = _WHO.search(_system_text(request))
    if turn is None or who is None or who.group(1) != turn[0]:
        return None
    me, messages = turn
    done = tool_exchanges_after(request, prompt)
    if any(ex.result is None for ex in done):
        return None
    if who.group(2) == "manager":
        return _manager(request, prompt, me, messages, done)
    notes = _NOTES.search(_system_text(request))
    return _agent(request, prompt, me, notes.group(1) if notes else None, messages, done)
