"""Process groups on Linux: who is still in one, signalling them, and how a child ended.

``decode_exit`` is pure; ``live_members`` reads ``/proc``; ``signal_groups`` sends signals;
``read_line`` and ``wait_until`` wait with deadlines.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import IO

__all__ = [
    "decode_exit",
    "live_members",
    "log_tail",
    "read_line",
    "signal_groups",
    "wait_until",
]

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
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
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
