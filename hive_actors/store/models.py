"""Per-agent runtime model override: the operator's ``/model``, optionally persisted.

The override lives in the agents table, so every connection (the harness reads it per turn)
sees it. By default it lasts until the hive restarts, as the operator's ``/model`` always did;
asked to persist it, the store also writes ``<state_dir>/model`` and reads it back at start-up,
so it survives a restart (and a rebuild that keeps the state dir).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from hive_actors.errors import ConfigError, Refused

from .db import Database
from .events import EventKind, append_event
from .records import Agent, AgentState
from .registry import Registry, require_agent, require_live_agent

__all__ = ["MODEL_FILE", "Models", "StateDirs"]

log = logging.getLogger(__name__)

MODEL_FILE = "model"
"""File in an agent's state dir holding its persisted model override."""

StateDirs = Callable[[str], Path]
"""Maps an agent name to its state dir (the container's ``/state``) on the host."""

_MAX_MODEL_LENGTH = 200


def _check_model_name(name: str, model: str) -> str:
    text = model.strip() if isinstance(model, str) else model
    if (
        not isinstance(text, str)
        or not text
        or len(text) > _MAX_MODEL_LENGTH
        or any(ch.isspace() or not ch.isprintable() for ch in text)
    ):
        # Refused, not ConfigError: a bad name is a request the bus answers, not a crash of it.
        raise Refused(
            f"model {model!r} for agent {name} is invalid: use a model name such as "
            f"'claude-sonnet-4-5' or 'opus' (no spaces, at most {_MAX_MODEL_LENGTH} characters), "
            "or None to clear the override"
        )
    return text


def _write_atomically(path: Path, text: str) -> None:
    # tmp + fsync + rename + fsync(dir): after a power cut the file holds the old or the new
    # name, never a torn one.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Models:
    """Read and set model overrides (one transaction per change)."""

    def __init__(self, db: Database, state_dirs: StateDirs | None = None) -> None:
        self._db = db
        self._registry = Registry(db)
        self._state_dirs = state_dirs

    def model(self, name: str) -> str | None:
        """Return ``name``'s runtime model override, None when it runs its configured model."""
        return require_agent(self._db, name).model

    def set_model(self, name: str, model: str | None, *, persist: bool = False) -> Agent:
        """Set (or with None clear) ``name``'s runtime model override.

        The override is stored in the db. Without ``persist`` it lasts until the hive restarts
        (as the operator's ``/model`` always did); with ``persist`` it is also written to
        ``<state_dir>/model`` and read back at start-up. A non-persistent set removes that file,
        so a restart never resurrects an override the operator has since replaced.
        """
        with self._db.transaction():
            agent = require_live_agent(self._db, name, f"set the model of {name}")
            value = None if model is None else _check_model_name(name, model)
            if persist and value is None:
                raise Refused(f"cannot persist a cleared model for {name}: pass a model name")
            path = self._model_path(name, required=persist)
            # The file is written inside the transaction, before the commit: if it fails,
            # nothing changes; if the commit fails after it, the file holds what the operator
            # asked for and wins at the next start.
            if path is not None:
                try:
                    if persist and value is not None:
                        _write_atomically(path, value)
                    elif path.exists():
                        path.unlink()
                except OSError as exc:
                    raise Refused(
                        f"cannot persist the model of {name} to '{path}': {exc.strerror} — "
                        "fix the state dir, or set the model without persisting"
                    ) from exc
            self._db.execute(
                "UPDATE agents SET model = ?, model_persisted = ?, updated = ? WHERE name = ?",
                (value, int(persist), self._db.now(), name),
            )
            append_event(
                self._db,
                EventKind.AGENT_MODEL,
                name,
                {"from": agent.model, "to": value, "persisted": persist, "reason": "set"},
            )
            return require_agent(self._db, name)

    def reload(self) -> dict[str, str | None]:
        """Start-up: reset overrides to what the state dirs persist; return what changed.

        An agent with a ``<state_dir>/model`` file gets that override (persisted); any other
        agent loses its non-persisted override. Destroyed agents are left alone.
        """
        changed: dict[str, str | None] = {}
        with self._db.transaction():
            for agent in self._registry.agents():
                if agent.state is AgentState.DESTROYED:
                    continue
                value = self._read_persisted(agent.name)
                persisted = value is not None
                if agent.model == value and agent.model_persisted == persisted:
                    continue
                self._db.execute(
                    "UPDATE agents SET model = ?, model_persisted = ?, updated = ? "
                    "WHERE name = ?",
                    (value, int(persisted), self._db.now(), agent.name),
                )
                append_event(
                    self._db,
                    EventKind.AGENT_MODEL,
                    agent.name,
                    {"from": agent.model, "to": value, "persisted": persisted, "reason": "startup"},
                )
                changed[agent.name] = value
        return changed

    def _model_path(self, name: str, *, required: bool) -> Path | None:
        if self._state_dirs is None:
            if required:
                raise ConfigError(
                    f"cannot persist the model of {name}: the store has no state dirs "
                    "(open it with state_dirs=…, the agents' state root)"
                )
            return None
        return self._state_dirs(name) / MODEL_FILE

    def _read_persisted(self, name: str) -> str | None:
        path = self._model_path(name, required=False)
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("store: cannot read the persisted model of %s from %s: %s", name, path, exc)
            return None
        try:
            return _check_model_name(name, text)
        except Refused as exc:
            log.warning("store: ignoring %s: %s", path, exc)
            return None
