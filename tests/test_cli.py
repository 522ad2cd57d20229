"""The hive command, in-process."""

from __future__ import annotations

import io
import threading

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


def test_demo_check_starts_the_tree_prints_its_shape_and_stops() -> None:
    code, out, err = run("demo", "--check")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "hive  [supervisor rest_for_one, at most 3 restarts in 60 s]"
    assert lines[1].startswith("    agents  [supervisor one_for_one")


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


def test_demo_runs_until_stopped() -> None:
    stop = threading.Event()
    out, err = Watched("press Ctrl-C"), io.StringIO()
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(main(["demo"], out=out, err=err, stop=stop)))
    t.start()
    assert out.seen.wait(TIMEOUT)
    assert t.is_alive()  # running until told to stop
    stop.set()
    t.join(TIMEOUT)
    assert codes == [0] and "hive  [supervisor" in out.getvalue()
