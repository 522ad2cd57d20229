"""The hive's durable store: one sqlite file (apsw, WAL, ``synchronous=FULL``).

Open one :class:`Store` per actor thread::

    store = Store.open("/var/lib/hive/hive.db", now=time.time, recover=True)
    store.registry.register("alice")
    message_id = store.messages.send("manager", "alice", "hello", MessageKind.MANAGER)

Modules: ``db`` (connection, pragmas, transactions, errors), ``lock`` (one hive per file),
``schema`` (migrations), ``names`` (agent names), ``rules`` (the pure lifecycle table and
checks), ``records`` (frozen rows), ``registry``, ``models`` (model overrides), ``messages``,
``approvals``, ``questions``, ``events``, ``raw`` (the benchmark ceiling).
"""

from __future__ import annotations

from .db import DEFAULT_BUSY_TIMEOUT_MS, Database
from .events import EventKind
from .models import Models, StateDirs
from .names import NAME_RULE, is_valid_name, validate_name
from .records import (
    Agent,
    AgentState,
    Answer,
    Approval,
    ApprovalKind,
    ApprovalStatus,
    Event,
    InboxStats,
    Message,
    MessageKind,
    MessageStatus,
    Question,
    Role,
    SendRequest,
)
from .rules import DEFAULT_MAX_BODY_BYTES, TRANSITIONS, can_transition
from .schema import MIGRATIONS, SCHEMA_VERSION, Migration
from .store import Recovery, Store

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "DEFAULT_MAX_BODY_BYTES",
    "MIGRATIONS",
    "NAME_RULE",
    "SCHEMA_VERSION",
    "TRANSITIONS",
    "Agent",
    "AgentState",
    "Answer",
    "Approval",
    "ApprovalKind",
    "ApprovalStatus",
    "Database",
    "Event",
    "EventKind",
    "InboxStats",
    "Message",
    "MessageKind",
    "MessageStatus",
    "Migration",
    "Models",
    "Question",
    "Recovery",
    "Role",
    "SendRequest",
    "StateDirs",
    "Store",
    "can_transition",
    "is_valid_name",
    "validate_name",
]
