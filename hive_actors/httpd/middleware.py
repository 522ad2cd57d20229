"""The security middleware: pure ASGI, wraps any app (Starlette or not) on every server.

Per request it applies :func:`.security.check_request` (Host, Origin, token), serves the
``/login`` page when a token is configured (:func:`_login_page`), bounds the request body (413, chunked bodies
included), and adds defensive headers to every HTTP response. Lifespan scopes pass through.

Body handling: a request that announces a body (``Content-Length`` or ``Transfer-Encoding``) is
read here, up to ``max_body`` bytes, before the app runs; the app then receives it in one
message. A larger body is read on and discarded up to ``drain_limit`` and answered with 413 and
``Connection: close`` — reading it first lets an ordinary client, which sends its whole body
before it reads, see the 413 instead of a reset connection. A body that arrives slower than
``body_timeout`` is a 408.
"""

from __future__ import annotations

import asyncio
import html
import logging
from urllib.parse import parse_qs

from .asgi import ASGIApp, Message, Receive, Scope, Send, header_map, send_json_error
from .edge import safe
from .security import SecurityPolicy, check_request, constant_time_equal

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DEFAULT_BODY_TIMEOUT",
    "SECURITY_HEADERS",
    "SecurityMiddleware",
]

log = logging.getLogger(__name__)

DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a client gets to send a whole request body."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""The pages load scripts, styles and data from the hive itself only: an injected
``<script>`` or inline handler does not run, and no other site may frame them. Inline *styles*
are allowed: the terminal (xterm.js) and the charts (uPlot) set them at run time."""

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    # No other site may frame the pages (clickjacking an Approve button).
    (b"x-frame-options", b"DENY"),
    # Never leak a URL (e.g. /login?code=…) to another site through Referer. Not
    # "no-referrer": under it a browser's form post carries "Origin: null", which the Origin
    # check must refuse (the login form would never work).
    (b"referrer-policy", b"same-origin"),
)


class _BodyOutcome:
    """What reading a request body produced."""

    __slots__ = ("body", "disconnected", "status")

    def __init__(self, body: bytes = b"", status: int = 0, disconnected: bool = False) -> None:
        self.body = body
        self.status = status  # 0: fine; else the 4xx to answer
        self.disconnected = disconnected


class SecurityMiddleware:
    """ASGI middleware enforcing a :class:`SecurityPolicy` in front of ``app``."""

    def __init__(
        self, app: ASGIApp, policy: SecurityPolicy, body_timeout: float = DEFAULT_BODY_TIMEOUT
    ) -> None:
        self.app = app
        self.policy = policy
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        headers = header_map(scope)
        rejection = check_request(
            self.policy,
            kind=kind,
            method=scope.get("method", "GET"),
            path=scope.get("path", "/"),
            scheme=scope.get("scheme", "http"),
            headers=headers,
        )
        if rejection is not None:
            log.info(
                "web: refused %s %s from %s: %d %s",
                safe(scope.get("method", "WEBSOCKET")),
                safe(scope.get("path")),
                safe(scope.get("client")),
                rejection.status,
                safe(rejection.error),
            )
            await send_json_error(scope, send, rejection.status, rejection.error, rejection.headers)
            return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return

        login = self.policy.token is not None and scope.get("path") == self.policy.login_path
        if "content-length" not in headers and "transfer-encoding" not in headers:
            if login:
                await self._login(scope, send, b"")
            else:
                await self.app(scope, receive, send)
            return
        outcome = await self._read_body(headers, receive)
        if outcome.disconnected:
            return
        if outcome.status:
            await self._refuse_body(scope, send, outcome.status)
            return
        if login:
            await self._login(scope, send, outcome.body)
            return
        await self.app(scope, _replay(outcome.body, receive), send)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> _BodyOutcome:
        limit, drain = self.policy.max_body, self.policy.drain_limit
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return _BodyOutcome(status=400)
            if int(declared) > drain:
                # Too big to be worth reading: answer now (the client may see a reset).
                return _BodyOutcome(status=413)
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return _BodyOutcome(disconnected=True)
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total <= limit:
                        chunks.append(chunk)
                    if total > drain or not message.get("more_body", False):
                        break
        except TimeoutError:
            return _BodyOutcome(status=408)
        if total > limit:
            return _BodyOutcome(status=413)
        return _BodyOutcome(body=b"".join(chunks))

    async def _refuse_body(self, scope: Scope, send: Send, status: int) -> None:
        limit = self.policy.max_body
        error = {
            400: "malformed Content-Length header; send the body's length in bytes",
            408: f"the request body did not arrive within {self.body_timeout:g}s; retry",
            413: f"request body larger than the {limit}-byte limit; send less, or raise "
            "[web] max_body_bytes",
        }[status]
        log.info(
            "web: refused %s %s: %d", safe(scope.get("method")), safe(scope.get("path")), status
        )
        # Connection: close — whatever is left of the body is never read.
        await send_json_error(scope, send, status, error, (("connection", "close"),))

    async def _login(self, scope: Scope, send: Send, body: bytes) -> None:
        """``/login``: the form (GET), the pasted token (POST), a one-time ``?code=`` or the
        ``?token=`` itself (GET). A good one sets the cookie and goes to the page; a bad one is
        a 401 with the form again and what was wrong."""
        method = scope.get("method")
        token = self.policy.token
        assert token is not None  # only called with a token configured
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if method == "POST":
            form = parse_qs(body.decode("utf-8", errors="replace"))
            given = (form.get("token") or [""])[0].strip()
            if given and constant_time_equal(given, token):
                await self._logged_in(scope, send, "token form")
            else:
                await _login_page(scope, send, 401, "That is not this hive's operator token.")
            return
        if method not in ("GET", "HEAD"):
            await send_json_error(
                scope, send, 405, "use GET /login (the form) or POST /login with token=<token>",
                (("allow", "GET, HEAD, POST"),),
            )
            return
        if "code" in query:
            if self.policy.logins.redeem((query.get("code") or [""])[0]):
                await self._logged_in(scope, send, "one-time code")
            else:
                await _login_page(
                    scope, send, 401,
                    "This login link was already used, or is from an earlier start of the hive "
                    "(each link opens one session).",
                )
            return
        if "token" in query:
            given = (query.get("token") or [""])[0]
            if given and constant_time_equal(given, token):
                await self._logged_in(scope, send, "token URL")
            else:
                await _login_page(scope, send, 401, "That is not this hive's operator token.")
            return
        await _login_page(scope, send, 200, "")

    async def _logged_in(self, scope: Scope, send: Send, how: str) -> None:
        token = self.policy.token
        assert token is not None
        log.info("web: operator logged in from %s (%s)", safe(scope.get("client")), how)
        cookie = f"{self.policy.cookie_name}={token}; Path=/; HttpOnly; SameSite=Strict"
        if scope.get("scheme") == "https":
            cookie += "; Secure"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", b"/"),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hive: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><link rel="stylesheet" href="/hive.css"></head>
<body><main class="login">
<h1>Log in to the hive</h1>
{problem}
<p>Open the login link the hive printed when it started, or paste the operator token here.
On the hive's machine, <code>hive token --state-dir &lt;its state dir&gt;</code> prints it.</p>
<form method="post" action="{action}">
<label for="token">operator token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required
 autofocus>
<button type="submit">log in</button>
</form>
</main></body></html>
"""


async def _login_page(scope: Scope, send: Send, status: int, problem: str) -> None:
    """The login form (HTML), with ``problem`` said first when there is one."""
    text = _LOGIN_PAGE.format(
        problem=f'<p class="error" role="alert">{html.escape(problem)}</p>' if problem else "",
        action=html.escape(str(scope.get("path") or "/login")),
    )
    body = text.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"cache-control", b"no-store"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body",
                "body": b"" if scope.get("method") == "HEAD" else body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the already-read body once, then the real channel (disconnect)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", ())}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            if extra:
                message = dict(message)
                message["headers"] = list(message.get("headers", ())) + extra
        await send(message)

    return wrapped
