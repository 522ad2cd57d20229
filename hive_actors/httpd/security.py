"""Who may talk to the hive's web servers: the policy, the operator token, the request checks.

Threat model. The dashboard and the agent pages can approve spawns, apply configs and type into
agent terminals, so:

* **Loopback only by default.** Bound to 127.0.0.1 the servers are reachable by local users
  only. A browser on the same machine is still a way in for any web page it visits, so:

  - the ``Host`` header must name a loopback host (``localhost``, ``127.x``, ``::1``) or one of
    ``allowed_hosts``: this defeats DNS rebinding (evil.example resolving to 127.0.0.1 sends
    ``Host: evil.example``);
  - ``Origin``, when present, must be the request's own origin on every POST/PUT/PATCH/DELETE
    and on every websocket upgrade (CSRF, cross-site websocket hijacking). Browsers always
    send ``Origin`` on those, so an absent ``Origin`` is a non-browser client (curl, the hive
    CLI, a test) that could reach the port anyway, and is let through.

* **A non-loopback bind requires the operator token.** Generated once with
  :func:`secrets.token_urlsafe`, stored in a file created with mode 0600 (``os.open`` with the
  mode; never a chmod afterwards, which would leave a window), shown once to the operator
  (:attr:`OperatorToken.created`), reused on later starts. Every ``/api/`` call and every
  websocket upgrade must carry it, as ``Authorization: Bearer <token>`` or as the cookie that
  ``GET /login?token=<token>`` sets (HttpOnly, SameSite=Strict: a cross-site request never
  carries it). Comparison is constant-time. The ``Host`` check is off in this mode (the
  operator reaches the hive by whatever name it has; ``allowed_hosts`` narrows it) and the
  ``Origin`` rule is the same: present → must match; absent → fine, the token decides.

Everything here is pure except :func:`load_or_create_token` (the token file); the ASGI side
lives in :mod:`.middleware`.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from hive_actors.errors import ConfigError, HiveError

__all__ = [
    "COOKIE_NAME",
    "DEFAULT_DRAIN_LIMIT",
    "DEFAULT_MAX_BODY",
    "OperatorToken",
    "Rejection",
    "SecurityPolicy",
    "check_request",
    "constant_time_equal",
    "is_loopback",
    "load_or_create_token",
    "parse_cookies",
    "policy_for_bind",
    "request_origin",
]

log = logging.getLogger(__name__)

COOKIE_NAME = "hive_token"
"""Cookie that carries the operator token after ``/login``. Cookies ignore ports, so one login
covers the dashboard and every agent page on the same host."""

DEFAULT_MAX_BODY = 1024 * 1024
"""Largest request body accepted, in bytes ([web] max_body_bytes)."""

DEFAULT_DRAIN_LIMIT = 8 * 1024 * 1024
"""How much of an oversized body is read and discarded before the 413 is sent. Answering while
the client is still sending makes the kernel reset the connection, and the client then sees a
connection error instead of the 413; past this much, the hive stops reading anyway."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,256}$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True for a loopback name or address (``localhost``, ``127.0.0.0/8``, ``::1``).

    The wildcard addresses (``0.0.0.0``, ``::``, ``""``) are *not* loopback: they listen on
    every interface.
    """
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def constant_time_equal(given: str, expected: str) -> bool:
    """Compare a presented secret with the real one without leaking where they differ."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@dataclass(frozen=True)
class OperatorToken:
    """The operator token and where it lives."""

    value: str = field(repr=False)
    """The secret itself (kept out of ``repr`` so it never lands in a log line by accident)."""
    path: Path
    """The 0600 file that holds it."""
    created: bool
    """True when this start generated it: the caller shows it to the operator, once."""


def load_or_create_token(path: Path | str) -> OperatorToken:
    """Return the operator token stored in ``path``, generating it on first use.

    A new token is written to a temporary file created 0600 with ``O_EXCL``, fsynced, then
    hard-linked into place: the link is atomic and fails if another process won the race, so a
    crash never leaves a half-written token file and two starters agree on one token. An
    existing file must be a regular file owned by us, not readable by group or others, holding
    a well-formed token; otherwise :class:`ConfigError` says how to fix it.
    """
    path = Path(path)
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"{value}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            # Another hive created it between our read and our link: use theirs.
            return _read_token(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise HiveError(
            f"web: cannot create the operator token file '{path}': {exc.strerror or exc}; "
            "make its directory writable by the hive or set [web] token_file"
        ) from exc
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    log.info("web: generated a new operator token in %s", path)
    return OperatorToken(value=value, path=path, created=True)


def _read_token(path: Path) -> OperatorToken:
    """Read and validate an existing token file; FileNotFoundError if there is none."""
    fix = f"delete '{path}' to generate a new token, or set [web] token_file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(str(path)) from exc
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"web: operator token file '{path}' is a symlink; {fix}") from exc
        raise HiveError(
            f"web: cannot read the operator token file '{path}': {exc.strerror or exc}; {fix}"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"web: operator token file '{path}' is not a regular file; {fix}")
        if info.st_uid != os.geteuid():
            raise ConfigError(
                f"web: operator token file '{path}' belongs to uid {info.st_uid}, not to the "
                f"hive's uid {os.geteuid()}; {fix}"
            )
        if info.st_mode & 0o077:
            raise ConfigError(
                f"web: operator token file '{path}' has mode {stat.S_IMODE(info.st_mode):04o}: "
                f"others may read it; run `chmod 600 '{path}'` if it was never exposed, or "
                "delete it to generate a new token"
            )
        text = os.read(fd, 4096).decode("ascii", errors="replace").strip()
    finally:
        os.close(fd)
    if not _TOKEN_RE.match(text):
        raise ConfigError(f"web: operator token file '{path}' does not hold a valid token; {fix}")
    return OperatorToken(value=text, path=path, created=False)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SecurityPolicy:
    """What the security middleware enforces on one server."""

    token: str | None = field(default=None, repr=False)
    """The operator token every protected request must carry; None on a loopback-only bind."""
    allowed_hosts: frozenset[str] | None = None
    """Extra ``Host`` names accepted besides loopback ones. None: loopback names only when
    there is no token, any host when there is one."""
    max_body: int = DEFAULT_MAX_BODY
    """Largest request body in bytes; larger is a 413."""
    drain_limit: int = DEFAULT_DRAIN_LIMIT
    """Bytes of an oversized body read and discarded before the 413 (see the constant)."""
    protected_prefixes: tuple[str, ...] = ("/api/",)
    """HTTP paths that need the token (websocket upgrades always do)."""
    login_path: str = "/login"
    """``GET <login_path>?token=…`` sets the token cookie and redirects to ``/``."""
    cookie_name: str = COOKIE_NAME

    def __post_init__(self) -> None:
        if self.token is not None and not _TOKEN_RE.match(self.token):
            raise ConfigError(
                "web: the operator token must be 32-256 URL-safe characters; delete the token "
                "file to generate a new one"
            )
        if self.max_body < 0 or self.drain_limit < self.max_body:
            raise ConfigError(
                f"web: max_body={self.max_body} / drain_limit={self.drain_limit} are invalid; "
                "need 0 <= [web] max_body_bytes <= drain limit"
            )


def policy_for_bind(
    host: str, token_file: Path | str, *, require_token: bool = False, **options: Any
) -> tuple[SecurityPolicy, OperatorToken | None]:
    """The policy for a server bound to ``host``: token-protected unless it is loopback.

    Returns the policy and the token (None for loopback without ``require_token``); when
    ``token.created`` is true the caller shows ``token.value`` to the operator once.
    ``options`` are the other :class:`SecurityPolicy` fields.
    """
    base = SecurityPolicy(**options)
    if is_loopback(host) and not require_token:
        return base, None
    token = load_or_create_token(token_file)
    return replace(base, token=token.value), token


@dataclass(frozen=True)
class Rejection:
    """A refused request: the status and the JSON error to answer with."""

    status: int
    error: str
    headers: tuple[tuple[str, str], ...] = ()


def parse_cookies(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` header leniently (a malformed pair is skipped, never an error)."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            cookies.setdefault(name, value.strip().strip('"'))
    return cookies


def request_origin(scheme: str, host_header: str) -> tuple[str, str, int] | None:
    """The (scheme, host, port) a request was addressed to, from its scheme and Host header."""
    web_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return _origin_tuple(f"{web_scheme}://{host_header}")


def _origin_tuple(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname.lower().rstrip("."), port


def _host_name(host_header: str) -> str | None:
    origin = _origin_tuple(f"http://{host_header}")
    return None if origin is None else origin[1]


def check_request(
    policy: SecurityPolicy,
    *,
    kind: Literal["http", "websocket"],
    method: str,
    path: str,
    scheme: str,
    headers: Mapping[str, str],
) -> Rejection | None:
    """Decide whether a request may reach the app; None means yes.

    ``headers`` are the request's headers by lower-case name. Checks, in order: the Host
    (DNS rebinding), the Origin (cross-site writes and websockets), the token.
    """
    host_header = headers.get("host")
    if host_header is not None:
        name = _host_name(host_header)
        allowed = policy.allowed_hosts
        if name is None:
            return Rejection(400, f"malformed Host header {host_header[:100]!r}")
        host_ok = (
            (policy.token is not None and allowed is None)
            or is_loopback(name)
            or (allowed is not None and name in allowed)
        )
        if not host_ok:
            return Rejection(
                421,
                f"this hive does not serve host {name!r}; open it as http://127.0.0.1:<port>/ "
                "or add the name to [web] allowed_hosts",
            )

    if kind == "websocket" or method.upper() in UNSAFE_METHODS:
        origin = headers.get("origin")
        if origin is not None:
            own = request_origin(scheme, host_header or "")
            if own is None or _origin_tuple(origin) != own:
                what = "websocket" if kind == "websocket" else f"{method.upper()} request"
                return Rejection(
                    403,
                    f"cross-origin {what} refused: Origin {origin[:100]!r} is not this "
                    "server's own origin; use the hive's own page (a browser sends Origin, "
                    "other clients may omit it)",
                )

    if policy.token is not None and (
        kind == "websocket" or any(path.startswith(p) for p in policy.protected_prefixes)
    ):
        given = _presented_token(headers, policy.cookie_name)
        if given is None:
            return Rejection(
                401,
                "the operator token is required: send 'Authorization: Bearer <token>' or open "
                f"{policy.login_path}?token=<token> once in this browser (the token is in the "
                "hive's token file)",
                (("www-authenticate", 'Bearer realm="hive"'),),
            )
        if not constant_time_equal(given, policy.token):
            return Rejection(
                401,
                "wrong operator token; copy it again from the hive's token file",
                (("www-authenticate", 'Bearer realm="hive", error="invalid_token"'),),
            )
    return None


def _presented_token(headers: Mapping[str, str], cookie_name: str) -> str | None:
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    cookie = parse_cookies(headers.get("cookie", "")).get(cookie_name)
    return cookie or None
