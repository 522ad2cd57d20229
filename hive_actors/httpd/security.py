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

* **Every bind requires the operator token** (another local process, an agent included, is
  not the operator). Generated once with :func:`secrets.token_urlsafe`, stored in a file created
  with mode 0600 (``os.open`` with the mode; never a chmod afterwards, which would leave a
  window), reused on later starts (``hive token`` prints it). Every ``/api/`` call (reads
  too: messages and logs are the operator's) and every websocket upgrade (the live events, the
  terminal) must carry it, as ``Authorization: Bearer <token>`` or as the cookie a login sets
  (HttpOnly, SameSite=Strict: a cross-site request never carries it). A browser logs in once:
  with the one-time URL the hive prints at start (``/login?code=…``, :class:`OneTimeCodes`: the
  code opens one session, then is spent), or by pasting the token into ``/login``'s form.
  Comparison is constant-time. The static pages hold no data and stay open (they show how to
  log in when the API says 401); ``/metrics`` has its own rule (:mod:`hive_actors.stats`).
  On a loopback bind the ``Host`` check stays on; on another bind it is off unless
  ``allowed_hosts`` narrows it (the operator reaches the hive by whatever name it has). The
  ``Origin`` rule is the same everywhere: present → must match; absent → the token decides.

Everything here is pure except :func:`load_or_create_token` (the token file); the ASGI side
lives in :mod:`.middleware`.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from hive_actors.errors import ConfigError, HiveError

__all__ = [
    "COOKIE_NAME",
    "DEFAULT_DRAIN_LIMIT",
    "DEFAULT_MAX_BODY",
    "OneTimeCodes",
    "OperatorToken",
    "Rejection",
    "SecurityPolicy",
    "check_request",
    "constant_time_equal",
    "is_loopback",
    "load_or_create_token",
    "operator_token_file",
    "parse_cookies",
    "read_operator_token",
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


def operator_token_file(state_dir: Path | str, configured: str = "") -> Path:
    """Where a hive keeps its operator token: ``[web] token_file`` (relative to the state
    dir), by default ``<state dir>/operator-token``."""
    return Path(state_dir) / (Path(configured).expanduser() if configured else "operator-token")


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
            "make its directory writable by the hive or set [web] token_file to another path"
        ) from exc
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    log.info("web: generated a new operator token in %s", path)
    return OperatorToken(value=value, path=path, created=True)


def read_operator_token(path: Path | str) -> OperatorToken:
    """The token in ``path`` (checked as at start), never creating one: HiveError naming the
    file when there is none yet."""
    try:
        return _read_token(Path(path))
    except FileNotFoundError:
        raise HiveError(
            f"no operator token in '{path}': a hive creates it at its first start; start it "
            "('hive serve' or 'hive demo'), or pass the --state-dir (or --config) it runs with"
        ) from None


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


class OneTimeCodes:
    """One-time login codes: each opens one browser session once, then is spent.

    The hive mints one at start and prints ``/login?code=<code>``; a code in a URL may end up
    in a shell's scrollback or a browser's history, so it is worth nothing after its first use
    (the session it opened lives on in the cookie). Only digests are kept. Thread-safe: minted
    on the daemon's thread, redeemed on the web server's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: list[bytes] = []

    def mint(self) -> str:
        """A new code, valid once."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._digests.append(_digest(code))
        return code

    def redeem(self, code: str) -> bool:
        """Whether ``code`` is a valid unspent code; it is spent by this call."""
        if not code:
            return False
        wanted = _digest(code)
        with self._lock:
            found = -1
            for i, digest in enumerate(self._digests):  # no early exit: constant time
                if hmac.compare_digest(digest, wanted):
                    found = i
            if found < 0:
                return False
            del self._digests[found]
            return True


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class SecurityPolicy:
    """What the security middleware enforces on one server."""

    token: str | None = field(default=None, repr=False)
    """The operator token every protected request must carry (None: no token check, for a
    server with nothing of the operator's on it)."""
    allowed_hosts: frozenset[str] | None = None
    """Extra ``Host`` names accepted besides loopback ones. None: loopback names only, or any
    host when there is a token and ``loopback_hosts_only`` is off."""
    loopback_hosts_only: bool = False
    """Keep the ``Host`` check on although there is a token (a loopback bind: DNS rebinding)."""
    max_body: int = DEFAULT_MAX_BODY
    """Largest request body in bytes; larger is a 413."""
    drain_limit: int = DEFAULT_DRAIN_LIMIT
    """Bytes of an oversized body read and discarded before the 413 (see the constant)."""
    protected_prefixes: tuple[str, ...] = ("/api/",)
    """HTTP paths that need the token (websocket upgrades always do)."""
    login_path: str = "/login"
    """``/login``: its form takes the token; ``?code=`` a one-time code (``?token=`` the token
    itself, for a bookmark or a script); each sets the cookie and redirects to ``/``."""
    cookie_name: str = COOKIE_NAME
    logins: OneTimeCodes = field(default_factory=OneTimeCodes, compare=False, repr=False)
    """The one-time login codes this policy's servers accept."""

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
    host: str, token_file: Path | str, **options: Any
) -> tuple[SecurityPolicy, OperatorToken]:
    """The policy for a server bound to ``host``: the operator token on every bind, the
    ``Host`` check kept on a loopback one.

    Returns the policy and the token; when ``token.created`` is true the caller tells the
    operator where it is. ``options`` are the other :class:`SecurityPolicy` fields.
    """
    token = load_or_create_token(token_file)
    return SecurityPolicy(
        token=token.value, loopback_hosts_only=is_loopback(host), **options
    ), token


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
            (policy.token is not None and allowed is None and not policy.loopback_hosts_only)
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
                "the operator's credential is required: open the login URL the hive printed "
                f"at start, or {policy.login_path} and paste the token `hive token` prints; "
                "scripts send 'Authorization: Bearer <token>'",
                (("www-authenticate", 'Bearer realm="hive"'),),
            )
        if not constant_time_equal(given, policy.token):
            return Rejection(
                401,
                "wrong operator token (it changes when its file is deleted); log in again at "
                f"{policy.login_path} with the token `hive token` prints",
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
