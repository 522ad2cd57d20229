"""The connection layer on real sqlite files: pragmas, locks, errors, migrations, durability."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import apsw
import pytest

from hive_actors.errors import StoreError
from hive_actors.store import MIGRATIONS, SCHEMA_VERSION, MessageKind, Migration, Role
from hive_actors.store.lock import lock_path_for
from tests.support.store import WallClock, open_store, snapshot
from tests.support.timeout import TIMEOUT

REPO = Path(__file__).resolve().parents[1]


def _raw(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(0)
    return conn


def _readline(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> str:
    """One line from a child's stdout, or fail after ``timeout`` (never hang the suite)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"child printed nothing within {timeout} s")
    return proc.stdout.readline()


def _child(script: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=TIMEOUT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()


# --- pragmas and schema -------------------------------------------------------------------


def test_new_file_is_wal_full_sync_with_foreign_keys(db_path: Path, clock: WallClock) -> None:
    with open_store(db_path, clock) as store:
        conn = store.db.connection
        assert conn.execute("PRAGMA journal_mode").get == "wal"
        assert conn.execute("PRAGMA synchronous").get == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").get == 1
        assert store.db.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        assert {"agents", "messages", "approvals", "questions", "events", "stats"} <= tables
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='index'")}
        assert "stats_agent_key_ts" in indexes
        cols = [r[2] for r in conn.execute("PRAGMA index_info('stats_agent_key_ts')")]
        assert cols == ["agent", "key", "ts"]


def test_foreign_keys_are_enforced(db_path: Path, clock: WallClock) -> None:
    with (
        open_store(db_path, clock) as store,
        pytest.raises(StoreError, match="FOREIGN KEY"),
        store.db.transaction(),
    ):
        store.db.execute(
            "INSERT INTO messages (sender, recipient, kind, body, generation, created) "
            "VALUES ('a', 'nobody', 'peer', 'x', 1, 0)"
        )


# --- the hive lock ------------------------------------------------------------------------


def test_second_hive_on_the_same_file_is_refused(db_path: Path, clock: WallClock) -> None:
    proc = _child(
        f"""
        import sys
        from hive_actors.store import Store
        store = Store.open({str(db_path)!r})
        print("ready", flush=True)
        sys.stdin.read()
        store.close()
        """
    )
    try:
        assert _readline(proc).strip() == "ready"
        with pytest.raises(StoreError) as info:
            open_store(db_path, clock)
        assert str(info.value) == (
            f"store: cannot open '{db_path}': another hive holds it (pid {proc.pid}) — "
            "stop it or set [store] path"
        )
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        _finish(proc)
    # The holder exited, so the lock is free again.
    with open_store(db_path, clock) as store:
        assert store.db.schema_version == SCHEMA_VERSION


def test_a_killed_hive_leaves_no_lock_behind(db_path: Path, clock: WallClock) -> None:
    proc = _child(
        f"""
        import sys
        from hive_actors.store import Store
        store = Store.open({str(db_path)!r})
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    try:
        assert _readline(proc).strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        _finish(proc)
    assert lock_path_for(db_path).exists()
    with open_store(db_path, clock) as store:
        assert store.db.schema_version == SCHEMA_VERSION


def test_stores_of_one_process_share_the_lock(db_path: Path, clock: WallClock) -> None:
    first = open_store(db_path, clock)
    second = open_store(db_path, clock)
    try:
        assert first.db.lock.first and not second.db.lock.first
        first.close()
        # The second connection still holds the process's lock: another process is refused.
        proc = _child(
            f"""
            from hive_actors.errors import StoreError
            from hive_actors.store import Store
            try:
                Store.open({str(db_path)!r})
            except StoreError as exc:
                print(exc, flush=True)
            else:
                print("opened", flush=True)
            """
        )
        try:
            assert "another hive holds it" in _readline(proc)
        finally:
            _finish(proc)
    finally:
        second.close()
        first.close()


def test_missing_directory_is_a_clear_error(tmp_path: Path, clock: WallClock) -> None:
    path = tmp_path / "nope" / "hive.db"
    with pytest.raises(StoreError, match=r"cannot create its lock file .* set \[store\] path"):
        open_store(path, clock)


# --- sqlite locks -------------------------------------------------------------------------


def test_writer_held_past_the_busy_timeout_is_a_clear_error(
    db_path: Path, clock: WallClock
) -> None:
    store = open_store(db_path, clock, busy_timeout_ms=300)
    other = _raw(db_path)
    try:
        store.registry.register("alice")
        before = snapshot(db_path)
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            store.messages.send("operator", "alice", "hi", MessageKind.OPERATOR)
        waited = time.monotonic() - started
        assert str(info.value) == (
            f"store: cannot use '{db_path}': database is locked — another connection held it "
            "past the 300 ms busy timeout; stop the other writer or raise [store] "
            "busy_timeout_ms"
        )
        assert isinstance(info.value.__cause__, apsw.BusyError)
        assert waited >= 0.25, "the store must wait for the busy timeout before giving up"
        other.execute("ROLLBACK")
        assert snapshot(db_path) == before
        # The connection is usable again once the other writer is gone.
        store.messages.send("operator", "alice", "hi", MessageKind.OPERATOR)
        assert store.messages.inbox_depth("alice") == 1
    finally:
        other.close()
        store.close()


def test_lock_held_while_opening_a_new_file(db_path: Path, clock: WallClock) -> None:
    other = _raw(db_path)  # a fresh file in rollback-journal mode: EXCLUSIVE blocks readers
    try:
        other.execute("CREATE TABLE t (x)")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(StoreError, match=r"^store: cannot open '.*': database is locked"):
            open_store(db_path, clock, busy_timeout_ms=100)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_recovery_needs_the_write_lock(db_path: Path, clock: WallClock) -> None:
    open_store(db_path, clock).close()
    other = _raw(db_path)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="database is locked"):
            open_store(db_path, clock, busy_timeout_ms=100, recover=True)
    finally:
        other.execute("ROLLBACK")
        other.close()
    # The failed open released the hive lock and closed its connection.
    with open_store(db_path, clock, recover=True) as store:
        assert store.db.schema_version == SCHEMA_VERSION


# --- files that are not ours --------------------------------------------------------------


def test_garbage_file_is_a_clear_error(db_path: Path, clock: WallClock) -> None:
    db_path.write_bytes(b"definitely not an sqlite file\n" * 200)
    for _ in range(2):  # the second attempt proves the first released the hive lock
        with pytest.raises(StoreError) as info:
            open_store(db_path, clock)
        assert str(info.value) == (
            f"store: cannot open '{db_path}': file is not a database — move it aside or set "
            "[store] path"
        )
        assert isinstance(info.value.__cause__, apsw.NotADBError)


def test_directory_instead_of_a_file_is_a_clear_error(db_path: Path, clock: WallClock) -> None:
    db_path.mkdir()
    with pytest.raises(StoreError, match=r"unable to open the database file .* set \[store\] path"):
        open_store(db_path, clock)


def test_foreign_sqlite_database_is_refused(db_path: Path, clock: WallClock) -> None:
    other = _raw(db_path)
    other.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    other.close()
    with pytest.raises(StoreError, match="an sqlite database of another application"):
        open_store(db_path, clock)
    conn = _raw(db_path)
    try:  # and left untouched
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema")]
        assert names == ["accounts"]
    finally:
        conn.close()


def test_newer_schema_is_refused_with_the_versions(db_path: Path, clock: WallClock) -> None:
    open_store(db_path, clock).close()
    conn = _raw(db_path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(StoreError) as info:
        open_store(db_path, clock)
    assert str(info.value) == (
        f"store: cannot open '{db_path}': this database was written by a newer hive_actors "
        f"(schema 7, this one knows {SCHEMA_VERSION}): upgrade, or point [store] path elsewhere"
    )


# --- migrations ---------------------------------------------------------------------------


def test_older_file_is_migrated_and_keeps_its_data(db_path: Path, clock: WallClock) -> None:
    with open_store(db_path, clock, migrations=MIGRATIONS[:1]) as old:
        assert old.db.schema_version == 1
        # Version 1's own columns: today's registry reads columns added since.
        with old.db.transaction():
            old.db.execute(
                "INSERT INTO agents (name, role, generation, state, created, updated) "
                "VALUES ('alice', 'agent', 0, 'pending', 0, 0)"
            )
            message_id = old.db.insert(
                "INSERT INTO messages (sender, recipient, kind, body, generation, created) "
                "VALUES ('operator', 'alice', 'operator', 'kept', 1, 0)", ()
            )
        tables = {r[0] for r in old.db.rows("SELECT name FROM sqlite_schema WHERE type='table'")}
        assert "stats" not in tables
    with open_store(db_path, clock) as new:
        assert new.db.schema_version == SCHEMA_VERSION
        assert new.messages.get(message_id).body == "kept"
        with new.db.transaction():
            new.db.execute("INSERT INTO stats VALUES ('alice', 1.0, 'turns', 3.0)")
        assert new.db.value("SELECT value FROM stats WHERE agent = 'alice'") == 3.0


def test_a_version_3_file_keeps_every_open_message_for_its_agent(
    db_path: Path, clock: WallClock
) -> None:
    """Before version 4 each start bumped the generation and mail for a stopped agent was
    addressed to the next start: after the upgrade all open mail is the incarnation's."""
    with open_store(db_path, clock, migrations=MIGRATIONS[:3]) as old, old.db.transaction():
        old.db.execute(
            "INSERT INTO agents (name, role, generation, state, created, updated) VALUES "
            "('alice', 'agent', 3, 'stopped', 0, 0), ('bob', 'agent', 0, 'pending', 0, 0)"
        )
        old.db.execute(
            "INSERT INTO messages (sender, recipient, kind, body, generation, status, "
            "created) VALUES ('operator', 'alice', 'operator', 'for gen 3', 3, 'queued', 0),"
            " ('operator', 'alice', 'operator', 'for the next start', 4, 'queued', 0),"
            " ('operator', 'alice', 'operator', 'gen 2, stale', 2, 'stale', 0),"
            " ('operator', 'bob', 'operator', 'for bob', 1, 'queued', 0)"
        )
    with open_store(db_path, clock) as new:
        alice, bob = new.registry.get("alice"), new.registry.get("bob")
        assert (alice.generation, alice.epoch, bob.generation, bob.epoch) == (3, 3, 1, 0)
        assert [m.body for m in new.messages.undelivered("alice")] == [
            "for gen 3", "for the next start"]
        assert {m.generation for m in new.messages.undelivered("alice")} == {3}
        assert [m.body for m in new.messages.stale("alice")] == ["gen 2, stale"]
        bob = new.registry.spawn("bob")
        assert [m.body for m in new.messages.claim("bob", bob.generation, "t")] == ["for bob"]


def test_each_step_is_a_transaction(db_path: Path, clock: WallClock) -> None:
    open_store(db_path, clock).close()
    add_column = Migration("agents.note", "ALTER TABLE agents ADD COLUMN note TEXT")
    broken = Migration(
        "broken", "CREATE TABLE half_done (x); INSERT INTO no_such_table VALUES (1);"
    )
    with pytest.raises(StoreError, match="no such table: no_such_table"):
        open_store(db_path, clock, migrations=(*MIGRATIONS, add_column, broken))
    conn = _raw(db_path)
    try:
        # The good step committed, the broken one left nothing behind.
        assert conn.execute("PRAGMA user_version").get == SCHEMA_VERSION + 1
        cols = [r[1] for r in conn.execute("PRAGMA table_info(agents)")]
        assert "note" in cols
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema")]
        assert "half_done" not in tables
    finally:
        conn.close()
    # A python step runs too, and a file already at the newest version is left alone.
    ran: list[int] = []

    def step(conn: apsw.Connection) -> None:
        ran.append(1)
        conn.execute("CREATE TABLE fixed (x)")

    migrations = (*MIGRATIONS, add_column, Migration("python step", step))
    with open_store(db_path, clock, migrations=migrations) as store:
        assert store.db.schema_version == SCHEMA_VERSION + 2
    with open_store(db_path, clock, migrations=migrations) as store:
        assert store.db.schema_version == SCHEMA_VERSION + 2
    assert ran == [1]


# --- transactions -------------------------------------------------------------------------


def test_nested_transaction_rolls_back_only_its_savepoint(db_path: Path, clock: WallClock) -> None:
    with open_store(db_path, clock) as store:
        with store.db.transaction():
            store.db.execute("INSERT INTO stats VALUES ('a', 1, 'k', 1)")
            with pytest.raises(KeyError), store.db.transaction():
                store.db.execute("INSERT INTO stats VALUES ('b', 1, 'k', 1)")
                raise KeyError("inner")
        assert [r[0] for r in store.db.rows("SELECT agent FROM stats")] == ["a"]
        with pytest.raises(KeyError), store.db.transaction():
            store.db.execute("INSERT INTO stats VALUES ('c', 1, 'k', 1)")
            raise KeyError("outer")
        assert [r[0] for r in store.db.rows("SELECT agent FROM stats")] == ["a"]
        assert not store.db.in_transaction


# --- durability ---------------------------------------------------------------------------


def test_messages_survive_close_and_reopen(db_path: Path, clock: WallClock) -> None:
    with open_store(db_path, clock) as store:
        store.registry.register("manager", role=Role.MANAGER)
        store.registry.register("alice")
        ids = [
            store.messages.send("manager", "alice", f"m{i}", MessageKind.MANAGER) for i in range(5)
        ]
    with open_store(db_path, clock) as store:
        agent = store.registry.spawn("alice")
        claimed = store.messages.claim("alice", agent.generation, "turn-1")
        assert [m.id for m in claimed] == ids
        assert [m.body for m in claimed] == [f"m{i}" for i in range(5)]


def test_acknowledged_sends_survive_kill_9(db_path: Path, clock: WallClock) -> None:
    with open_store(db_path, clock) as store:
        store.registry.register("alice")
    # The child prints each id only after send() returned, i.e. after the commit: every
    # printed id is "acknowledged" and must be in the file after the SIGKILL.
    proc = _child(
        f"""
        from hive_actors.store import MessageKind, Store
        store = Store.open({str(db_path)!r})
        i = 0
        while True:
            print(store.messages.send("operator", "alice", f"m{{i}}", MessageKind.OPERATOR),
                  flush=True)
            i += 1
        """
    )
    acked: list[int] = []
    try:
        while len(acked) < 20:
            acked.append(int(_readline(proc)))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        _finish(proc)
    with open_store(db_path, clock, recover=True) as store:
        stored = {m.id for m in store.messages.undelivered("alice")}
        assert set(acked) <= stored


def test_two_connections_in_two_threads(db_path: Path, clock: WallClock) -> None:
    with open_store(db_path, clock) as setup:
        setup.registry.register("alice")
        setup.registry.register("bob")
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def writer(sender: str) -> None:
        try:
            with open_store(db_path, clock) as store:
                results[sender] = [
                    store.messages.send(sender, "alice", f"{sender}{i}", MessageKind.SYSTEM)
                    for i in range(30)
                ]
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
        assert not t.is_alive()
    assert errors == []
    with open_store(db_path, clock) as store:
        inbox = store.messages.undelivered("alice")
        assert len(inbox) == 60
        for sender in ("x", "y"):
            mine = [m for m in inbox if m.sender == sender]
            assert [m.body for m in mine] == [f"{sender}{i}" for i in range(30)]
            assert [m.id for m in mine] == results[sender]
