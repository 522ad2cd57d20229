"""The hive command, in-process."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from hive_actors import __version__
from hive_actors.agent.supervisor import AgentsSupervisor
from hive_actors.cli import main
from hive_actors.config import HiveConfig, WatcherConfig
from hive_actors.daemon import Daemon
from hive_actors.supervisors.spec import ChildSpec
from hive_actors.tree import DescribeOnly, hive_tree
from tests.support.streams import Watched
from tests.support.timeout import TIMEOUT


def run(*argv: str, stop: threading.Event | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err, stop=stop)
    return code, out.getvalue(), err.getvalue()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hive_actors {__version__}"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "demo" in text and "tree" in text and "usage: hive" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "Error: argument COMMAND: invalid choice: 'bogus'"),
        (["demo", "--nope"], "Error: unrecognized arguments: --nope"),
        ([], "Error: no command given"),
        (["--log-level", "loud", "demo"], "Error: argument --log-level: invalid choice: 'loud'"),
    ],
)
def test_usage_errors_exit_2_with_a_hint(argv: list[str], message: str) -> None:
    code, out, err = run(*argv)
    assert code == 2 and out == ""
    assert err.startswith(message), err
    assert "Hint: run 'hive" in err


def _daemon_tree(config: HiveConfig, tmp_path: Path) -> tuple[str, list[ChildSpec]]:
    """What a daemon for ``config`` (its own files under ``tmp_path``) runs: its tree's
    description and the root's child specs."""
    daemon = Daemon(replace(config, state_dir=str(tmp_path / "daemon")))
    try:
        return daemon.tree_spec().describe("hive"), daemon.tree()[0]
    finally:
        daemon.close()


@pytest.mark.parametrize("dbus", [False, True])
def test_tree_prints_the_daemons_tree_and_touches_no_file(tmp_path: Path, dbus: bool) -> None:
    state = tmp_path / "state"
    argv = ["tree", "--state-dir", str(state)]
    config = HiveConfig(state_dir=str(state))
    if dbus:
        toml = tmp_path / "hive.toml"
        toml.write_text('[watcher]\nbus_address = "unix:path=/nonexistent"\n')
        argv += ["--config", str(toml)]
        config = replace(config, watcher=WatcherConfig(bus_address="unix:path=/nonexistent"))
    code, out, err = run(*argv)
    assert code == 0, err
    assert not state.exists(), "hive tree created the state dir"
    expected, children = _daemon_tree(config, tmp_path)
    assert out.rstrip("\n") == expected
    lines = out.splitlines()
    assert lines[0].startswith("hive  [supervisor rest_for_one, at most 3 restarts in 60 s")
    shown = [line.split()[0] for line in lines[1:] if not line.startswith(" " * 8)]
    assert shown == [child.id for child in children]
    # The crash watcher runs on every backend (fed the backend's exits); it reads D-Bus too
    # only when there is one to read.
    watcher = next(line for line in lines if line.split()[0] == "watcher")
    assert "CrashWatcherActor: container exits from the backend" in watcher
    assert ("container@*.service units on D-Bus (unix:path=/nonexistent)" in watcher) is dbus
    for child in children:
        line = next(line for line in lines if line.split()[0] == child.id)
        assert (f"({child.restart.value}, shutdown {child.shutdown:g} s, "  # type: ignore[union-attr]
                f"ready within {child.ready_timeout:g} s") in line
    agents = next(i for i, line in enumerate(lines) if line.split()[0] == "agents")
    assert "[supervisor one_for_one, at most 1000000 restarts in 60 s" in lines[agents]
    assert lines[agents + 1] == (
        "        <name> …  AgentActor, one per agent (dynamic), each in a process group on this "
        "host, led by a keeper process, at most "
        f"{AgentsSupervisor.concurrent_starts} starting at once; each given up past 5 restarts "
        "in 60 s or 10 failures in a row"
    )
    state.mkdir()
    assert run(*argv)[0] == 0
    assert list(state.iterdir()) == [], "hive tree created a file in the state dir"


def test_tree_works_beside_a_running_hive_on_the_same_state_dir(tmp_path: Path) -> None:
    from tests.support.hive import running_hive

    with running_hive(tmp_path, {}) as (daemon, _root, _model, _events):
        state = daemon.hive.state_dir
        assert (state / "hive.db").exists()
        before = sorted(p.name for p in state.iterdir())
        shown = subprocess.run(
            [sys.executable, "-m", "hive_actors", "tree", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=TIMEOUT * 3, check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.rstrip("\n") == hive_tree(daemon.config, DescribeOnly()).describe()
        assert shown.stdout.rstrip("\n") == daemon.tree_spec().describe()
        assert sorted(p.name for p in state.iterdir()) == before


def test_tree_from_an_empty_directory_creates_nothing(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "hive_actors", "tree"], cwd=tmp_path, check=False,
        capture_output=True, text=True, timeout=TIMEOUT * 3,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("hive  [supervisor rest_for_one")
    assert list(tmp_path.iterdir()) == [], "hive tree wrote where it was run"


def test_demo_check_plays_the_scripted_hive_and_stops(tmp_path: Path) -> None:
    code, out, err = run("demo", "--check", "--port", "0", "--state-dir", str(tmp_path))
    assert code == 0, err + out
    assert [line.split()[0] for line in out.splitlines()[1:11]] == [
        "store", "bus", "approvals", "stats", "agents", "alice", "bob", "boss", "watcher",
        "gateway"]
    for seen in ("alice -> bob", "bob -> alice", "spawn of carol requested",
                 "question to the operator"):
        assert f"  seen: {seen}" in out
    assert "dashboard      http://127.0.0.1:" in out


def test_a_second_hive_on_the_same_files_is_refused(tmp_path: Path) -> None:
    stop = threading.Event()
    out = Watched("press Ctrl-C")
    codes: list[int] = []
    first = threading.Thread(target=lambda: codes.append(
        main(["demo", "--port", "0", "--state-dir", str(tmp_path)], out=out, err=io.StringIO(),
             stop=stop)))
    first.start()
    try:
        assert out.seen.wait(TIMEOUT)
        # The lock is per process (one hive per process): the second hive is another process.
        toml = tmp_path / "second.toml"
        toml.write_text(f'[hive]\nstate_dir = "{tmp_path}"\n[web]\nport = 0\n')
        second = subprocess.run(
            [sys.executable, "-m", "hive_actors", "serve", "--config", str(toml)], check=False,
            capture_output=True, text=True, timeout=TIMEOUT * 3, stdin=subprocess.DEVNULL)
    finally:
        stop.set()
        first.join(TIMEOUT)
    # Refused by the preflight, before it starts or writes anything: one line, exit 2.
    assert second.returncode == 2 and codes == [0], second.stderr
    assert second.stderr.splitlines() == [
        (f"Error: another hive (pid {os.getpid()}) is running on the state dir '{tmp_path}': "
         f"stop it, or set [hive] state_dir in {toml}")]


def test_demo_runs_until_stopped(tmp_path: Path) -> None:
    stop = threading.Event()
    out, err = Watched("press Ctrl-C"), io.StringIO()
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(
        main(["demo", "--port", "0", "--state-dir", str(tmp_path)], out=out, err=err, stop=stop)))
    t.start()
    assert out.seen.wait(TIMEOUT)
    assert t.is_alive()  # running until told to stop
    stop.set()
    t.join(TIMEOUT)
    assert codes == [0] and "hive  [supervisor" in out.getvalue()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="needs root, unshare and ip to make a network namespace")
def test_demo_runs_in_a_network_namespace_with_only_loopback(tmp_path: Path) -> None:
    """Guard: the whole demo (real CLI included) works with no network but loopback."""
    script = (f"ip link set lo up && exec {shlex.quote(sys.executable)} -m hive_actors demo "
              f"--check --port 0 --state-dir {shlex.quote(str(tmp_path))}")
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], check=False,
                          capture_output=True, text=True,
                          timeout=TIMEOUT * 18, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo check: the scripted exchange played out" in done.stdout


def test_token_reads_the_file_and_never_creates_one(tmp_path: Path) -> None:
    code, out, err = run("token", "--state-dir", str(tmp_path / "none"))
    assert code == 1 and out == ""
    assert "no operator token in" in err and "hive serve" in err
    assert not (tmp_path / "none").exists()
    token_file = tmp_path / "hive" / "operator-token"
    token_file.parent.mkdir()
    token_file.write_text("A" * 43 + "\n")
    token_file.chmod(0o644)
    code, out, err = run("token", "--state-dir", str(tmp_path / "hive"))
    assert code == 1 and "others may read it" in err and "A" * 43 not in err + out
    token_file.chmod(0o600)
    assert run("token", "--state-dir", str(tmp_path / "hive")) == (0, "A" * 43 + "\n", "")


def test_serve_reports_a_bad_config_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "hive.toml"
    bad.write_text("[web]\nport = 99999\n")
    code, out, err = run("serve", "--config", str(bad))
    assert code == 1 and out == ""
    assert err.startswith(f"Error: {bad}: [web] port = 99999 is out of range")


def test_serve_runs_the_configured_hive_until_stopped(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from hive_actors.modelserver import ModelServer

    with ModelServer() as model:
        cfg = tmp_path / "hive.toml"
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
        probe.close()
        cfg.write_text(f'[hive]\nstate_dir = "{tmp_path / "state"}"\n'
                       f'[web]\nport = 0\nmetrics_port = {metrics_port}\n'
                       f'[model]\nbase_url = "{model.url}"\napi_key_env = "HIVE_TEST_KEY"\n')
        monkeypatch.setenv("HIVE_TEST_KEY", "loopback")
        stop = threading.Event()
        out = Watched("log in    http://")
        codes: list[int] = []
        t = threading.Thread(target=lambda: codes.append(
            main(["serve", "--config", str(cfg)], out=out, err=io.StringIO(), stop=stop)))
        t.start()
        try:
            assert out.seen.wait(TIMEOUT * 3)
            base = out.getvalue().split("dashboard ")[1].split("/ ")[0]
            login = out.getvalue().split("log in    ")[1].split()[0]
            assert login.startswith(f"{base}/login?code=")
            # Nobody but the operator reads the hive, not even on loopback.
            refused = httpx.get(f"{base}/api/state", timeout=TIMEOUT)
            assert refused.status_code == 401 and "hive token" in refused.json()["error"]
            # The printed link logs one browser in, once.
            with httpx.Client(timeout=TIMEOUT, trust_env=False) as browser:
                assert browser.get(login).status_code == 303
                assert browser.get(f"{base}/api/state").json()["agents"] == []
            with httpx.Client(timeout=TIMEOUT, trust_env=False) as other:
                assert other.get(login).status_code == 401
                assert other.get(f"{base}/api/state").status_code == 401
            # Scripts: `hive token` prints the credential, sent as a bearer token.
            code, printed, err = run("token", "--config", str(cfg))
            assert code == 0, err
            token = printed.strip()
            assert token == (tmp_path / "state" / "operator-token").read_text().strip()
            assert token not in out.getvalue()  # never printed by serve
            state = httpx.get(f"{base}/api/state", timeout=TIMEOUT,
                              headers={"authorization": f"Bearer {token}"}).json()
            assert state["agents"] == []
            # /metrics on the dashboard's port and on its own ([web] metrics_port).
            for url in (f"{base}/metrics", f"http://127.0.0.1:{metrics_port}/metrics"):
                scrape = httpx.get(url, timeout=TIMEOUT)
                assert scrape.status_code == 200 and "hive_build_info" in scrape.text
        finally:
            stop.set()
            t.join(TIMEOUT * 3)
        assert codes == [0]
