"""`hive demo` always plays: a rerun in the same state dir continues or restarts the scripted
exchange, `--fresh` starts over (and deletes only a demo's state), the banner says only what
is true, the state goes to the per-user data dir by default, and every path is absolute."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hive_actors.cli import main
from hive_actors.config import HiveConfig, load_config
from hive_actors.demo import DEMO_MARKER, kickoff_message
from hive_actors.hive import Hive
from tests.support.timeout import TIMEOUT

REPO = Path(__file__).resolve().parents[1]
PLAYED = "demo check: the scripted exchange played out"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def kickoffs(state: Path) -> int:
    import sqlite3

    db = sqlite3.connect(f"file:{state / 'hive.db'}?mode=ro", uri=True)
    try:
        count: int = db.execute(
            "SELECT count(*) FROM messages WHERE sender = 'operator' AND recipient = 'boss' "
            "AND body = ?", (kickoff_message(),)).fetchone()[0]
        return count
    finally:
        db.close()


def test_a_relative_state_dir_is_absolute_for_the_hive_and_its_agents(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, state_dir="rel").state_dir == str(tmp_path / "rel")
    toml = tmp_path / "hive.toml"
    toml.write_text('[hive]\nstate_dir = "rel"\n[store]\npath = "db/hive.db"\n')
    assert load_config(toml).state_dir == str(tmp_path / "rel")
    hive = Hive(HiveConfig(state_dir="rel", store=load_config(toml).store))
    assert hive.state_dir == tmp_path / "rel"
    assert hive.config.db_path == tmp_path / "db" / "hive.db"
    paths = hive.agent_paths("boss")
    for path in (paths.claude, paths.home, paths.tmp, paths.state):
        assert path.is_absolute() and str(path).startswith(str(tmp_path / "rel"))


def test_a_relative_state_dir_nests_nothing_in_the_agents_dirs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hive_actors", "demo", "--check", "--port", "0",
         "--state-dir", "rel"], cwd=tmp_path, check=False, capture_output=True, text=True,
        timeout=TIMEOUT * 18, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert PLAYED in done.stdout
    assert f"state dir      {tmp_path / 'rel'}  " in done.stdout
    state = tmp_path / "rel"
    nested = [p for p in state.rglob("rel") if p.is_dir()]
    assert nested == [], "a relative state dir was resolved from an agent's directory"
    # The CLI ran with absolute HOME and CLAUDE_CONFIG_DIR: its caches name the agent's
    # absolute working directory.
    cache = state / "agents" / "boss" / "home" / ".cache" / "claude-cli-nodejs"
    if cache.is_dir():
        assert all(p.name.startswith("-") for p in cache.iterdir())


def test_check_twice_in_one_dir_plays_both_times(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code, out, err = run("demo", "--check", "--port", "0", "--state-dir", str(state))
    assert code == 0, err + out
    assert PLAYED in out
    assert "The scripted exchange has started: the manager will ask" in out
    assert "The manager has asked" not in out  # not before it has
    assert (state / DEMO_MARKER).is_file()
    code, out, err = run("demo", "--check", "--port", "0", "--state-dir", str(state))
    assert code == 0, err + out
    assert PLAYED in out
    assert "The scripted exchange played out in an earlier run; it has started again" in out
    assert kickoffs(state) == 2


def test_an_interrupted_demo_plays_on_its_rerun(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = subprocess.Popen(
        [sys.executable, "-m", "hive_actors", "--log-level", "warning", "demo", "--port", "0",
         "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
        start_new_session=True)
    try:
        assert first.stdout is not None
        for line in first.stdout:  # the kickoff is sent before the banner
            if line.startswith("The scripted exchange"):
                break
        # Killed at once: the exchange (seconds of agents' turns) has not played out.
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait(TIMEOUT)
        if first.stdout is not None:
            first.stdout.close()
    assert kickoffs(state) == 1
    code, out, err = run("demo", "--check", "--port", "0", "--state-dir", str(state))
    assert code == 0, err + out
    assert PLAYED in out
    assert ("goes on" in out) == (kickoffs(state) == 1), out


def test_fresh_starts_over_and_deletes_only_a_demo(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run("demo", "--check", "--port", "0", "--state-dir", str(state))[0] == 0
    code, out, err = run("demo", "--check", "--fresh", "--port", "0", "--state-dir", str(state))
    assert code == 0, err + out
    assert "The scripted exchange has started" in out and PLAYED in out
    assert kickoffs(state) == 1
    # Not a demo's state dir: refused, nothing deleted.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, out, err = run("demo", "--fresh", "--port", "0", "--state-dir", str(other))
    assert code == 2 and out == ""
    assert err.splitlines() == [
        (f"Error: hive demo --fresh deletes only a demo's state dir, and '{other}' is not one "
         "(it holds files a demo does not make (notes.txt)); pass the demo's --state-dir, or "
         "delete it yourself")]
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_the_default_state_dir_is_the_users_data_dir(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run("demo", "--check", "--port", "0")
    assert code == 0, err + out
    state = data / "hive_actors" / "demo"
    assert f"state dir      {state}  (a rerun continues here" in out
    assert (state / "hive.db").is_file() and (state / DEMO_MARKER).is_file()
    assert list(work.iterdir()) == [], "the demo wrote into the current directory"
