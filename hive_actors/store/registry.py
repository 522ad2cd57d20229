"""The agent registry: names, roles, generations, lifecycle states, web ports.

A **generation** is an incarnation: 1 for a new name, bumped when a destroyed name is
registered again, never by a restart (of the container, the AgentActor or the daemon), so an
agent's mail survives every restart. Each start bumps the agent's **epoch** instead, which the
crash path ties container runs to. Rows are never deleted: a destroyed agent keeps its row (and
its generation counter, so a name created anew never reuses a generation its old messages
carry). The functions at module
level run inside a caller's transaction and are shared with the other store modules; the
:class:`Registry` methods are the public, one-transaction-each operations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from hive_actors.errors import ConfigError, Conflict, NotFound, Refused

from .db import Database
from .events import EventKind, append_event
from .handover import settle
from .names import validate_name
from .records import Agent, AgentState, MessageStatus, Role
from .rules import ENTERED_VIA, RUNNING_STATES, check_transition

__all__ = [
    "Registry",
    "change_state",
    "fetch_agent",
    "mark_stale",
    "register_agent",
    "require_agent",
    "require_live_agent",
]

log = logging.getLogger(__name__)

RESTART_STOP_REASON = "hive restarted"
"""The reason of the stop a new AgentActor records for an agent the registry says ran."""

_COLUMNS = (
    "name, role, generation, state, web_port, model, model_persisted, kept_state, created, "
    "updated, epoch"
)


def _agent(row: tuple[Any, ...]) -> Agent:
    name, role, generation, state, port, model, persisted, kept, created, updated, epoch = row
    return Agent(
        name=str(name),
        role=Role(role),
        generation=int(generation),
        state=AgentState(state),
        web_port=None if port is None else int(port),
        model=None if model is None else str(model),
        model_persisted=bool(persisted),
        kept_state=bool(kept),
        created=float(created),
        updated=float(updated),
        epoch=int(epoch),
    )


def fetch_agent(db: Database, name: str) -> Agent | None:
    """Return the agent named ``name``, or None."""
    row = db.row(f"SELECT {_COLUMNS} FROM agents WHERE name = ?", (name,))
    return None if row is None else _agent(row)


AgentLookup = Callable[[str], "Agent | None"]
"""Finds an agent row by name (``fetch_agent`` over a db, or a per-batch cache of it)."""


def require_agent(db: Database | AgentLookup, name: str) -> Agent:
    """Return the agent named ``name``; raise :class:`NotFound` naming it."""
    agent = db(name) if callable(db) else fetch_agent(db, name)
    if agent is None:
        raise NotFound(f"no agent named {name!r}: register it or request its spawn first")
    return agent


def require_live_agent(db: Database | AgentLookup, name: str, doing: str) -> Agent:
    """Like :func:`require_agent`, refusing a destroyed agent for ``doing``."""
    agent = require_agent(db, name)
    if agent.state is AgentState.DESTROYED:
        kept = " (its state dir was kept)" if agent.kept_state else ""
        raise Refused(
            f"cannot {doing}: agent {name} was destroyed{kept} — request its spawn again first"
        )
    return agent


def change_state(
    db: Database, agent: Agent, target: AgentState, *, reason: str | None = None, **extra: object
) -> Agent:
    """Move ``agent`` to ``target`` after checking the lifecycle table; record the event."""
    check_transition(agent.name, agent.state, target)
    now = db.now()
    db.execute(
        "UPDATE agents SET state = ?, updated = ? WHERE name = ?", (str(target), now, agent.name)
    )
    append_event(
        db,
        EventKind.AGENT_STATE,
        agent.name,
        {"from": str(agent.state), "to": str(target), "reason": reason, **extra},
    )
    return require_agent(db, agent.name)


def mark_stale(db: Database, name: str, below_generation: int | None) -> list[int]:
    """Mark ``name``'s undelivered messages addressed below ``below_generation`` stale.

    ``None`` marks every undelivered message (the agent was destroyed).
    """
    # A bound of -1 would be wrong for generation 0; a huge bound is "all of them".
    bound = (1 << 62) if below_generation is None else below_generation
    ids = [
        int(r[0])
        for r in db.rows(
            "SELECT id FROM messages WHERE recipient = ? AND status IN ('queued', 'in_flight') "
            "AND generation < ? ORDER BY id",
            (name, bound),
        )
    ]
    if ids:
        db.execute(
            "UPDATE messages SET status = 'stale' WHERE recipient = ? "
            "AND status IN ('queued', 'in_flight') AND generation < ?",
            (name, bound),
        )
        append_event(
            db,
            EventKind.MESSAGE_STALE,
            name,
            {"ids": ids, "below_generation": below_generation},
        )
    return ids


def _check_port(db: Database, name: str, port: int | None) -> None:
    if port is None:
        return
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"web port {port!r} for agent {name} is invalid: use 1 to 65535")
    holder = db.value(
        "SELECT name FROM agents WHERE web_port = ? AND name <> ? AND state <> 'destroyed'",
        (port, name),
    )
    if holder is not None:
        raise Conflict(f"web port {port} for agent {name} is already used by agent {holder}")


def register_agent(
    db: Database,
    name: str,
    *,
    role: Role = Role.AGENT,
    state: AgentState = AgentState.PENDING,
    web_port: int | None = None,
) -> Agent:
    """Register a new agent, or bring back a destroyed one, inside the caller's transaction."""
    validate_name(name)
    role = Role(role)
    state = AgentState(state)
    if state not in (AgentState.DRAFT, AgentState.PENDING):
        raise Refused(
            f"cannot register agent {name} as {state}: an agent starts as draft or pending"
        )
    if role is Role.MANAGER:
        manager = db.value(
            "SELECT name FROM agents WHERE role = 'manager' AND state <> 'destroyed' "
            "AND name <> ?",
            (name,),
        )
        if manager is not None:
            raise Conflict(f"cannot register {name} as manager: {manager} is the manager")
    _check_port(db, name, web_port)
    now = db.now()
    existing = fetch_agent(db, name)
    if existing is None:
        db.execute(
            "INSERT INTO agents (name, role, generation, state, web_port, created, updated) "
            "VALUES (?, ?, 1, ?, ?, ?, ?)",
            (name, str(role), str(state), web_port, now, now),
        )
    elif existing.state is AgentState.DESTROYED:
        check_transition(name, existing.state, state)
        # A new life under an old name: a new generation (the old one's mail went stale when
        # it was destroyed), the state dir (kept or not) is in use again, and the old
        # incarnation's model override does not carry over.
        db.execute(
            "UPDATE agents SET role = ?, state = ?, web_port = coalesce(?, web_port), "
            "generation = generation + 1, model = NULL, model_persisted = 0, kept_state = 0, "
            "resume_state = NULL, updated = ? WHERE name = ?",
            (str(role), str(state), web_port, now, name),
        )
        mark_stale(db, name, existing.generation + 1)
    else:
        raise Conflict(f"cannot register agent {name}: it already exists ({existing.state})")
    append_event(
        db,
        EventKind.AGENT_REGISTERED,
        name,
        {"role": str(role), "state": str(state), "reused": existing is not None},
    )
    return require_agent(db, name)


class Registry:
    """The agent registry's public operations (one transaction each)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def register(
        self,
        name: str,
        *,
        role: Role = Role.AGENT,
        state: AgentState = AgentState.PENDING,
        web_port: int | None = None,
    ) -> Agent:
        """Register ``name`` as a ``draft`` or ``pending`` agent (or revive a destroyed one).

        Raises ConfigError for a bad name or port, Conflict if the name is taken or a second
        manager is registered.
        """
        with self._db.transaction():
            return register_agent(self._db, name, role=role, state=state, web_port=web_port)

    def get(self, name: str) -> Agent:
        """Return the agent ``name``; raise NotFound."""
        return require_agent(self._db, name)

    def find(self, name: str) -> Agent | None:
        """Return the agent ``name``, or None."""
        return fetch_agent(self._db, name)

    def agents(self, states: Iterable[AgentState] | None = None) -> list[Agent]:
        """Return all agents (or those in ``states``), by name."""
        rows = self._db.rows(f"SELECT {_COLUMNS} FROM agents ORDER BY name")
        wanted = None if states is None else {AgentState(s) for s in states}
        found = [_agent(r) for r in rows]
        return found if wanted is None else [a for a in found if a.state in wanted]

    def kept_state(self) -> list[Agent]:
        """Destroyed agents whose state dir was kept (the dashboard's K3PT ST4T3)."""
        return [a for a in self.agents([AgentState.DESTROYED]) if a.kept_state]

    def manager(self) -> Agent | None:
        """The live manager, if one is registered."""
        name = self._db.value(
            "SELECT name FROM agents WHERE role = 'manager' AND state <> 'destroyed'"
        )
        return None if name is None else self.get(str(name))

    def set_state(self, name: str, state: AgentState, *, reason: str | None = None) -> Agent:
        """Move ``name`` to ``state`` if the lifecycle table allows it.

        Setting the current state again changes nothing (no event). ``starting`` is entered
        through :meth:`spawn` and ``destroyed`` through :meth:`destroy`; a destroyed agent
        comes back through :meth:`register`. Raises NotFound or Conflict.
        """
        target = AgentState(state)
        with self._db.transaction():
            agent = require_agent(self._db, name)
            if agent.state is target:
                return agent
            if target in ENTERED_VIA:
                raise Refused(f"agent {name} enters {target} only through {ENTERED_VIA[target]}")
            if agent.state is AgentState.DESTROYED:
                raise Refused(f"agent {name} is destroyed: register it again to bring it back")
            agent = change_state(self._db, agent, target, reason=reason)
            # Leaving waiting_operator by hand forgets where answering would have led.
            if target is not AgentState.WAITING_OPERATOR:
                self._db.execute("UPDATE agents SET resume_state = NULL WHERE name = ?", (name,))
            return agent

    def spawn(self, name: str, *, restarted: bool = False) -> Agent:
        """Start ``name``: bump its epoch and move it to ``starting``, in one transaction.

        Its generation, and so its mail, stays: a start is not a new incarnation. Legal from
        pending, crashed, backoff, given_up and stopped; with ``restarted`` (a new AgentActor
        finds the registry saying the agent ran: the hive or the agent restarted) also from
        ``starting`` and the running states, recorded as a stop "hive restarted" in the same
        transaction, so a kill between the two can never leave the agent ``stopped``.
        """
        with self._db.transaction():
            agent = require_agent(self._db, name)
            if restarted and (
                agent.state is AgentState.STARTING or agent.state in RUNNING_STATES
            ):
                agent = change_state(
                    self._db, agent, AgentState.STOPPED, reason=RESTART_STOP_REASON
                )
            check_transition(name, agent.state, AgentState.STARTING)
            epoch = agent.epoch + 1
            # No turn of an earlier start can still end: its messages go back to the queue,
            # to be delivered again (marked redelivered) to this start's first turn.
            settle(self._db, MessageStatus.QUEUED, reason="agent started", recipient=name)
            self._db.execute(
                "UPDATE agents SET epoch = ?, state = 'starting', resume_state = NULL, "
                "updated = ? WHERE name = ?",
                (epoch, self._db.now(), name),
            )
            append_event(
                self._db,
                EventKind.AGENT_SPAWNED,
                name,
                {"from": str(agent.state), "generation": agent.generation, "epoch": epoch},
            )
            return require_agent(self._db, name)

    def stopped_by_restart(self) -> list[str]:
        """Agents left ``stopped`` by a restart of the hive rather than by the operator.

        A hive before this version recorded "stopped (hive restarted)" and the next spawn in
        two transactions; a kill between them left the agent stopped for good. Its last state
        event says so: such agents are resumed with the others.
        """
        rows = self._db.rows(
            "SELECT a.name, (SELECT e.payload FROM events AS e WHERE e.agent = a.name "
            "AND e.kind = ? ORDER BY e.id DESC LIMIT 1) FROM agents AS a "
            "WHERE a.state = 'stopped' ORDER BY a.name",
            (str(EventKind.AGENT_STATE),),
        )
        found = []
        for name, payload in rows:
            try:
                last = json.loads(payload) if payload else {}
            except ValueError:
                continue
            if last.get("to") == str(AgentState.STOPPED) and (
                last.get("reason") == RESTART_STOP_REASON
            ):
                found.append(str(name))
        return found

    def destroy(self, name: str, *, keep_state: bool) -> Agent:
        """Mark ``name`` destroyed, recording whether its state dir is kept or purged.

        The container backend removes the container (and the state dir unless kept); the
        registry only records it. Undelivered messages become stale.
        """
        with self._db.transaction():
            agent = require_agent(self._db, name)
            check_transition(name, agent.state, AgentState.DESTROYED)
            self._db.execute(
                "UPDATE agents SET state = 'destroyed', kept_state = ?, resume_state = NULL, "
                "updated = ? WHERE name = ?",
                (int(bool(keep_state)), self._db.now(), name),
            )
            stale = mark_stale(self._db, name, None)
            append_event(
                self._db,
                EventKind.AGENT_DESTROYED,
                name,
                {"from": str(agent.state), "kept_state": bool(keep_state), "stale": len(stale)},
            )
            return require_agent(self._db, name)

    def purge(self, name: str) -> Agent:
        """Record that a destroyed agent's kept state dir was deleted (K3PT ST4T3 no more).

        Conflict unless ``name`` is destroyed with its state kept; the caller deletes the files
        first, then records it.
        """
        with self._db.transaction():
            agent = require_agent(self._db, name)
            if agent.state is not AgentState.DESTROYED or not agent.kept_state:
                raise Conflict(
                    f"agent {name} is {agent.state}"
                    + (" with no kept state" if agent.state is AgentState.DESTROYED else "")
                    + ": only a destroyed agent whose state was kept can be purged"
                )
            self._db.execute(
                "UPDATE agents SET kept_state = 0, updated = ? WHERE name = ?",
                (self._db.now(), name),
            )
            append_event(
                self._db,
                EventKind.AGENT_DESTROYED,
                name,
                {"from": str(agent.state), "kept_state": False, "purged": True},
            )
            return require_agent(self._db, name)

    def set_port(self, name: str, port: int | None) -> Agent:
        """Record ``name``'s web UI port (None clears it); raise Conflict if another has it."""
        with self._db.transaction():
            agent = require_agent(self._db, name)
            _check_port(self._db, name, port)
            if agent.web_port == port:
                return agent
            self._db.execute(
                "UPDATE agents SET web_port = ?, updated = ? WHERE name = ?",
                (port, self._db.now(), name),
            )
            append_event(self._db, EventKind.AGENT_PORT, name, {"from": agent.web_port, "to": port})
            return require_agent(self._db, name)
