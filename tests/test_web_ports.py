"""The per-agent web port rule: the pure decision, then the three cases on real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hive_actors.errors import ConfigError, HiveError
from hive_actors.httpd.ports import (
    PORT_FILE,
    PersistHashed,
    ProbeForward,
    UsePortFile,
    agent_web_port,
    decide_port,
    is_port_free,
    parse_port_file,
    port_hash,
    probe_order,
)
from tests.support.timeout import TIMEOUT
from tests.support.web import free_port_pair


def listener(port: int) -> socket.socket:
    """A live listening socket on 127.0.0.1:port (what a running container holds)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


# -- pure -------------------------------------------------------------------------------------


def test_hash_is_in_range_and_spreads_names() -> None:
    ports = [port_hash(f"agent-{i}", 8100, 1000) for i in range(200)]
    assert all(8100 <= p < 9100 for p in ports)
    assert len(set(ports)) > 150  # a constant or a tiny range would collapse this


def test_hash_is_stable_across_processes_with_different_hash_seeds() -> None:
    names = ["manager", "alice", "bob-the-builder", "ünïcode"]
    here = [port_hash(n) for n in names]
    code = f"from hive_actors.httpd.ports import port_hash;print([port_hash(n) for n in {names!r}])"
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 3,
            check=True,
        )
        assert out.stdout.strip() == str(here)


def test_probe_order_visits_every_port_once_wrapping() -> None:
    assert probe_order(8103, 8100, 5) == [8103, 8104, 8100, 8101, 8102]
    assert sorted(probe_order(8100, 8100, 50)) == list(range(8100, 8150))


@pytest.mark.parametrize("text,port", [("8123", 8123), ("8123\n", 8123), (" 65535 ", 65535)])
def test_port_file_parses(text: str, port: int) -> None:
    assert parse_port_file(text, "/s/web-port") == port


@pytest.mark.parametrize("text", ["", "abc", "80 80", "-1", "0", "65536", "٣", "8.1"])
def test_corrupt_port_file_is_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_port_file(text, "/state/alice/web-port")
    message = str(info.value)
    assert "/state/alice/web-port" in message
    assert "delete" in message


def test_decision_table() -> None:
    hashed = port_hash("alice", 8100, 100)
    # The port file wins over everything, busy or not.
    assert decide_port("alice", "f", "8555", True, 8100, 100) == UsePortFile(8555)
    assert decide_port("alice", "f", "8555", False, 8100, 100) == UsePortFile(8555)
    # Legacy: the hashed port, no probe.
    assert decide_port("alice", "f", None, True, 8100, 100) == PersistHashed(hashed)
    # Fresh: probe from the hashed port, skipping reserved ones.
    fresh = decide_port("alice", "f", None, False, 8100, 100, reserved={hashed})
    assert isinstance(fresh, ProbeForward)
    assert fresh.candidates[0] == (hashed - 8100 + 1) % 100 + 8100
    assert hashed not in fresh.candidates and len(fresh.candidates) == 99


def test_range_must_fit() -> None:
    with pytest.raises(ConfigError, match="agent_port_base"):
        port_hash("a", 65000, 1000)
    with pytest.raises(ConfigError):
        port_hash("a", 8100, 0)


# -- the three cases on real sockets ----------------------------------------------------------


def test_port_file_is_used_even_when_its_port_is_busy(tmp_path: Path) -> None:
    base = free_port_pair()
    (tmp_path / PORT_FILE).write_text(f"{base}\n")
    with listener(base):  # the agent's own container holds it: no probing away from it
        assert agent_web_port("alice", tmp_path, applied_config_exists=False) == base
    assert (tmp_path / PORT_FILE).read_text() == f"{base}\n"


def test_corrupt_port_file_on_disk_names_the_file(tmp_path: Path) -> None:
    (tmp_path / PORT_FILE).write_text("eighty-one hundred")
    with pytest.raises(ConfigError, match=str(tmp_path / PORT_FILE)):
        agent_web_port("alice", tmp_path, applied_config_exists=True)


def test_legacy_agent_keeps_the_hashed_port_without_probing(tmp_path: Path) -> None:
    base = free_port_pair()
    hashed = port_hash("alice", base, 2)
    # Its container is already bound to the hashed port: a probe would move the agent away.
    with listener(hashed):
        port = agent_web_port("alice", tmp_path, applied_config_exists=True, base=base, span=2)
    assert port == hashed
    assert (tmp_path / PORT_FILE).read_text() == f"{hashed}\n"
    assert [p.name for p in tmp_path.iterdir()] == [PORT_FILE]  # no temp file left


def test_fresh_spawn_probes_forward_then_remembers(tmp_path: Path) -> None:
    base = free_port_pair()
    hashed = port_hash("bob", base, 2)
    other = base + 1 if hashed == base else base
    with listener(hashed):
        port = agent_web_port("bob", tmp_path, applied_config_exists=False, base=base, span=2)
        assert port == other
        assert is_port_free(other)
    assert (tmp_path / PORT_FILE).read_text() == f"{other}\n"
    # Next start: the port file decides, even though the hashed port is free again now.
    assert agent_web_port("bob", tmp_path, applied_config_exists=True, base=base, span=2) == other


def test_fresh_spawn_on_a_free_hashed_port_takes_it(tmp_path: Path) -> None:
    base = free_port_pair()
    hashed = port_hash("carol", base, 2)
    assert agent_web_port("carol", tmp_path, False, base=base, span=2) == hashed


def test_fresh_spawn_skips_ports_reserved_by_stopped_agents(tmp_path: Path) -> None:
    base = free_port_pair()
    hashed = port_hash("dave", base, 2)
    other = base + 1 if hashed == base else base
    port = agent_web_port("dave", tmp_path, False, base=base, span=2, reserved={hashed})
    assert port == other


def test_no_free_port_in_the_range_is_a_clear_error(tmp_path: Path) -> None:
    base = free_port_pair()
    with listener(base), pytest.raises(HiveError, match="no free port") as info:
        agent_web_port("erin", tmp_path, False, base=base, span=1)
    assert "agent_port_span" in str(info.value)
    assert not (tmp_path / PORT_FILE).exists()


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(HiveError, match="cannot write agent port file"):
        agent_web_port("frank", missing, applied_config_exists=True)


def test_bind_test_sees_a_live_listener() -> None:
    base = free_port_pair()
    assert is_port_free(base)
    with listener(base):
        assert not is_port_free(base)
    assert is_port_free(base)
