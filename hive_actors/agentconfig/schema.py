"""``agent.toml``: an agent's hive settings, parsed and validated when they arrive.

::

    model = "sonnet"                 # optional; the hive's default otherwise
    system_prompt = "..."            # appended to the hive's own system prompt
    [bash]
    allow = ["git *", "nix build .*"]      # -> Bash(git *), Bash(nix build .*)
    [limits]
    max_turns = 40                   # --max-turns
    turn_deadline = 600              # seconds
    [mcp.<server-name>]              # extra MCP servers next to the hive's own
    command = "bitburner-mcp"        # absolute and executable, or found on PATH
    args = ["--port", "0"]
    env = { KEY = "value" }
    allow = ["*"]                    # -> mcp__<name>__*; ["get_state"] -> mcp__<name>__get_state
    required = true                  # a required server that fails to start fails the turn

Every problem is reported with the file, the key and the reason, e.g.
``agent.toml at a1b2c3d: [bash] allow[2] = "git (" is not a pattern: unbalanced parenthesis``.

**Bash patterns refused** (each becomes ``Bash(<pattern>)`` in ``--allowedTools``):

- empty or blank, or with leading/trailing whitespace (what would it mean?);
- with a control character (a newline would end the rule early);
- with unbalanced parentheses (the CLI finds the rule's end by its closing parenthesis);
- with a comma (``--allowedTools`` is comma-separated: it would split the rule in two);
- made only of ``*``, ``:`` and spaces (``*``, ``:*``, ``* *``): that allows any command — name
  the command (``git *``) or leave Bash out;
- over 512 characters.

**MCP server names** are ``[a-z0-9_-]+`` (at most 64), not ``hive`` (the hive's own server)
and without ``__`` (it separates server and tool in ``mcp__<server>__<tool>``). A server's
``allow`` entries are ``*`` or tool names ``[A-Za-z0-9_-]+``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hive_actors.errors import ConfigError

__all__ = [
    "AgentConfig",
    "CommandResolver",
    "Limits",
    "McpServer",
    "RESERVED_SERVER",
    "bash_pattern_problem",
    "parse_agent_toml",
    "resolve_command",
]

RESERVED_SERVER = "hive"
"""The hive's own MCP server name, which an agent's config cannot take."""

CommandResolver = Callable[[str], str | None]
"""Maps an MCP server's ``command`` to the executable it runs, or None when there is none."""

_TOP_KEYS = ("model", "system_prompt", "bash", "limits", "mcp")
_BASH_KEYS = ("allow",)
_LIMIT_KEYS = ("max_turns", "turn_deadline")
_SERVER_KEYS = ("command", "args", "env", "allow", "required")

_SERVER_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]{0,99}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ANYTHING = re.compile(r"[\s*:]+")
_MAX_PATTERN = 512
_MAX_PROMPT_BYTES = 64 * 1024
_MAX_TURNS = 10_000
_MAX_DEADLINE_S = 86_400.0


@dataclass(frozen=True)
class Limits:
    """``[limits]``."""

    max_turns: int | None = None
    """``--max-turns`` of each CLI run (None: the hive's default)."""
    turn_deadline: float | None = None
    """Seconds a turn may take before it is interrupted (None: the hive's default)."""


@dataclass(frozen=True)
class McpServer:
    """One ``[mcp.<name>]`` table: an extra stdio MCP server."""

    name: str
    """Its key in ``mcpServers``; the model sees its tools as ``mcp__<name>__<tool>``."""
    command: str
    """As written in agent.toml (resolved when validated)."""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    allow: tuple[str, ...] | None = None
    """Tools allowed without asking (``*`` for all); None when the key is absent (none)."""
    required: bool = False
    """True: a turn whose CLI reports this server failed is a failed turn."""


@dataclass(frozen=True)
class AgentConfig:
    """A validated ``agent.toml``."""

    model: str | None = None
    system_prompt: str | None = None
    bash_allow: tuple[str, ...] = ()
    """``[bash] allow`` patterns, in order."""
    limits: Limits = field(default_factory=Limits)
    mcp: tuple[McpServer, ...] = ()
    """Extra MCP servers, in the order agent.toml lists them."""


def resolve_command(command: str) -> str | None:
    """The default resolver: an absolute path must be an executable file; a bare name is
    looked up on this process's PATH."""
    if os.path.isabs(command):
        return command if os.path.isfile(command) and os.access(command, os.X_OK) else None
    return shutil.which(command)


def bash_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a Bash allow rule, or None when it can (rules: module doc)."""
    if not pattern.strip():
        return "is empty"
    bad = _CONTROL.search(pattern)
    if bad:
        return f"contains a control character ({bad.group()!r})"
    if pattern != pattern.strip():
        return "has leading or trailing whitespace"
    if len(pattern) > _MAX_PATTERN:
        return f"is {len(pattern)} characters long, over {_MAX_PATTERN}"
    depth = 0
    for ch in pattern:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return "unbalanced parenthesis"
    if depth:
        return "unbalanced parenthesis"
    if "," in pattern:
        return "contains ',', which separates --allowedTools rules: make it two patterns"
    if _ANYTHING.fullmatch(pattern):
        return 'allows any command: name the command, e.g. "git *"'
    return None


def parse_agent_toml(
    text: str,
    *,
    source: str = "agent.toml",
    resolve: CommandResolver | None = resolve_command,
) -> AgentConfig:
    """Parse and validate ``text``; ConfigError listing every problem, each with ``source``
    (e.g. ``agent.toml at a1b2c3d``), the key and the reason. ``resolve`` checks the MCP
    servers' commands (None: not checked, e.g. when they only exist inside a container)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    problems: list[str] = []
    config = _Parser(problems, resolve).top(data)
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"{source}: {problems[0]}")
        raise ConfigError(f"{source}: {len(problems)} problems: " + "; ".join(problems))
    return config


def _show(value: Any) -> str:
    """A value as TOML-ish text for a message (strings in double quotes)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class _Parser:
    """Walks the parsed TOML, appending one message per problem."""

    def __init__(self, problems: list[str], resolve: CommandResolver | None) -> None:
        self.problems = problems
        self.resolve = resolve

    def bad(self, where: str, value: Any, reason: str) -> None:
        self.problems.append(f"{where} = {_show(value)} {reason}")

    def unknown(self, table: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                where = f"[{table}] {key}" if table else key
                self.problems.append(f"{where} is not a known key: use {', '.join(allowed)}")

    def table(self, where: str, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problems.append(f"{where} must be a table, not {_type_name(value)}")
            return None
        return value

    def top(self, data: dict[str, Any]) -> AgentConfig:
        self.unknown("", data, _TOP_KEYS)
        model = self.model(data.get("model"))
        prompt = self.prompt(data.get("system_prompt"))
        bash = self.bash(data["bash"]) if "bash" in data else ()
        limits = self.limits(data["limits"]) if "limits" in data else Limits()
        servers = self.servers(data["mcp"]) if "mcp" in data else ()
        return AgentConfig(model, prompt, bash, limits, servers)

    def model(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.problems.append(f"model must be a string, not {_type_name(value)}")
        elif not _MODEL.fullmatch(value):
            self.bad("model", value, 'is not a model name: use an alias or id, e.g. "sonnet"')
        else:
            return value
        return None

    def prompt(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.problems.append(f"system_prompt must be a string, not {_type_name(value)}")
            return None
        size = len(value.encode("utf-8"))
        if "\0" in value:
            self.problems.append("system_prompt contains a NUL character: remove it")
        elif size > _MAX_PROMPT_BYTES:
            self.problems.append(
                f"system_prompt is {size} bytes, over {_MAX_PROMPT_BYTES}: shorten it or move "
                "the bulk into /state/notes.md"
            )
        else:
            return value or None
        return None

    def bash(self, value: Any) -> tuple[str, ...]:
        bash = self.table("[bash]", value)
        if bash is None:
            return ()
        self.unknown("bash", bash, _BASH_KEYS)
        allow = bash.get("allow", [])
        if not isinstance(allow, list):
            self.problems.append(
                f"[bash] allow must be an array of strings, not {_type_name(allow)}"
            )
            return ()
        good: list[str] = []
        for i, pattern in enumerate(allow):
            where = f"[bash] allow[{i}]"
            if not isinstance(pattern, str):
                self.bad(where, pattern, f"is {_type_name(pattern)}: a pattern is a string")
                continue
            problem = bash_pattern_problem(pattern)
            if problem is not None:
                self.bad(where, pattern, f"is not a pattern: {problem}")
            elif pattern not in good:
                good.append(pattern)
        return tuple(good)

    def limits(self, value: Any) -> Limits:
        limits = self.table("[limits]", value)
        if limits is None:
            return Limits()
        self.unknown("limits", limits, _LIMIT_KEYS)
        max_turns = limits.get("max_turns")
        if max_turns is not None and (
            type(max_turns) is not int or not 1 <= max_turns <= _MAX_TURNS
        ):
            self.bad("[limits] max_turns", max_turns, f"must be an integer in 1..{_MAX_TURNS}")
            max_turns = None
        deadline = limits.get("turn_deadline")
        if deadline is not None and (
            type(deadline) not in (int, float) or not 0 < deadline <= _MAX_DEADLINE_S
        ):
            self.bad(
                "[limits] turn_deadline",
                deadline,
                f"must be a number of seconds in (0, {_MAX_DEADLINE_S:g}]",
            )
            deadline = None
        return Limits(max_turns, None if deadline is None else float(deadline))

    def servers(self, value: Any) -> tuple[McpServer, ...]:
        servers = self.table("[mcp]", value)
        if servers is None:
            return ()
        out = []
        for name, body in servers.items():
            server = self.server(name, body)
            if server is not None:
                out.append(server)
        return tuple(out)

    def server(self, name: str, value: Any) -> McpServer | None:
        where = f"[mcp.{name}]"
        ok = True
        if name == RESERVED_SERVER:
            self.problems.append(
                f'{where}: the name "hive" is the hive\'s own server: pick another'
            )
            ok = False
        elif not _SERVER_NAME.fullmatch(name):
            self.problems.append(
                f"{where}: the server name {_show(name)} is invalid: use 1 to 64 of a-z, 0-9, "
                "'_' and '-'"
            )
            ok = False
        elif "__" in name:
            self.problems.append(
                f'{where}: the server name {_show(name)} contains "__", which separates server '
                "and tool in mcp__<server>__<tool>: pick another"
            )
            ok = False
        body = self.table(where, value)
        if body is None:
            return None
        self.unknown(f"mcp.{name}", body, _SERVER_KEYS)
        command = self.command(where, body.get("command"))
        args = self.args(where, body.get("args", []))
        env = self.env(where, body.get("env", {}))
        allow = self.allow(where, body.get("allow"))
        required = body.get("required", False)
        if not isinstance(required, bool):
            self.bad(f"{where} required", required, "must be true or false")
            required = False
        if not ok or command is None:
            return None
        return McpServer(name, command, args, MappingProxyType(env), allow, required)

    def command(self, where: str, value: Any) -> str | None:
        key = f"{where} command"
        if value is None:
            self.problems.append(f"{key} is missing: give the server's executable")
            return None
        if not isinstance(value, str):
            self.bad(key, value, f"is {_type_name(value)}: give the executable as a string")
            return None
        if not value.strip() or _CONTROL.search(value):
            self.bad(key, value, "is not a command: give an absolute path or a name on PATH")
            return None
        if "/" in value and not os.path.isabs(value):
            self.bad(key, value, "is a relative path: give an absolute path or a name on PATH")
            return None
        if self.resolve is not None and self.resolve(value) is None:
            if os.path.isabs(value):
                reason = "is not an executable file: install the server or fix the path"
            else:
                reason = "is not found on PATH: install it or give its absolute path"
            self.bad(key, value, reason)
            return None
        return value

    def args(self, where: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.bad(f"{where} args", value, "must be an array of strings")
            return ()
        out = []
        for i, arg in enumerate(value):
            if not isinstance(arg, str) or "\0" in arg:
                self.bad(f"{where} args[{i}]", arg, "must be a string without NUL")
            else:
                out.append(arg)
        return tuple(out)

    def env(self, where: str, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            self.bad(f"{where} env", value, 'must be a table of strings, e.g. { KEY = "value" }')
            return {}
        out = {}
        for key, val in value.items():
            if not _ENV_KEY.fullmatch(key):
                self.problems.append(
                    f"{where} env: the variable name {_show(key)} is invalid: use letters, "
                    "digits and '_', not starting with a digit"
                )
            elif not isinstance(val, str) or "\0" in val:
                self.bad(f"{where} env.{key}", val, "must be a string without NUL")
            else:
                out[key] = val
        return out

    def allow(self, where: str, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            self.bad(f"{where} allow", value, 'must be an array: ["*"] or tool names')
            return None
        out: list[str] = []
        for i, tool in enumerate(value):
            if not isinstance(tool, str) or not (tool == "*" or _TOOL_NAME.fullmatch(tool)):
                self.bad(
                    f"{where} allow[{i}]",
                    tool,
                    "is not a tool: use \"*\" for all, or a tool name of A-Z, a-z, 0-9, '_', '-'",
                )
            elif tool not in out:
                out.append(tool)
        return tuple(out)
