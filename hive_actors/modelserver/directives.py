"""The directive language a prompt uses to script the loopback model.

A directive is a line of the prompt whose first non-blank character is ``@`` followed by a known
keyword; every other line is ordinary text (so ``@alice hi`` or a quoted ``> @tool`` is not one)::

    @tool <tool_name> [<json object>]   ask for this tool (one per round trip, in order)
    @say <text>                         the final answer's text
    @sleep <seconds>                    wait this long before each answer to this prompt
    @too-long                           answer "prompt is too long" until a compaction absorbs it
    @error overloaded | api             answer 529 overloaded_error / 400 invalid_request_error
    @stall                              never answer (until the client leaves): the turn stalls;
                                        a prompt marking a message "(redelivered)" is answered

Parsing is pure and strict: a malformed directive is reported, never guessed at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DirectiveError",
    "Script",
    "ToolDirective",
    "parse_script",
]

ErrorKind = Literal["overloaded", "api"]
_KEYWORDS = ("tool", "say", "sleep", "too-long", "error", "stall")


class DirectiveError(ValueError):
    """A directive line that cannot be understood; the message names the line and the fix."""


@dataclass(frozen=True)
class ToolDirective:
    """One ``@tool`` line: a tool to call and its arguments."""

    name: str
    """The tool name as the model sees it (``Bash``, ``mcp__hive__send``)."""
    args: Mapping[str, Any]
    """The JSON object passed as the tool's input."""


@dataclass(frozen=True)
class Script:
    """Everything the directives of one prompt ask for."""

    tools: tuple[ToolDirective, ...] = ()
    """Tool calls to make, in order, one per round trip."""
    say: str | None = None
    """The final answer's text, if scripted."""
    sleep_s: float = 0.0
    """Delay before each answer, in seconds."""
    too_long: bool = False
    """Answer "prompt is too long" until a compaction summary absorbed this prompt."""
    error: ErrorKind | None = None
    """Answer this API error instead of anything else."""
    stall: bool = False
    """Never answer this prompt (the turn stalls) — unless a message in it is redelivered."""
    text: str = ""
    """The prompt with the directive lines removed."""
    directives: tuple[str, ...] = field(default=())
    """The directive lines as written, for logs."""


def _keyword(line: str) -> tuple[str, str] | None:
    stripped = line.strip()
    if not stripped.startswith("@"):
        return None
    word, _, rest = stripped[1:].partition(" ")
    if word not in _KEYWORDS:
        return None
    return word, rest.strip()


def _parse_tool(rest: str, line: str) -> ToolDirective:
    name, _, raw_args = rest.partition(" ")
    if not name:
        raise DirectiveError(
            f'{line!r}: @tool needs a tool name, e.g. \'@tool Bash {{"command": "ls"}}\''
        )
    raw_args = raw_args.strip()
    if not raw_args:
        return ToolDirective(name=name, args={})
    try:
        args = json.loads(raw_args)
    except json.JSONDecodeError as exc:
        raise DirectiveError(
            f"{line!r}: the arguments of @tool {name} are not JSON ({exc.msg} at column "
            f'{exc.colno}); write a JSON object, e.g. {{"command": "ls"}}'
        ) from exc
    if not isinstance(args, dict):
        raise DirectiveError(
            f"{line!r}: the arguments of @tool {name} must be a JSON object, got "
            f"{type(args).__name__}"
        )
    return ToolDirective(name=name, args=args)


def _parse_sleep(rest: str, line: str) -> float:
    try:
        seconds = float(rest)
    except ValueError as exc:
        raise DirectiveError(f"{line!r}: @sleep takes seconds, e.g. '@sleep 2.5'") from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise DirectiveError(f"{line!r}: @sleep needs a finite number of seconds >= 0")
    return seconds


def parse_script(prompt: str) -> Script:
    """Parse the directives of ``prompt``; raise DirectiveError on a malformed one."""
    tools: list[ToolDirective] = []
    say: str | None = None
    sleep_s = 0.0
    too_long = False
    error: ErrorKind | None = None
    stall = False
    text_lines: list[str] = []
    directive_lines: list[str] = []
    for line in prompt.splitlines():
        parsed = _keyword(line)
        if parsed is None:
            text_lines.append(line)
            continue
        directive_lines.append(line.strip())
        word, rest = parsed
        if word == "tool":
            tools.append(_parse_tool(rest, line))
        elif word == "say":
            say = rest if say is None else f"{say}\n{rest}"
        elif word == "sleep":
            sleep_s += _parse_sleep(rest, line)
        elif word == "too-long":
            too_long = True
        elif word == "stall":
            if rest:
                raise DirectiveError(f"{line!r}: @stall takes nothing, got {rest!r}")
            stall = True
        elif rest in ("overloaded", "api"):
            error = "overloaded" if rest == "overloaded" else "api"
        else:
            raise DirectiveError(f"{line!r}: @error takes 'overloaded' or 'api', got {rest!r}")
    return Script(
        tools=tuple(tools),
        say=say,
        sleep_s=sleep_s,
        too_long=too_long,
        error=error,
        stall=stall,
        text="\n".join(text_lines).strip(),
        directives=tuple(directive_lines),
    )
