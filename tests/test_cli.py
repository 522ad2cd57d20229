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
from pathlib import Path

import pytest

from hive_actors import __version__
from hive_actors.cli import main
from tests.conftest import TIMEOUT


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


def test_tree_starts_the_core_prints_its_shape_and_stops(tmp_path: Path) -> None:
    code, out, err = run("tree", "--state-dir", str(tmp_path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "hive  [supervisor rest_for_one, at most 3 restarts in 60 s]"
    assert [line.split()[0] for line in lines[1:5]] == ["store", "bus", "approvals", "agents"]
    assert lines[4].startswith("    agents  [supervisor one_for_one")
    assert (tmp_path / "hive.db").exists()


def test_demo_check_plays_the_scripted_hive_and_stops(tmp_path: Path) -> None:
    code, out, err = run("demo", "--check", "--port", "0", "--state-dir", str(tmp_path))
    assert code == 0, err + out
    assert [line.split()[0] for line in out.splitlines()[1:10]] == [
        "store", "bus", "approvals", "stats", "agents", "alice", "bob", "boss", "gateway"]
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
        second = subprocess.run(
            [sys.executable, "-m", "hive_actors", "tree", "--state-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=TIMEOUT * 3, stdin=subprocess.DEVNULL)
    finally:
        stop.set()
        first.join(TIMEOUT)
    assert second.returncode == 1 and codes == [0]
    err = second.stderr.splitlines()[-1]
    assert err.startswith("Error: hive stopped: child 'store' of hive failed to start"), err
    assert "another hive holds it" in err


class Watched(io.StringIO):
    """An output stream that tells the test when a line it waits for was written."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen = threading.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.needle in self.getvalue():
            self.seen.set()
        return n


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
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True,
                          timeout=TIMEOUT * 18, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo check: the scripted exchange played out" in done.stdout


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
        out = Watched("dashboard http://")
        codes: list[int] = []
        t = threading.Thread(target=lambda: codes.append(
            main(["serve", "--config", str(cfg)], out=out, err=io.StringIO(), stop=stop)))
        t.start()
        try:
            assert out.seen.wait(TIMEOUT * 3)
            base = out.getvalue().split("dashboard ")[1].split("/ ")[0]
            state = httpx.get(f"{base}/api/state", timeout=TIMEOUT).json()
            assert state["agents"] == []
            # /metrics on the dashboard's port and on its own ([web] metrics_port).
            for url in (f"{base}/metrics", f"http://127.0.0.1:{metrics_port}/metrics"):
                scrape = httpx.get(url, timeout=TIMEOUT)
                assert scrape.status_code == 200 and "hive_build_info" in scrape.text
        finally:
            stop.set()
            t.join(TIMEOUT * 3)
        assert codes == [0]
