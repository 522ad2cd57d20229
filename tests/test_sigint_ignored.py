"""A hive (or a test run) started with SIGINT ignored still stops in order.

An ignored disposition survives ``fork`` and ``exec``: a program started in the background of a
script (``cmd &`` ignores SIGINT and SIGQUIT), under ``nohup`` (SIGHUP) or by a CI runner that
ignores SIGINT hands that on to everything it starts. The orderly stops rely on SIGINT — the
process backend's stop of a container, the harness's interrupt of a turn (claude treats SIGINT
as "interrupt") — so every program the hive starts must get it back at its default.

* The harness's own spawn (a CLI on this host) gives the CLI SIGINT at its default: a CLI that
  stops on SIGINT only at its default disposition (as a Python program does) ends on the
  interrupt, not on the SIGTERM after the grace.
* The tests that exercise stops — the process backend's container stop and its keeper, the
  CLI's interrupt and deadline, the daemon's clean stop, a terminal's hang-up, the crash
  route — pass in a ``pytest`` run started with SIGINT (and SIGQUIT, SIGHUP) ignored. That inner
  run never includes this file (no recursion).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from hive_actors.harness import TurnRequest, run_cli
from hive_actors.harness.events import Init, TurnEvent

ROOT = Path(__file__).resolve().parents[1]
_INNER_ENV = "HIVE_SIGINT_IGNORED_INNER"
"""Set in the inner run: this file's suite test does not start another run."""

# The tests of the stops (none of them this file): about a minute on an idle machine.
STOP_TESTS = (
    "tests/test_containers_process.py",
    "tests/test_clean_stop.py",
    "tests/test_claude_cli.py",
    "tests/test_crash_route.py",
    "tests/test_terminals_recycled_pid.py",
)
_IGNORED = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
"""What a background job of a script under nohup starts with ignored."""

# A "claude CLI" that stops in order on SIGINT only at its default disposition, as a Python
# program does (KeyboardInterrupt); an inherited SIG_IGN leaves it deaf until SIGTERM.
_FAKE_CLI = """#!{python}
import json, signal, sys
if sys.argv[1:2] == ["--version"]:
    print("2.1.331 (Claude Code)")
    sys.exit(0)
print(json.dumps({{"type": "system", "subtype": "init", "session_id": "s", "model": "m"}}),
      flush=True)
signal.pause()  # until a signal ends it
"""


def test_a_local_cli_is_interrupted_by_sigint_when_the_hive_ignores_it(
    tmp_path: Path, sigint_ignored: None
) -> None:
    cli = tmp_path / "claude"
    cli.write_text(_FAKE_CLI.format(python=sys.executable))
    cli.chmod(0o755)
    env = {k: str(tmp_path / k.lower())
           for k in ("CLAUDE_CONFIG_DIR", "HOME", "TMPDIR", "XDG_RUNTIME_DIR")}
    req = TurnRequest(
        prompt="hello", model="claude-sonnet-test", session_id=str(uuid.uuid4()),
        base_url="http://127.0.0.1:9", env=env, api_key="sk-loopback", cwd=str(tmp_path),
        deadline_s=60.0,
    )
    cancel = threading.Event()

    def on_event(event: TurnEvent) -> None:
        if isinstance(event, Init):  # the CLI is up: its dispositions are what it runs with
            cancel.set()

    t0 = time.monotonic()
    end = run_cli(req, on_event, cancel, claude=cli, sigint_grace_s=4.0, sigterm_grace_s=4.0)
    took = time.monotonic() - t0
    assert end.outcome == "cancelled", end
    assert end.error is not None and end.error.endswith("stopped with SIGINT"), end.error
    assert end.exit_code in (-signal.SIGINT, 128 + signal.SIGINT), end
    assert took < 4.0, f"the interrupt took {took:.1f} s: SIGINT did not reach the CLI"


@pytest.mark.slow  # runs the stop tests again: a minute or two
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get(_INNER_ENV) == "1", reason="inside the SIGINT-ignored run")
def test_the_stop_tests_pass_in_a_run_started_with_sigint_ignored(tmp_path: Path) -> None:
    assert not any(Path(t).name == Path(__file__).name for t in STOP_TESTS)  # no recursion
    env = {**os.environ, _INNER_ENV: "1", "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    # The inner run's Python starts with SIGINT ignored (and then leaves it so: Python installs
    # its KeyboardInterrupt handler only over a SIGINT at its default), as under a CI runner.
    starter = (
        "import os, signal, sys\n"
        f"for s in {[int(s) for s in _IGNORED]!r}:\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    argv = [sys.executable, "-c", starter, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-o", "faulthandler_timeout=600", *STOP_TESTS]
    log = tmp_path / "inner.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=840)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    text = log.read_text(errors="replace")
    assert code == 0, f"the stop tests with SIGINT ignored ended {code}:\n{text[-12000:]}"
    assert " passed" in text and " failed" not in text, text[-4000:]
