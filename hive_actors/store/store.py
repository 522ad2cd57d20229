"""The :class:`Store` facade: one connection and the domain objects that share it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hive_actors.errors import ConfigError

from .approvals import Approvals
from .db import DEFAULT_BUSY_TIMEOUT_MS, Database
from .events import EventLog
from .messages import Messages
from .models import Models, StateDirs
from .questions import Questions
from .registry import Registry
from .rules import DEFAULT_MAX_BODY_BYTES
from .schema import MIGRATIONS, Migration

__all__ = ["Recovery", "Store"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What the start-up recovery did."""

    released: int
    """In-flight messages put back in their inboxes (their turns died with the old hive)."""
    models: dict[str, str | None]
    """Model overrides reset at start-up: agent -> the override now in force."""


class Store:
    """The hive's durable state on one sqlite file, for ONE thread at a time.

    Each actor thread opens its own ``Store`` on the same path; they share this process's
    hive lock. Every mutating call is one transaction: it commits before it returns, and a
    refusal (a :class:`~hive_actors.errors.Refused`) leaves the file as it was.

    Attributes: ``registry`` (agents), ``models`` (model overrides), ``messages`` (inboxes),
    ``approvals``, ``questions``, ``events`` (the audit log).
    """

    def __init__(
        self,
        db: Database,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        state_dirs: StateDirs | None = None,
    ) -> None:
        self.db = db
        self.registry = Registry(db)
        self.models = Models(db, state_dirs)
        self.messages = Messages(db, max_body_bytes)
        self.approvals = Approvals(db, max_body_bytes)
        self.questions = Questions(db, max_body_bytes)
        self.events = EventLog(db)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        now: Callable[[], float] = time.time,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        state_dirs: StateDirs | None = None,
        recover: bool = False,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Store:
        """Open (creating and migrating as needed) the store at ``path``.

        ``recover=True`` is for the one opener that starts the hive (the bus actor's first
        start): it runs :meth:`recover`. Other actors' connections leave it False, or they
        would release the turns the bus has in flight. Raises StoreError.
        """
        if max_body_bytes < 1:
            raise ConfigError(
                f"[store] max_body_bytes must be a positive number of bytes, got {max_body_bytes}"
            )
        if busy_timeout_ms < 0:
            raise ConfigError(
                f"[store] busy_timeout_ms must be 0 or more milliseconds, got {busy_timeout_ms}"
            )
        db = Database.open(path, now=now, busy_timeout_ms=busy_timeout_ms, migrations=migrations)
        store = cls(db, max_body_bytes=max_body_bytes, state_dirs=state_dirs)
        if recover:
            try:
                store.recover()
            except BaseException:
                store.close()
                raise
        return store

    @property
    def path(self) -> Path:
        """The sqlite file."""
        return self.db.path

    def recover(self) -> Recovery:
        """Hive start-up: release every in-flight message and reload model overrides.

        No turn survives the daemon, so whatever was handed to one and not acknowledged goes
        back to its inbox and is delivered again (at-least-once). Model overrides come back
        only where the operator persisted them (``<state_dir>/model``).
        """
        # One transaction: a crash half-way through recovery leaves the file as it was.
        with self.db.transaction():
            released = self.messages.release_all(reason="startup")
            models = self.models.reload()
        if released or models:
            log.info(
                "store: start-up recovery on %s released %d in-flight message(s), reset %d "
                "model override(s)",
                self.path,
                released,
                len(models),
            )
        return Recovery(released=released, models=models)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
