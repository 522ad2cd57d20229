"""The schema, as forward migrations versioned through ``PRAGMA user_version``.

Step *n* (1-based) upgrades a version *n-1* file to version *n*. Each step runs in its own
``BEGIN IMMEDIATE`` transaction together with the ``user_version`` bump, so a crash mid-way
leaves the file at the last completed version and the next open resumes from there. Steps are
never edited once shipped: a change is a new step at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import apsw

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "Migration", "apply_migrations"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward schema step."""

    description: str
    apply: str | Callable[[apsw.Connection], None]
    """SQL statements, or a function for a step that has to move data in Python."""


APPLICATION_ID = 0x48495645
"""``PRAGMA application_id`` of a hive file ("HIVE"), so a foreign sqlite file is refused."""

_V1_CORE = (
    f"PRAGMA application_id = {APPLICATION_ID};\n"
    + """
CREATE TABLE agents (
    name            TEXT PRIMARY KEY,
    role            TEXT NOT NULL CHECK (role IN ('manager', 'agent')),
    generation      INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL,
    -- The state to go back to once every operator question of the agent is answered.
    resume_state    TEXT,
    web_port        INTEGER,
    model           TEXT,
    model_persisted INTEGER NOT NULL DEFAULT 0,
    kept_state      INTEGER NOT NULL DEFAULT 0,
    created         REAL NOT NULL,
    updated         REAL NOT NULL
);
-- One live manager at a time; a destroyed manager keeps its row.
CREATE UNIQUE INDEX agents_one_manager ON agents (role)
    WHERE role = 'manager' AND state <> 'destroyed';

CREATE TABLE messages (
    -- AUTOINCREMENT: an id is acknowledged to its sender, so it is never reused.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sender      TEXT NOT NULL,
    recipient   TEXT NOT NULL REFERENCES agents (name),
    kind        TEXT NOT NULL CHECK (kind IN ('peer', 'operator', 'manager', 'system')),
    body        TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'in_flight', 'delivered', 'stale')),
    turn_id     TEXT,
    claims      INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    delivered   REAL
);
-- Partial indexes stay as small as the undelivered backlog however many messages were
-- delivered; queries repeat the index's WHERE term verbatim so the planner can use them.
CREATE INDEX messages_open ON messages (recipient, generation, id)
    WHERE status IN ('queued', 'in_flight');
CREATE INDEX messages_turn ON messages (turn_id) WHERE status = 'in_flight';

CREATE TABLE approvals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL CHECK (kind IN ('spawn', 'spawn_commit', 'apply_commit')),
    -- Not a foreign key: a spawn names an agent that does not exist yet.
    agent        TEXT NOT NULL,
    ref          TEXT,
    diff         TEXT NOT NULL DEFAULT '',
    requested_by TEXT NOT NULL,
    requested    REAL NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'approved', 'denied')),
    decided_by   TEXT,
    decided      REAL,
    note         TEXT
);
CREATE INDEX approvals_pending ON approvals (requested) WHERE status = 'pending';

CREATE TABLE questions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    agent       TEXT NOT NULL REFERENCES agents (name),
    question    TEXT NOT NULL,
    asked       REAL NOT NULL,
    answer      TEXT,
    answered_by TEXT,
    answered    REAL,
    message_id  INTEGER REFERENCES messages (id)
);
CREATE INDEX questions_pending ON questions (agent, id) WHERE answered IS NULL;

CREATE TABLE events (
    -- AUTOINCREMENT keeps ids monotonic for replay even if the newest rows are pruned.
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      REAL NOT NULL,
    kind    TEXT NOT NULL,
    agent   TEXT,
    payload TEXT NOT NULL DEFAULT '{}'
);
"""
)

_V2_STATS = """
-- Telemetry rows written by the stats actor; no foreign key, so a destroyed (even purged)
-- agent keeps its history for the charts.
CREATE TABLE stats (
    agent TEXT NOT NULL,
    ts    REAL NOT NULL,
    key   TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX stats_agent_key_ts ON stats (agent, key, ts);
"""

_V3_CARRIED_OUT = """
-- An approval's consequence on disk and in the tree (a config applied, an agent started) is
-- carried out by the agents' supervisor after the decision commits; these say when and how.
-- An approved row with no carried_out is carried out when the hive starts.
ALTER TABLE approvals ADD COLUMN carried_out REAL;
ALTER TABLE approvals ADD COLUMN outcome TEXT;
-- Rows decided before this version were carried out by the hive that decided them.
UPDATE approvals SET carried_out = decided, outcome = 'carried out (before outcomes were kept)'
    WHERE status = 'approved';
CREATE INDEX approvals_outstanding ON approvals (id)
    WHERE status = 'approved' AND carried_out IS NULL;
"""

_V4_INCARNATIONS = """
-- A generation is an incarnation: it changes only when a name is created anew (destroyed,
-- then registered again), never because a container, an actor or the daemon restarted. What
-- each start of an agent bumps is its epoch, which the crash path ties container runs to.
ALTER TABLE agents ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
UPDATE agents SET epoch = generation;
-- Before this version a restart bumped the generation and mail for a stopped agent was
-- addressed to the next spawn: everything still open is the current incarnation's mail.
UPDATE messages SET generation = (
    SELECT a.generation FROM agents AS a WHERE a.name = messages.recipient
) WHERE status IN ('queued', 'in_flight') AND generation > (
    SELECT a.generation FROM agents AS a WHERE a.name = messages.recipient
);
UPDATE agents SET generation = 1 WHERE generation = 0;
UPDATE messages SET generation = 1 WHERE generation = 0 AND status IN ('queued', 'in_flight');
"""

def _v5_revive(conn: apsw.Connection) -> None:
    """Rebuild ``approvals`` (sqlite cannot alter a CHECK) to allow the ``revive`` kind, with a
    ``reason`` column; ids and the AUTOINCREMENT high-water mark are kept."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'approvals'").fetchall()
    conn.execute("""
CREATE TABLE approvals_v5 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL
                 CHECK (kind IN ('spawn', 'spawn_commit', 'apply_commit', 'revive')),
    agent        TEXT NOT NULL,
    ref          TEXT,
    diff         TEXT NOT NULL DEFAULT '',
    requested_by TEXT NOT NULL,
    requested    REAL NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'approved', 'denied')),
    decided_by   TEXT,
    decided      REAL,
    note         TEXT,
    carried_out  REAL,
    outcome      TEXT,
    -- Why the requester asks (a revive: the agent's state and last crash).
    reason       TEXT
);
INSERT INTO approvals_v5 (id, kind, agent, ref, diff, requested_by, requested, status,
                          decided_by, decided, note, carried_out, outcome)
    SELECT id, kind, agent, ref, diff, requested_by, requested, status, decided_by, decided,
           note, carried_out, outcome FROM approvals;
DROP TABLE approvals;
ALTER TABLE approvals_v5 RENAME TO approvals;
CREATE INDEX approvals_pending ON approvals (requested) WHERE status = 'pending';
CREATE INDEX approvals_outstanding ON approvals (id)
    WHERE status = 'approved' AND carried_out IS NULL;
""")
    if seq:
        conn.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'approvals'", (seq[0][0],)
        )


MIGRATIONS: Sequence[Migration] = (
    Migration("agents, messages, approvals, questions, events", _V1_CORE),
    Migration("stats (telemetry series)", _V2_STATS),
    Migration("approvals: when and how each approval was carried out", _V3_CARRIED_OUT),
    Migration("agents: generations are incarnations, epochs count starts", _V4_INCARNATIONS),
    Migration("approvals: the revive kind and a reason", _v5_revive),
)
"""The shipped steps; ``MIGRATIONS[n - 1]`` upgrades version n-1 to n."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The version this hive_actors writes."""


def apply_migrations(
    conn: apsw.Connection, current: int, migrations: Sequence[Migration]
) -> list[int]:
    """Apply ``migrations[current:]`` one transaction each; return the versions reached.

    The caller has checked that ``current <= len(migrations)`` and translates apsw errors.
    """
    reached: list[int] = []
    for version, step in enumerate(migrations[current:], start=current + 1):
        # IMMEDIATE: take the write lock up front, so two openers racing on a fresh file
        # queue on the busy timeout instead of failing on a read-to-write upgrade.
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another connection may have migrated meanwhile.
            on_disk = conn.execute("PRAGMA user_version").get
            if on_disk >= version:
                conn.execute("COMMIT")
                continue
            if isinstance(step.apply, str):
                conn.execute(step.apply)
            else:
                step.apply(conn)
            # user_version lives in the file header and is written by this transaction.
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise
        log.info("store: migrated schema to version %d (%s)", version, step.description)
        reached.append(version)
    return reached
