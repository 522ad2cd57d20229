"""`hive demo` and `hive serve` check what they need first: each bad input is one line
(``Error: …`` naming the flag or key of the command run), exit status 2, nothing written."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.cli import main
from hive_actors.config import HiveConfig
from hive_actors.errors import ConfigError
from hive_actors.preflight import PreflightError, check_claude, demo_knobs, serve_knobs
from hive_actors.store.schema import APPLICATION_ID, SCHEMA_VERSION
from tests.support.timeout import TIMEOUT

REPO = Path(__file__).resolve().parents[1]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def hive(*argv: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**(env if env is not None else os.environ), "PYTHONPATH": str(REPO)}
    return subprocess.run([*prefix, sys.executable, "-m", "hive_actors", *argv], check=False,
                          capture_output=True, text=True, timeout=TIMEOUT * 6, env=env,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def snapshot(root: Path) -> list[tuple[str, int]]:
    """Every path under ``root`` with its size (what a refused command must leave as it was)."""
    if not root.exists():
        return []
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                  for p in root.rglob("*"))


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in out + err
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def serve_toml(tmp_path: Path, state: Path, port: int = 0) -> Path:
    toml = tmp_path / "hive.toml"
    toml.write_text(f'[hive]\nstate_dir = "{state}"\n[web]\nport = {port}\n')
    return toml


def test_a_busy_port_names_the_flag_of_the_demo_and_the_key_of_serve(
        tmp_path: Path, busy_port: int) -> None:
    state = tmp_path / "state"
    line = one_error_line(*run("demo", "--check", "--port", str(busy_port),
                               "--state-dir", str(state)))
    assert line == (f"Error: port {busy_port} on 127.0.0.1 is in use by another process "
                    f"(`ss -ltnp 'sport = :{busy_port}'` shows which): stop it, or pass another "
                    "--port (0 picks a free one)")
    toml = serve_toml(tmp_path, state, busy_port)
    line = one_error_line(*run("serve", "--config", str(toml)))
    assert line.endswith(f"stop it, or set [web] port in {toml}"), line
    assert "--port" not in line
    assert not state.exists(), "a refused command wrote the state dir"


def test_a_privileged_port_as_non_root_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    line = one_error_line(*run("demo", "--port", "80", "--state-dir", str(state)))
    assert line == ("Error: port 80 is privileged (below 1024) and this user is not root: pick "
                    "a port >= 1024: pass another --port (0 picks a free one)")
    assert not state.exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the command as nobody")
def test_port_80_as_nobody(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    state = tmp_path / "state"
    done = hive("demo", "--port", "80", "--state-dir", str(state), cwd=tmp_path,
                prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    if "ModuleNotFoundError" in done.stderr or "Permission denied" in done.stderr:
        pytest.skip(f"nobody cannot run this checkout's Python: {done.stderr[-200:]}")
    line = one_error_line(done.returncode, done.stdout, done.stderr)
    assert "port 80 is privileged (below 1024)" in line and "--port" in line
    assert not state.exists()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "hive.db")
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    before = snapshot(state)
    line = one_error_line(*run("demo", "--check", "--port", "0", "--state-dir", str(state)))
    assert line == (f"Error: the state dir '{state}' was written by a newer hive_actors (schema "
                    f"{SCHEMA_VERSION + 7}, this one knows {SCHEMA_VERSION}): upgrade "
                    "hive_actors, or pass another --state-dir")
    toml = serve_toml(tmp_path, state)
    line = one_error_line(*run("serve", "--config", str(toml)))
    assert line.endswith(f"upgrade hive_actors, or set [hive] state_dir in {toml}")
    assert snapshot(state) == before


def test_two_hives_on_one_state_dir(tmp_path: Path) -> None:
    from tests.support.hive import running_hive

    with running_hive(tmp_path, {}) as (daemon, _root, _model, _events):
        state = daemon.hive.state_dir
        before = snapshot(state)
        toml = serve_toml(tmp_path, state)
        done = hive("serve", "--config", str(toml))
        line = one_error_line(done.returncode, done.stdout, done.stderr)
        assert line == (f"Error: another hive (pid {os.getpid()}) is running on the state dir "
                        f"'{state}': stop it, or set [hive] state_dir in {toml}")
        done = hive("demo", "--check", "--port", "0", "--state-dir", str(state))
        line = one_error_line(done.returncode, done.stdout, done.stderr)
        assert line.endswith("stop it, or pass another --state-dir")
        # --fresh never deletes a running hive's files.
        done = hive("demo", "--fresh", "--port", "0", "--state-dir", str(state))
        assert "another hive" in one_error_line(done.returncode, done.stdout, done.stderr)
        assert snapshot(state) == before


def test_without_git_the_demo_and_serve_name_it(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    state = tmp_path / "state"
    env = {**os.environ, "PATH": str(empty)}
    for argv in (("demo", "--check", "--port", "0", "--state-dir", str(state)),
                 ("serve", "--config", str(serve_toml(tmp_path, state)))):
        done = hive(*argv, env=env)
        line = one_error_line(done.returncode, done.stdout, done.stderr)
        assert line.startswith("Error: git is not installed (not on PATH)"), line
        assert "install git" in line
    assert not state.exists()


def test_a_state_dir_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    line = one_error_line(*run("demo", "--port", "0", "--state-dir", str(tmp_path / "file" / "s")))
    assert line == (f"Error: state dir '{tmp_path / 'file' / 's'}': '{tmp_path / 'file'}' is not "
                    "a directory; pass another --state-dir")


def test_a_missing_claude_names_the_fix_of_the_command() -> None:
    def missing() -> object:
        raise ConfigError("claude CLI not found at '/x/claude' (wanted version 1.2.3): pip "
                          "install claude-agent-sdk==0.2 (it bundles claude 1.2.3) or set "
                          "[model] claude_path to a claude 1.2.3 binary")

    with pytest.raises(PreflightError) as demo:
        check_claude(HiveConfig(), demo_knobs(), missing)
    assert "[model] claude_path" not in str(demo.value)
    assert str(demo.value).startswith("claude CLI not found at '/x/claude'")
    assert "pip install -e ." in str(demo.value)
    with pytest.raises(PreflightError) as serve:
        check_claude(HiveConfig(), serve_knobs("/etc/hive.toml"), missing)
    assert "[model] claude_path" in str(serve.value)


def _in_a_mount_namespace(tmp_path: Path, mount: str, argv: str) -> subprocess.CompletedProcess[str]:
    script = f"{mount} && exec {shlex.quote(sys.executable)} -m hive_actors {argv}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], check=False,
                          capture_output=True, text=True, timeout=TIMEOUT * 6,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)


needs_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare for a private mount namespace")


@needs_mounts
@pytest.mark.parametrize("existing", [True, False])
def test_a_read_only_state_dir_is_refused(tmp_path: Path, existing: bool) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    state = ro / "state" if not existing else ro
    q = shlex.quote(str(ro))
    done = _in_a_mount_namespace(
        tmp_path, f"mount --bind -o ro {q} {q}",
        f"demo --check --port 0 --state-dir {shlex.quote(str(state))}")
    line = one_error_line(done.returncode, done.stdout, done.stderr)
    where = "state dir" if existing else f"state dir '{state}' cannot be made:"
    assert line == (f"Error: {where} '{ro}' is on a read-only file system: pass another "
                    "--state-dir"), line
    assert snapshot(ro) == []


@needs_mounts
def test_a_full_disk_is_refused(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    q = shlex.quote(str(small))
    toml = serve_toml(tmp_path, small / "state")
    done = _in_a_mount_namespace(
        tmp_path, f"mount -t tmpfs -o size=64k tmpfs {q} && "
        f"(head -c 1000000 /dev/zero > {q}/fill 2>/dev/null || true)",
        f"serve --config {shlex.quote(str(toml))}")
    line = one_error_line(done.returncode, done.stdout, done.stderr)
    assert line.startswith(f"Error: state dir '{small / 'state'}' cannot be made: '{small}' is "
                           "on a full disk"), line
    assert line.endswith(f"set [hive] state_dir in {toml}")


def test_a_port_taken_after_the_preflight_is_one_line_without_tracebacks(tmp_path: Path) -> None:
    """The race the preflight cannot close (a port taken between the check and the bind):
    the log says it once per line, without a traceback, and the last line names --port."""
    script = (
        "import socket, sys\n"
        "import hive_actors.preflight as preflight\n"
        "preflight.check_port = lambda *args, **kwargs: None  # lose the race on purpose\n"
        "sock = socket.socket(); sock.bind(('127.0.0.1', 0)); sock.listen()\n"
        "from hive_actors.cli import main\n"
        "sys.exit(main(['--log-level', 'warning', 'demo', '--check', '--port',\n"
        f"               str(sock.getsockname()[1]), '--state-dir', {str(tmp_path / 's')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True,
                          text=True, timeout=TIMEOUT * 18, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("Error: hive stopped: child 'gateway' of hive failed to start"), last
    assert "pass another --port (0 picks a free one)" in last and "[web] port" not in last
