"""The security policy: loopback detection, the operator token file, the pure request checks."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Literal

import pytest

from hive_actors.errors import ConfigError
from hive_actors.httpd.security import (
    OneTimeCodes,
    OperatorToken,
    Rejection,
    SecurityPolicy,
    check_request,
    is_loopback,
    load_or_create_token,
    parse_cookies,
    policy_for_bind,
)
from tests.support.timeout import TIMEOUT

TOKEN = "t" * 43


@pytest.mark.parametrize(
    "host,expected",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("app.localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("hive.example.org", False),
        ("127.0.0.1.evil.com", False),
    ],
)
def test_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


# -- the token file ---------------------------------------------------------------------------


def test_token_is_created_0600_shown_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "operator-token"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        first = load_or_create_token(path)
    finally:
        os.umask(old_umask)
    assert first.created
    assert len(first.value) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create_token(path)
    assert again == OperatorToken(value=first.value, path=path, created=False)
    assert first.value not in repr(first)  # never in a log line by accident
    assert sorted(p.name for p in path.parent.iterdir()) == ["operator-token"]


def test_concurrent_first_starts_agree_on_one_token(tmp_path: Path) -> None:
    path = tmp_path / "operator-token"
    barrier = threading.Barrier(4, timeout=TIMEOUT)
    results: list[OperatorToken] = []
    lock = threading.Lock()

    def start() -> None:
        barrier.wait()
        token = load_or_create_token(path)
        with lock:
            results.append(token)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(results) == 4
    assert len({r.value for r in results}) == 1
    assert sum(r.created for r in results) == 1


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "operator-token"
    load_or_create_token(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_or_create_token(path)
    assert str(path) in str(info.value)


def test_garbled_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "operator-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short\n")
    os.close(fd)
    with pytest.raises(ConfigError, match="does not hold a valid token"):
        load_or_create_token(path)


def test_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    load_or_create_token(real)
    link = tmp_path / "operator-token"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        load_or_create_token(link)


def test_policy_for_bind(tmp_path: Path) -> None:
    # Every bind needs the operator token (another local process is not the operator); a
    # loopback bind keeps the Host check (DNS rebinding), another bind accepts any name.
    path = tmp_path / "operator-token"
    policy, token = policy_for_bind("127.0.0.1", path)
    assert token.created and policy.token == token.value and path.exists()
    assert policy.loopback_hosts_only
    assert check(policy, host="evil.example", authorization=f"Bearer {token.value}")
    policy, again = policy_for_bind("0.0.0.0", path, max_body=10)
    assert not again.created and again.value == token.value
    assert policy.token == token.value and policy.max_body == 10
    assert not policy.loopback_hosts_only
    assert check(policy, host="hive.lan", authorization=f"Bearer {token.value}") is None


def test_one_time_codes_are_spent_on_first_use() -> None:
    codes = OneTimeCodes()
    first, second = codes.mint(), codes.mint()
    assert first != second
    assert not codes.redeem("") and not codes.redeem("x" * 32)
    assert codes.redeem(second)
    assert not codes.redeem(second)  # spent
    assert codes.redeem(first) and not codes.redeem(first)


def test_policy_validates() -> None:
    with pytest.raises(ConfigError):
        SecurityPolicy(token="short")
    with pytest.raises(ConfigError):
        SecurityPolicy(max_body=10, drain_limit=5)


# -- the pure checks --------------------------------------------------------------------------


def check(
    policy: SecurityPolicy, method: str = "GET", path: str = "/api/x", **headers: str
) -> Rejection | None:
    """check_request for an HTTP method, or "WS" for a websocket upgrade."""
    kind: Literal["http", "websocket"] = "websocket" if method == "WS" else "http"
    return check_request(
        policy,
        kind=kind,
        method="GET" if kind == "websocket" else method,
        path=path,
        scheme="ws" if kind == "websocket" else "http",
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def test_loopback_policy_refuses_dns_rebinding() -> None:
    open_policy = SecurityPolicy()
    assert check(open_policy, host="127.0.0.1:8000") is None
    assert check(open_policy, host="localhost:8000") is None
    assert check(open_policy, host="[::1]:8000") is None
    assert check(open_policy) is None  # HTTP/1.0 without Host: not a browser
    rebound = check(open_policy, host="evil.example:8000")
    assert rebound is not None and rebound.status == 421
    assert "allowed_hosts" in rebound.error
    named = SecurityPolicy(allowed_hosts=frozenset({"hive.lan"}))
    assert check(named, host="hive.lan:8000") is None
    malformed = check(open_policy, host="a b:c")
    assert malformed is not None and malformed.status == 400


def test_origin_rules() -> None:
    policy = SecurityPolicy()
    own = {"host": "127.0.0.1:8000"}
    # Writes: same origin or no Origin pass; any other origin is refused.
    assert check(policy, "POST", **own, origin="http://127.0.0.1:8000") is None
    assert check(policy, "POST", **own) is None
    for bad in ("http://evil.example", "http://127.0.0.1:8101", "https://127.0.0.1:8000", "null"):
        refused = check(policy, "POST", **own, origin=bad)
        assert refused is not None and refused.status == 403, bad
        assert "cross-origin POST" in refused.error
    refused = check(policy, "DELETE", **own, origin="http://evil.example")
    assert refused is not None and refused.status == 403
    # Reads are protected by the browser (no CORS headers), so a foreign Origin is fine.
    assert check(policy, "GET", **own, origin="http://evil.example") is None
    # Websockets are not covered by CORS: checked like writes.
    assert check(policy, "WS", path="/ws", **own, origin="http://127.0.0.1:8000") is None
    refused = check(policy, "WS", path="/ws", **own, origin="http://evil.example")
    assert refused is not None and refused.status == 403 and "websocket" in refused.error
    # Default ports compare equal to explicit ones.
    assert check(policy, "POST", host="localhost", origin="http://localhost:80") is None


def test_token_rules() -> None:
    policy = SecurityPolicy(token=TOKEN)
    host = {"host": "hive.example.org:8000"}  # any host once a token guards the door
    missing = check(policy, "GET", "/api/state", **host)
    assert missing is not None and missing.status == 401
    assert "/login" in missing.error and "hive token" in missing.error
    assert ("www-authenticate", 'Bearer realm="hive"') in missing.headers
    wrong = check(policy, "GET", "/api/state", **host, authorization="Bearer " + "u" * 43)
    assert wrong is not None and wrong.status == 401 and "wrong" in wrong.error
    assert check(policy, "GET", "/api/state", **host, authorization=f"Bearer {TOKEN}") is None
    assert check(policy, "GET", "/api/state", **host, authorization=f"bearer {TOKEN}") is None
    assert check(policy, "GET", "/api/state", **host, cookie=f"a=b; hive_token={TOKEN}") is None
    # Static pages are not protected; websockets always are.
    assert check(policy, "GET", "/index.html", **host) is None
    ws = check(policy, "WS", "/ws", **host)
    assert ws is not None and ws.status == 401
    assert check(policy, "WS", "/ws", **host, cookie=f"hive_token={TOKEN}") is None


def test_cookie_parsing_is_lenient() -> None:
    assert parse_cookies('a=1; b="2"; junk; =x; a=3') == {"a": "1", "b": "2"}
    assert parse_cookies("") == {}
