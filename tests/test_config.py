"""hive.toml is validated when it is read, with the file, the key and the fix in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_actors.config import HiveConfig, load_config
from hive_actors.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hive.toml"
    path.write_text(text)
    return path


def test_defaults_are_a_local_loopback_hive() -> None:
    cfg = load_config(None)
    assert cfg == HiveConfig()
    assert (cfg.web.host, cfg.web.port, cfg.backend) == ("127.0.0.1", 8000, "process")
    assert cfg.db_path == Path("./hive-state/hive.db")


def test_a_full_file_is_read(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[hive]
state_dir = "/var/lib/hive"
backend = "nixos"
[store]
busy_timeout_ms = 100
[web]
port = 0
[supervision]
agent_restarts = 2
agent_period = 30
agent_max_consecutive_failures = 4
"""))
    assert cfg.backend == "nixos" and cfg.store.busy_timeout_ms == 100 and cfg.web.port == 0
    assert cfg.supervision.agent_max_consecutive_failures == 4
    assert cfg.supervision.agent_period == 30.0 and cfg.db_path == Path("/var/lib/hive/hive.db")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[web]\nport = 70000", "[web] port = 70000 is out of range: use 0..65535"),
        ("[web]\nport = 'x'", "[web] port = 'x' must be a whole number"),
        ("[web]\nprot = 1", "[web] has no key 'prot'; known keys:"),
        ("[wbe]\nport = 1", "unknown section [wbe]; known sections: hive, store"),
        ("[hive]\nbackend = 'docker'", "[hive] backend = 'docker' is not a backend: use one of"),
        ("[store]\nbusy_timeout_ms = 0", "[store] busy_timeout_ms = 0 must be greater than 0"),
        ("[supervision]\nagent_max_consecutive_failures = 0",
         "[supervision] agent_max_consecutive_failures = 0 must be >= 1"),
        ("[supervision]\nagent_max_consecutive_failures = 2.5",
         "[supervision] agent_max_consecutive_failures = 2.5 must be a whole number"),
        ("[web\n", "not valid TOML"),
        ("[web]\nallowed_hosts = 'https://hive.lan/'",
         "[web] allowed_hosts: 'https://hive.lan/' is not a host name"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def test_allowed_hosts_reach_the_dashboards_policy(tmp_path: Path) -> None:
    from hive_actors.daemon import Daemon
    from hive_actors.httpd.security import check_request

    cfg = load_config(write(tmp_path, f'[hive]\nstate_dir = "{tmp_path / "hive"}"\n'
                                      '[web]\nallowed_hosts = "Hive.Example.org, hive.lan"\n'))
    daemon = Daemon(cfg, api_key="unused")
    try:
        policy = daemon.policy
        assert policy.allowed_hosts == {"hive.example.org", "hive.lan"}
        auth = {"authorization": f"Bearer {daemon.token.value}"}

        def host(name: str) -> int | None:
            refused = check_request(policy, kind="http", method="GET", path="/api/state",
                                    scheme="http", headers={"host": name, **auth})
            return None if refused is None else refused.status

        assert host("hive.lan") is None and host("127.0.0.1:8000") is None
        assert host("evil.example") == 421  # a loopback bind keeps the Host check
    finally:
        daemon.close()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; pass --config with an existing hive.toml"):
        load_config(tmp_path / "nope.toml")
