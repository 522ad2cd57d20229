"""Who is calling: one secret bearer token per agent turn, and the ``--mcp-config`` carrying it.

The hive MCP endpoint is one HTTP URL shared by every agent; the only thing that tells alice's
calls from bob's is the ``Authorization: Bearer <token>`` header written into *that agent's*
``--mcp-config``. So:

* a token is 32 random bytes (``secrets.token_urlsafe(32)``), issued when one of the agent's
  turns starts and revoked when that turn ends (or the agent stops): between turns the agent has
  no token at all, so a token read or saved during a turn cannot be replayed after it. A new
  token revokes the agent's previous one, and revoking a given token never touches a newer one
  (a late end of turn N leaves turn N+1's token live);
* a token is looked up with a constant-time comparison against every issued one (the book
  keeps only SHA-256 digests), so response timing says nothing about how close a guess was;
* a token never appears in a log line, an error message or a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hive_actors.errors import ConfigError
from hive_actors.store.names import validate_name
from hive_actors.store.records import Role

__all__ = [
    "HIVE_SERVER",
    "Caller",
    "StdioServer",
    "TokenBook",
    "bearer_token",
    "mcp_config",
]

log = logging.getLogger(__name__)

HIVE_SERVER = "hive"
"""The hive's key in ``mcpServers``: the model sees its tools as ``mcp__hive__<tool>``."""

_TOKEN_BYTES = 32
# The CLI names tools mcp__<server>__<tool>; keep server names to what survives that.
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BEARER = re.compile(r"Bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Caller:
    """The agent a request is attributed to, as its token says."""

    agent: str
    """The agent's name."""
    role: Role
    """``manager`` or ``agent``: the manager alone may call the manager tools."""

    @property
    def is_manager(self) -> bool:
        """Whether the caller is the hive's manager."""
        return self.role is Role.MANAGER


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenBook:
    """The issued tokens: agent -> (digest of its current token, role). Thread-safe.

    The book holds digests only, so even a dump of it reveals no usable token.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_agent: dict[str, tuple[bytes, Caller]] = {}

    def issue(self, agent: str, role: Role | str) -> str:
        """Issue a fresh token for ``agent`` (one per turn) and return it.

        Any token issued to ``agent`` before is revoked at once. Raises ConfigError for a bad
        agent name or role.
        """
        validate_name(agent)
        try:
            caller = Caller(agent=agent, role=Role(role))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ConfigError(
                f"cannot issue a hive token for {agent}: role {role!r} is unknown, use one of "
                f"{known}"
            ) from None
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        with self._lock:
            replaced = agent in self._by_agent
            self._by_agent[agent] = (_digest(token), caller)
        # Once per turn: debug, not info (the turn's own events say when it starts and ends).
        log.debug(
            "mcp: issued a hive token for %s (%s)%s",
            agent,
            caller.role,
            "; its previous token is revoked" if replaced else "",
        )
        return token

    def revoke(self, agent: str, token: str | None = None) -> bool:
        """Revoke ``agent``'s token; return whether one was revoked.

        With ``token``, only that exact token is revoked: when ``agent`` holds another one by
        now (a newer turn's, issued since), it stays live and this returns False. Without it,
        whatever token ``agent`` holds goes.
        """
        wanted = None if token is None else _digest(token)
        with self._lock:
            entry = self._by_agent.get(agent)
            had = entry is not None and (
                wanted is None or hmac.compare_digest(entry[0], wanted)
            )
            if had:
                del self._by_agent[agent]
        if had:
            log.debug("mcp: revoked the hive token of %s", agent)
        return had

    def who(self, token: str | None) -> Caller | None:
        """Return the caller ``token`` belongs to, or None (missing, unknown or revoked)."""
        if not token:
            return None
        wanted = _digest(token)
        found: Caller | None = None
        with self._lock:
            # Compare against every entry, without stopping at a match: the time taken does
            # not depend on which (or whether any) entry matched.
            for digest, caller in self._by_agent.values():
                if hmac.compare_digest(digest, wanted):
                    found = caller
        return found

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_agent)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if authorization is None:
        return None
    match = _BEARER.fullmatch(authorization.strip())
    return None if match is None else match.group(1)


@dataclass(frozen=True, slots=True)
class StdioServer:
    """One extra MCP server an agent's config adds: a command the CLI starts (stdio)."""

    command: str
    """The executable."""
    args: tuple[str, ...] = ()
    """Its arguments."""
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Extra environment variables for it."""

    @classmethod
    def from_mapping(cls, name: str, raw: Mapping[str, Any]) -> StdioServer:
        """Build one from its ``agent.toml`` table (``command``, ``args``, ``env``).

        Raises ConfigError naming the server, the bad key or value, and the expected shape.
        """
        where = f"extra MCP server {name!r}"
        unknown = sorted(set(raw) - {"command", "args", "env"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; a server has command, args and env"
            )
        command = raw.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ConfigError(f"{where}: command must be a non-empty string, got {command!r}")
        args = raw.get("args", ())
        if isinstance(args, str) or not isinstance(args, Sequence):
            raise ConfigError(f"{where}: args must be a list of strings, got {args!r}")
        bad_args = [a for a in args if not isinstance(a, str)]
        if bad_args:
            raise ConfigError(f"{where}: args must all be strings, got {bad_args[0]!r}")
        env = raw.get("env", {})
        if not isinstance(env, Mapping):
            raise ConfigError(f"{where}: env must be a table of strings, got {env!r}")
        bad_env = [k for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad_env:
            raise ConfigError(f"{where}: env values must be strings, check {bad_env[0]!r}")
        return cls(command=command, args=tuple(args), env=MappingProxyType(dict(env)))

    def to_json(self) -> dict[str, Any]:
        """The ``mcpServers`` entry the CLI reads."""
        entry: dict[str, Any] = {"command": self.command, "args": list(self.args)}
        if self.env:
            entry["env"] = dict(self.env)
        return entry


def mcp_config(
    agent: str,
    token: str,
    url: str,
    extra_servers: Mapping[str, StdioServer | Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``--mcp-config`` object of ``agent``: the hive endpoint with its token, then extras.

    ``{"mcpServers": {"hive": {"type": "http", "url": url, "headers": {"Authorization":
    "Bearer <token>"}}, <name>: {"command": ..., "args": [...], "env": {...}}}}``. The token is
    a secret: write the result only where that agent's CLI reads it (a 0600 file, not argv).
    Raises ConfigError for a bad URL, an empty token or a malformed extra server.
    """
    validate_name(agent)
    if not token:
        raise ConfigError(
            f"the --mcp-config of {agent} needs its hive token; issue one with TokenBook.issue"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"the hive MCP url for {agent} must be an http(s) URL such as "
            f"http://127.0.0.1:8000/mcp, got {url!r}"
        )
    servers: dict[str, Any] = {
        HIVE_SERVER: {
            "type": "http",
            "url": url,
            "headers": {"Authorization": f"Bearer {token}"},
        }
    }
    for name, spec in (extra_servers or {}).items():
        if name == HIVE_SERVER:
            raise ConfigError(
                f"agent {agent}: an extra MCP server cannot be named {HIVE_SERVER!r}, the hive's "
                "own server is; rename it in agent.toml"
            )
        if not _SERVER_NAME.fullmatch(name):
            raise ConfigError(
                f"agent {agent}: extra MCP server name {name!r} is invalid: use 1 to 64 letters, "
                "digits, '_' or '-'"
            )
        server = spec if isinstance(spec, StdioServer) else StdioServer.from_mapping(name, spec)
        servers[name] = server.to_json()
    return {"mcpServers": servers}
