"""Listening sockets on real ports: TIME_WAIT reuse, a live holder, a holder that goes away."""

from __future__ import annotations

import errno
import socket

import pytest

from hive_actors.errors import ConfigError, HiveError
from hive_actors.httpd.binds import backoff_delays, bind_listener
from tests.support.timeout import TIMEOUT


class Sleeps:
    """An injected sleep: records the delays and runs a hook instead of waiting."""

    def __init__(self, hook: object = None) -> None:
        self.delays: list[float] = []
        self.hook = hook

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if callable(self.hook):
            self.hook(len(self.delays))


def plain_bind_error(port: int) -> int | None:
    """errno of a bind WITHOUT SO_REUSEADDR (the control), None if it succeeds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno
        return None


def test_backoff_doubles_and_caps() -> None:
    assert backoff_delays(1, 0.05, 1.0) == []
    assert backoff_delays(6, 0.05, 1.0) == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert backoff_delays(5, 0.5, 1.0) == [0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError):
        backoff_delays(0, 0.1, 1.0)


def test_port_zero_reports_the_real_port() -> None:
    with bind_listener("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        assert port > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            pass  # it is listening


def test_time_wait_leftovers_do_not_block_a_rebind() -> None:
    server = bind_listener("127.0.0.1", 0)
    port = server.getsockname()[1]
    server.setblocking(True)
    client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    conn, _ = server.accept()
    conn.close()  # the server side closes first: its end goes to TIME_WAIT
    client.settimeout(TIMEOUT)
    assert client.recv(1) == b""  # the FIN arrived
    client.close()
    server.close()
    # The control: a bind without SO_REUSEADDR is refused while the leftover lingers...
    assert plain_bind_error(port) == errno.EADDRINUSE
    # ...and ours goes through on the first attempt.
    sleeps = Sleeps()
    with bind_listener("127.0.0.1", port, sleep=sleeps) as again:
        assert again.getsockname()[1] == port
    assert sleeps.delays == []


def test_a_live_holder_is_retried_then_named_in_the_error() -> None:
    holder = bind_listener("127.0.0.1", 0)
    port = holder.getsockname()[1]
    sleeps = Sleeps()
    try:
        with pytest.raises(HiveError) as info:
            bind_listener(
                "127.0.0.1",
                port,
                attempts=4,
                first_delay=0.01,
                max_delay=0.02,
                sleep=sleeps,
                fix="set [web] port or edit the agent port file /state/alice/web-port",
            )
    finally:
        holder.close()
    assert sleeps.delays == [0.01, 0.02, 0.02]
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert f"port {port} is held by another live process" in message
    assert "4 attempts" in message
    assert "/state/alice/web-port" in message
    assert isinstance(info.value.__cause__, OSError)


def test_a_holder_that_exits_during_the_retries_frees_the_port() -> None:
    holder = bind_listener("127.0.0.1", 0)
    port = holder.getsockname()[1]

    def on_sleep(count: int) -> None:
        if count == 2:
            holder.close()  # the old hive finally exited

    sleeps = Sleeps(on_sleep)
    with bind_listener("127.0.0.1", port, sleep=sleeps, first_delay=0.01) as sock:
        assert sock.getsockname()[1] == port
    assert len(sleeps.delays) == 2


def test_an_address_not_on_this_host_fails_at_once() -> None:
    sleeps = Sleeps()
    with pytest.raises(HiveError, match="not one of this host's") as info:
        bind_listener("192.0.2.1", 0, sleep=sleeps)  # TEST-NET-1: never assigned
    assert "192.0.2.1:0" in str(info.value)
    assert sleeps.delays == []


def test_unresolvable_host_and_bad_port_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot resolve"):
        bind_listener("no-such-host.invalid", 0)
    with pytest.raises(ConfigError, match="out of 0-65535"):
        bind_listener("127.0.0.1", 70000)


def test_ipv6_loopback_when_available() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        sock = bind_listener("::1", 0)
    except HiveError as exc:
        pytest.skip(f"no ::1 on this host: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockname()[0] == "::1"
