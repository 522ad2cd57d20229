"""The hive lock: one hive process per sqlite file.

sqlite's own locks serialise writers but happily let two daemons share a file, each
releasing the other's in-flight messages at start-up. So the store also takes an exclusive
``flock`` on ``<db>.lock`` and writes its pid there for the error message of the loser.

flock belongs to an open file description, so a second ``flock`` from the same process on a
fresh descriptor would fail against ourselves. The hive opens one connection per actor thread,
so the lock is held once per process and reference-counted across that process's stores.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from hive_actors.errors import StoreError

__all__ = ["HiveLock", "lock_path_for"]

log = logging.getLogger(__name__)


@dataclass
class _Held:
    fd: int
    refs: int


# Guarded by _GUARD: the stores of one process open and close from several actor threads.
_GUARD = threading.Lock()
_HELD: dict[str, _Held] = {}


def lock_path_for(db_path: Path) -> Path:
    """Return the lock file that guards ``db_path``: ``<db>.lock`` next to it."""
    return db_path.with_name(db_path.name + ".lock")


class HiveLock:
    """A reference to this process's exclusive lock on one database file."""

    def __init__(self, key: str, *, first: bool) -> None:
        self._key = key
        self._first = first
        self._released = False

    @property
    def first(self) -> bool:
        """Whether this reference took the lock (the process's first store on the file)."""
        return self._first

    @classmethod
    def acquire(cls, db_path: Path) -> HiveLock:
        """Lock ``db_path`` for this process, or raise :class:`StoreError` naming the holder."""
        lock_path = lock_path_for(db_path)
        key = os.path.realpath(lock_path)
        with _GUARD:
            held = _HELD.get(key)
            if held is not None:
                held.refs += 1
                return cls(key, first=False)
            fd = _open_lock_file(db_path, lock_path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StoreError(
                        f"store: cannot open '{db_path}': cannot lock '{lock_path}': "
                        f"{exc.strerror} — set [store] path to a local file system"
                    ) from exc
                raise StoreError(
                    f"store: cannot open '{db_path}': another hive holds it (pid {holder}) — "
                    "stop it or set [store] path"
                ) from exc
            # The pid is only for the loser's error message; a crash before it is written
            # leaves the previous holder's pid, which the kernel lock makes harmless.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = _Held(fd=fd, refs=1)
            log.debug("store: locked %s for pid %d", lock_path, os.getpid())
            return cls(key, first=True)

    def release(self) -> None:
        """Drop this reference; the last one of the process unlocks the file. Idempotent."""
        with _GUARD:
            if self._released:
                return
            self._released = True
            held = _HELD[self._key]
            held.refs -= 1
            if held.refs == 0:
                del _HELD[self._key]
                # Closing the descriptor drops the flock; the file stays, since unlinking a
                # lock file races with a process that has it open and is about to lock it.
                os.close(held.fd)
                log.debug("store: unlocked %s", self._key)


def _open_lock_file(db_path: Path, lock_path: Path) -> int:
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(
            f"store: cannot open '{db_path}': cannot create its lock file '{lock_path}': "
            f"{exc.strerror} — create the directory, make it writable, or set [store] path"
        ) from exc


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
