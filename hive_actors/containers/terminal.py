"""Spawning a program on a new PTY as its session leader, with the PTY as controlling terminal.

``posix_spawn`` rather than ``fork``: the hive is multi-threaded, and ``posix_spawn`` neither
runs Python in the child nor leaves a ``Popen`` behind to warn when it is collected. The keeper's
``tty`` mode makes the PTY the controlling terminal, changes directory and execs the program.
The terminal's signals start at their default even when the hive ignores them (an ignored
disposition survives ``exec``): Ctrl-C, a hang-up and the backend's stop reach the shell.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hive_actors.errors import HiveError

__all__ = ["keeper_argv", "keeper_env", "spawn_on_pty"]

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
_TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
"""Reset to their default in a terminal's process, whatever the hive does with them."""


def keeper_argv(python: str, mode: str, *args: str) -> list[str]:
    """``python -m hive_actors.containers.keeper MODE ARGS…``."""
    return [python, "-m", "hive_actors.containers.keeper", mode, *args]


def keeper_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env`` plus what the keeper needs to import ``hive_actors`` even when the package is not
    installed; returns the environment and the names the keeper should drop before an exec."""
    out = dict(env)
    if "PYTHONPATH" in out:
        return out, []
    out["PYTHONPATH"] = _PACKAGE_PARENT
    return out, ["PYTHONPATH"]


def spawn_on_pty(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | os.PathLike[str],
    *,
    python: str = sys.executable,
) -> tuple[int, int]:
    """Start ``argv`` on a new PTY in its own session; return ``(pid, master_fd)``.

    The caller owns both: it closes ``master_fd`` and reaps ``pid`` with ``os.waitpid``.
    """
    full_env, unset = keeper_env(env)
    args = ["--cwd", os.fspath(cwd)]
    for name in unset:
        args += ["--unset", name]
    spawn_argv = keeper_argv(python, "tty", *args, "--", *argv)
    master, slave = os.openpty()
    try:
        pid = os.posix_spawn(
            python,
            spawn_argv,
            full_env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, slave, 0),
                (os.POSIX_SPAWN_DUP2, slave, 1),
                (os.POSIX_SPAWN_DUP2, slave, 2),
            ],
            setsid=True,
            setsigdef=_TERMINAL_SIGNALS,
        )
    except OSError as exc:
        os.close(master)
        raise HiveError(
            f"cannot start a terminal ({' '.join(argv)}) with '{python}': {exc}; check the "
            "hive's Python and the shell"
        ) from exc
    finally:
        os.close(slave)
    return pid, master
