"""The connection layer: open, lock, pragmas, migrations, transactions, error translation.

Durability choices, because an acknowledged message must survive a kill -9 *and* a power cut:

* ``journal_mode=WAL`` — writers append to the log, readers (metrics, the UI) never block the
  bus, and a commit is one sequential append instead of a rewrite of the pages.
* ``synchronous=FULL`` — every commit fsyncs the WAL before it returns. With ``NORMAL`` a WAL
  commit survives a process crash but the last transactions can be lost on power failure; the
  bus acknowledges a send right after the commit, so it must be on disk by then. The cost (one
  fsync per commit) is paid once per batch: the bus actor group-commits its writes in one
  transaction (``Messages.enqueue_many``, claims, acks).
* a busy timeout — another connection's write lock is waited for, then reported as a
  :class:`StoreError` instead of hanging an actor forever.
* ``foreign_keys=ON`` — a message or question can only name a registered agent.
* an exclusive ``flock`` on ``<db>.lock`` (see :mod:`.lock`) — two hives never share a file.

A :class:`Database` is used by one thread at a time (one actor thread per connection); other
threads open their own. Every apsw error is translated here into a :class:`StoreError` that
names the file, says what happened and how to fix it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw

from hive_actors.errors import StoreError

from .lock import HiveLock
from .schema import APPLICATION_ID, MIGRATIONS, Migration, apply_migrations

__all__ = ["DEFAULT_BUSY_TIMEOUT_MS", "ROWS_PER_INSERT", "Database", "store_error"]

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another connection's lock ([store] busy_timeout_ms)."""

Params = Sequence[Any]

ROWS_PER_INSERT = 32
"""Most rows in one multi-row INSERT (:meth:`Database.insert_rows`): it bounds the number of
distinct statement texts (one per row count) that apsw's statement cache has to keep."""


def store_error(exc: apsw.Error, path: Path, action: str, busy_timeout_ms: int) -> StoreError:
    """Translate an apsw error into a :class:`StoreError` that tells the operator what to do."""
    where = f"store: cannot {action} '{path}'"
    detail: str
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        detail = (
            f"database is locked — another connection held it past the {busy_timeout_ms} ms "
            "busy timeout; stop the other writer or raise [store] busy_timeout_ms"
        )
    elif isinstance(exc, apsw.NotADBError):
        detail = "file is not a database — move it aside or set [store] path"
    elif isinstance(exc, apsw.CorruptError):
        detail = (
            "database disk image is malformed — restore a backup, move the file aside, "
            "or set [store] path"
        )
    elif isinstance(exc, apsw.CantOpenError):
        detail = (
            "unable to open the database file (a directory, a missing directory or no "
            "permission?) — fix the path or set [store] path"
        )
    elif isinstance(exc, apsw.ReadOnlyError | apsw.PermissionsError | apsw.AuthError):
        detail = f"the file is read-only ({exc}) — make it writable or set [store] path"
    elif isinstance(exc, apsw.FullError):
        detail = "the disk is full — free space, then restart the hive"
    elif isinstance(exc, apsw.IOError):
        detail = f"disk I/O error ({exc}) — check the disk and the file system"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return StoreError(f"{where}: {detail}")


class Database:
    """One apsw connection to the hive file, with the hive lock and nested transactions."""

    def __init__(
        self,
        path: Path,
        conn: apsw.Connection,
        lock: HiveLock,
        now: Callable[[], float],
        busy_timeout_ms: int,
    ) -> None:
        self.path = path
        self.now = now
        """The injected wall clock (seconds)."""
        self.busy_timeout_ms = busy_timeout_ms
        self.lock = lock
        self._conn = conn
        self._depth = 0
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        now: Callable[[], float],
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Database:
        """Lock, open and migrate ``path``; raise :class:`StoreError` if it cannot be used."""
        db_path = Path(path)
        lock = HiveLock.acquire(db_path)
        conn: apsw.Connection | None = None
        try:
            try:
                _private_db_files(db_path)
                conn = apsw.Connection(
                    str(db_path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
                )
                conn.set_busy_timeout(busy_timeout_ms)
                _check_and_configure(conn, db_path, len(migrations))
                current = conn.execute("PRAGMA user_version").get
                apply_migrations(conn, current, migrations)
            except apsw.Error as exc:
                raise store_error(exc, db_path, "open", busy_timeout_ms) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            lock.release()
            raise
        return cls(db_path, conn, lock, now, busy_timeout_ms)

    @property
    def schema_version(self) -> int:
        """The file's ``user_version``."""
        version: int = self.value("PRAGMA user_version")
        return version

    @property
    def connection(self) -> apsw.Connection:
        """The raw apsw connection, for the benchmark ceiling and tests; prefer the helpers."""
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested calls are savepoints inside it.

        The outermost level is ``BEGIN IMMEDIATE``: it takes the write lock up front, because
        a deferred transaction that reads and then writes can fail with SQLITE_BUSY without
        waiting for the busy timeout. Any exception rolls back (to the savepoint, when
        nested) and propagates, so a refused request changes nothing.
        """
        if self._depth:
            savepoint = f"sp{self._depth}"
            self.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                self.execute(f"ROLLBACK TO {savepoint}")
                self.execute(f"RELEASE {savepoint}")
                raise
            self._depth -= 1
            self.execute(f"RELEASE {savepoint}")
            return
        self.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._depth = 0
            self.execute("COMMIT")
        except BaseException:
            self._depth = 0
            # sqlite rolls some errors back by itself (a full disk, an I/O error).
            if not self._conn.get_autocommit():
                try:
                    self._conn.execute("ROLLBACK")
                except apsw.Error:
                    log.exception("store: rollback failed on %s", self.path)
            raise

    @property
    def in_transaction(self) -> bool:
        """Whether a :meth:`transaction` is open."""
        return self._depth > 0

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a query and return all its rows."""
        try:
            return list(self._conn.execute(sql, params))
        except apsw.Error as exc:
            raise store_error(exc, self.path, "use", self.busy_timeout_ms) from exc

    def row(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """Run a query and return its first row, or None."""
        found = self.rows(sql, params)
        return found[0] if found else None

    def value(self, sql: str, params: Params = ()) -> Any:
        """Run a query and return the first column of its first row (None if no row)."""
        found = self.row(sql, params)
        return None if found is None else found[0]

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        try:
            self._conn.execute(sql, params).fetchall()
        except apsw.Error as exc:
            raise store_error(exc, self.path, "use", self.busy_timeout_ms) from exc
        return int(self._conn.changes())

    def insert(self, sql: str, params: Params = ()) -> int:
        """Run an INSERT; return the new row's id."""
        self.execute(sql, params)
        return int(self._conn.last_insert_rowid())

    def insert_rows(self, head: str, rows: Sequence[Params]) -> list[int]:
        """Insert ``rows`` with multi-row ``VALUES`` statements; return their ids, in order.

        ``head`` is ``INSERT INTO table (col, ...)`` for a table with an ``INTEGER PRIMARY KEY
        AUTOINCREMENT``; every row has one value per column. Up to :data:`ROWS_PER_INSERT` rows
        go into one statement: one sqlite call instead of one per row (with apsw, each call
        also hands the GIL over, which a busy actor pays for dearly).

        The ids are not read back: one INSERT adds its ``VALUES`` rows in order, and
        AUTOINCREMENT gives each new row one more than the largest id the table ever had, so
        the rows of one statement hold the consecutive ids ending at ``last_insert_rowid()``.
        That the statement added exactly its rows is checked (``changes()``).
        """
        ids: list[int] = []
        for first in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[first : first + ROWS_PER_INSERT]
            sql = _multi_row_insert(head, len(chunk[0]), len(chunk))
            self.execute(sql, [value for row in chunk for value in row])
            last = int(self._conn.last_insert_rowid())
            added = int(self._conn.changes())
            if added != len(chunk):
                raise StoreError(
                    f"store: an insert into '{self.path}' added {added} rows instead of "
                    f"{len(chunk)} ({head}) — a trigger or a schema change interferes; "
                    "check the schema version"
                )
            ids.extend(range(last - len(chunk) + 1, last + 1))
        return ids

    def require_transaction(self) -> None:
        """Raise if called outside :meth:`transaction` (a bug in the store, not a refusal)."""
        if not self._depth:
            raise RuntimeError("store: write outside a transaction")

    def close(self) -> None:
        """Close the connection and drop this connection's share of the hive lock."""
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.close()
        except apsw.Error as exc:
            raise store_error(exc, self.path, "close", self.busy_timeout_ms) from exc
        finally:
            self.lock.release()


@functools.lru_cache(maxsize=256)
def _multi_row_insert(head: str, width: int, count: int) -> str:
    """``head VALUES (?, ...), ...`` for ``count`` rows of ``width`` values."""
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([row] * count)}"


def _check_and_configure(conn: apsw.Connection, path: Path, known: int) -> None:
    """Refuse a foreign or newer file, then set the pragmas the durability promise needs."""
    # The first read of the header: a garbage file fails here with NotADBError.
    version = conn.execute("PRAGMA user_version").get
    app_id = conn.execute("PRAGMA application_id").get
    tables = conn.execute("SELECT count(*) FROM sqlite_schema").get
    if version > known:
        raise StoreError(
            f"store: cannot open '{path}': this database was written by a newer hive_actors "
            f"(schema {version}, this one knows {known}): upgrade, or point [store] path "
            "elsewhere"
        )
    if app_id != APPLICATION_ID and (version or tables):
        raise StoreError(
            f"store: cannot open '{path}': it is an sqlite database of another application "
            f"(application_id {app_id}, user_version {version}) — point [store] path at a "
            "hive file or a new path"
        )
    mode = conn.execute("PRAGMA journal_mode = WAL").get
    if str(mode).lower() != "wal":
        raise StoreError(
            f"store: cannot open '{path}': sqlite refused WAL mode (journal_mode is {mode}) — "
            "put the file on a local file system or set [store] path"
        )
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    if conn.execute("PRAGMA foreign_keys").get != 1:
        raise StoreError(
            f"store: cannot open '{path}': this sqlite build cannot enforce foreign keys"
        )


def _private_db_files(db_path: Path) -> None:
    """The db and its journal files readable by the hive's user alone (0600): created so before
    SQLite does (it gives ``-wal``/``-shm`` the db's mode), tightened when looser."""
    from hive_actors.paths import tighten

    if str(db_path) == ":memory:":
        return
    try:
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for suffix in ("", "-wal", "-shm", "-journal"):
            tighten(f"{db_path}{suffix}", 0o600)
    except OSError:
        return  # not a file it can open: SQLite's open says so, with the store's clear error
