"""Process groups on Linux: who is still in one, signalling them, and how a child ended.

``decode_exit`` is pure; ``live_members`` and ``ignored_signals`` read ``/proc``;
``signal_groups`` sends signals; ``read_line`` and ``wait_until`` wait with deadlines;
``default_signals_argv`` runs a program with signals this process ignores back to default.

An ignored signal stays ignored across ``fork`` and ``exec`` (a caught one is reset to the
default on ``exec``). A hive started with SIGINT ignored — in the background of a script, under
some CI runners — would hand that to every program it starts, and the orderly stop (SIGINT
first, see :mod:`.process`) would reach programs deaf to it. So the backend starts programs with
the stop signals at their default (:func:`stop_signals_ignored`, :func:`default_signals_argv`),
and a stop that finds every process left ignoring SIGINT goes on to SIGTERM at once.
"""

from __future__ import annotations

import math
import os
import select
import shutil
import signal
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "STOP_SIGNALS",
    "decode_exit",
    "default_signals_argv",
    "ignored_signals",
    "ignores",
    "live_members",
    "log_tail",
    "read_line",
    "signal_groups",
    "stop_signals_ignored",
    "wait_until",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals an orderly stop relies on (SIGKILL cannot be ignored)."""

# Run by the backend's Python in place of a program: reset the signals named in argv[1] to
# their default, then exec argv[2] (resolved already) with the program's argv[3:].
_RESET_SHIM = (
    "import os, signal, sys\n"
    "for s in sys.argv[1].split(','):\n"
    "    signal.signal(int(s), signal.SIG_DFL)\n"
    "try:\n"
    "    os.execv(sys.argv[2], sys.argv[3:])\n"
    "except OSError as exc:\n"
    "    print(f'cannot run {sys.argv[2]!r}: {exc}', file=sys.stderr)\n"
    "    sys.exit(127)\n"
)

# How often wait_until looks again (a stop polls /proc while the group empties).
_POLL_S = 0.02

_CLD_EXITED = getattr(os, "CLD_EXITED", 1)
_CLD_KILLED = getattr(os, "CLD_KILLED", 2)
_CLD_DUMPED = getattr(os, "CLD_DUMPED", 3)


def decode_exit(si_code: int, si_status: int) -> tuple[str, int | None, int | None]:
    """``waitid``'s (code, status) as systemd words: ``(result, exit_status, signal)``.

    >>> decode_exit(1, 0)
    ('success', 0, None)
    >>> decode_exit(2, 9)
    ('signal', None, 9)
    """
    if si_code == _CLD_EXITED:
        return ("success" if si_status == 0 else "exit-code"), si_status, None
    if si_code == _CLD_DUMPED:
        return "core-dump", None, si_status
    if si_code == _CLD_KILLED:
        return "signal", None, si_status
    raise ValueError(f"waitid code {si_code} is not an exit (CLD_EXITED/KILLED/DUMPED)")


def live_members(pgids: Collection[int], proc: str = "/proc") -> set[int]:
    """The pids of the processes in any of ``pgids`` that have not exited (zombies excluded:
    they are gone but not yet reaped by their parent)."""
    if not pgids:
        return set()
    found: set[int] = set()
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue  # it ended while we looked
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) < 3:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp in pgids and state not in (b"Z", b"X"):
            found.add(int(entry))
    return found


def ignored_signals(pid: int | str = "self", proc: str = "/proc") -> frozenset[int] | None:
    """The signals process ``pid`` ignores (its ``SigIgn`` mask); None if it is gone or its
    status cannot be read."""
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigIgn:"):
                    mask = int(line.split(b":", 1)[1].strip(), 16)
                    return frozenset(n for n in range(1, mask.bit_length() + 1)
                                     if mask >> (n - 1) & 1)
    except (OSError, ValueError):
        return None
    return None


def ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether ``pid`` ignores ``sig`` (a process gone meanwhile counts as ignoring: nothing
    is left to wait for)."""
    ignored = ignored_signals(pid)
    return ignored is None or int(sig) in ignored


def stop_signals_ignored(proc: str = "/proc") -> tuple[signal.Signals, ...]:
    """Of :data:`STOP_SIGNALS`, those this process ignores (and its children would inherit)."""
    ignored = ignored_signals("self", proc)
    if ignored is None:  # no /proc: ask the signal module (it knows the inherited SIG_IGN)
        return tuple(s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_IGN)
    return tuple(s for s in STOP_SIGNALS if int(s) in ignored)


def default_signals_argv(
    argv: Sequence[str],
    signals: Collection[int],
    *,
    python: str,
    path: str | None,
    cwd: str,
) -> list[str]:
    """An argv that runs ``argv`` with ``signals`` at their default disposition.

    A Python shim (``python -I -S -c …``) resets them and execs the program in place (same
    pid, same process group). The program is resolved here, as ``exec`` would resolve it
    (``path``: the child's PATH; a name with a slash: relative to ``cwd``): FileNotFoundError
    if it cannot be run, as ``subprocess.Popen`` would raise without the shim.
    """
    program = argv[0]
    resolved: str | None
    if os.sep in program:
        candidate = os.path.join(cwd, program)
        runnable = os.path.isfile(candidate) and os.access(candidate, os.X_OK)
        resolved = candidate if runnable else None
    else:
        resolved = shutil.which(program, path=path)
    if resolved is None:
        raise FileNotFoundError(2, "No such file or directory (or not executable)", program)
    names = ",".join(str(int(s)) for s in sorted(signals))
    return [python, "-I", "-S", "-c", _RESET_SHIM, names, resolved, *argv]


def signal_groups(pgids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to every group in ``pgids``; a group already empty is skipped."""
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a pipe within ``timeout`` seconds (b"" on EOF or timeout)."""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # poll, not select: select cannot watch a descriptor above 1023 (FD_SETSIZE), and a
        # hive with hundreds of agents holds more descriptors than that.
        if not poller.poll(max(1, math.ceil(remaining * 1000))):
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return predicate()
        time.sleep(min(_POLL_S, remaining))


def log_tail(path: Path, limit: int = 2000) -> str:
    """The last ``limit`` bytes of a log file as text (empty if unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
