"""The gateway's reads of the store: snapshots, enriched event pages, API reads.

Called from worker threads (the fan-out's ``asyncio.to_thread``, the API's ``anyio`` workers,
the event pump), never on the event loop. Those threads come and go (anyio's idle workers
exit), so a read borrows a connection from a bounded :class:`~hive_actors.store.pool.StorePool`
for its duration — one caller at a time each — and gives it back; :meth:`HiveReader.close`
closes the pool. (A connection per thread, kept, leaked two descriptors and a page cache for
every worker thread that ever ran a read.)

Every read runs in one read transaction (``BEGIN`` … ``COMMIT``: in WAL mode a consistent
snapshot of the file that never blocks a writer), so a snapshot's state and its
``last_event_id`` agree, and an event page's views are those of the same moment as its events:
a page that applies events in order never steps back in time.
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hive_actors.errors import NotFound
from hive_actors.httpd.fanout_types import Snapshot
from hive_actors.store import Event, Store
from hive_actors.store.pool import StorePool

from .views import (
    AGENT_VIEW_KINDS,
    TALLY_KINDS,
    Tally,
    WireEvent,
    agent_view,
    approval_view,
    counts,
    question_view,
)

__all__ = ["HiveReader"]

_TALLY_PAGE = 5000
_EVENT_COLUMNS = "id, ts, kind, agent, payload"


def _event(row: tuple[Any, ...]) -> Event:
    return Event(
        id=int(row[0]), ts=float(row[1]), kind=str(row[2]),
        agent=None if row[3] is None else str(row[3]), payload=json.loads(row[4]),
    )


class HiveReader:
    """Reads for the pages and the API, on pooled connections (thread-safe)."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        state_dir_of: Callable[[str], Path],
        *,
        page_errors: Callable[[], Mapping[str, str]] = dict,
        recent_log: int = 300,
        recent_feed: int = 50,
        log_window: int = 50_000,
        default_model: str | None = None,
        agent_toml_of: Callable[[str], Path] | None = None,
    ) -> None:
        """``state_dir_of`` maps an agent to its state dir (is a destroyed agent's state kept?);
        ``page_errors`` returns why an agent's page is not served, by agent.
        ``agent_toml_of`` maps an agent to its applied ``agent.toml`` (default: the
        ``config/applied/agent.toml`` beside its state dir); its ``model``, else
        ``default_model`` (the hive's ``[model] default``), is what a turn runs without an
        override (the rows' ``model_next``). The dashboard's
        snapshot carries the hive's last ``recent_feed`` events; an agent page's, the agent's
        last ``recent_log`` among the newest ``log_window`` events of the hive (a bounded
        scan: the log has no index by agent)."""
        self.pool = StorePool(open_store, name="gateway reader")
        """The reads' connections (a few kept between reads, closed by :meth:`close`)."""
        self.state_dir_of = state_dir_of
        """An agent's state directory on the host."""
        self._page_errors = page_errors
        self._recent_log = recent_log
        self._recent_feed = recent_feed
        self._log_window = log_window
        self._tally = Tally()
        self._tally_lock = threading.Lock()
        self._default_model = default_model
        self._agent_toml_of = agent_toml_of or (
            lambda name: state_dir_of(name).parent / "config" / "applied" / "agent.toml"
        )
        self._models_lock = threading.Lock()
        self._models: dict[Path, tuple[tuple[int, int, int], str | None]] = {}
        """Configured models by agent.toml path, with the file's (inode, mtime, size)."""
        self._cache_lock = threading.Lock()
        self._cached: tuple[int, Mapping[str, str], Snapshot] | None = None

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Store]:
        """One read transaction on a borrowed connection (HiveError once closed)."""
        with self.pool.connection() as store:
            store.db.execute("BEGIN")
            try:
                yield store
            finally:
                store.db.execute("COMMIT")

    def close(self) -> None:
        """Close the connections (from any thread; a read still running closes its own when
        it ends); later reads raise HiveError."""
        self.pool.close()

    # -- the dashboard ---------------------------------------------------------------------

    def last_event_id(self) -> int:
        """The newest event id of the log."""
        with self.pool.connection() as store:
            return store.events.last_event_id()

    def oldest_event_id(self) -> int:
        """The oldest event id the log still holds (a resume from before it is impossible)."""
        with self.pool.connection() as store:
            return store.events.oldest_event_id()

    def snapshot(self) -> Snapshot:
        """The dashboard's state and the last event it includes (the fan-out's snapshot).

        Many browsers connecting at once (the hive restarted) share one read: the snapshot is
        reused while no event has been committed since.
        """
        errors = self._page_errors()
        with self._read() as store:
            last = store.events.last_event_id()
            with self._cache_lock:
                cached = self._cached
            # The page errors are replaced whole when they change: identity is enough.
            if cached is not None and cached[0] == last and cached[1] is errors:
                return cached[2]
            snap = Snapshot(self._dashboard(store, last, errors), last)
        with self._cache_lock:
            if self._cached is None or self._cached[0] <= last:
                self._cached = (last, errors, snap)
        return snap

    def state(self) -> dict[str, Any]:
        """``GET /api/state``: every agent, the headline counts, the last event id."""
        snap = self.snapshot()
        state = snap.state
        return {
            "agents": state["agents"],
            "counts": state["counts"],
            "last_event_id": snap.last_event_id,
        }

    def _dashboard(
        self, store: Store, last: int, errors: Mapping[str, str]
    ) -> dict[str, Any]:
        self._catch_up_tally(store, last)
        inbox = store.messages.inbox_stats()
        agents = []
        for agent in store.registry.agents():
            stats = inbox.get(agent.name)
            agents.append(self._agent_view(
                agent, stats.depth if stats else 0, stats.oldest_age if stats else 0.0, errors
            ))
        approvals = [approval_view(a) for a in store.approvals.pending()]
        questions = [question_view(q) for q in store.questions.pending()]
        recent = store.db.rows(
            f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", (self._recent_feed,)
        )
        return {
            "agents": agents,
            "approvals": approvals,
            "questions": questions,
            "counts": counts(agents, len(approvals), len(questions)),
            "recent": [_wire_dict(WireEvent.of(_event(r))) for r in reversed(recent)],
        }

    def approvals(self, recent: bool) -> list[dict[str, Any]]:
        """Pending approvals (oldest first), or the most recent of any status (newest first)."""
        with self._read() as store:
            found = store.approvals.recent() if recent else store.approvals.pending()
            return [approval_view(a) for a in found]

    def questions(self) -> list[dict[str, Any]]:
        """Unanswered operator questions, oldest first."""
        with self._read() as store:
            return [question_view(q) for q in store.questions.pending()]

    def events_since(self, after_id: int, limit: int) -> list[WireEvent]:
        """Up to ``limit`` events after ``after_id``, each with the views it changed."""
        with self._read() as store:
            events = store.events.events_since(after_id, limit)
            return self._enrich(store, events)

    def events_after(
        self, after_id: int, limit: int, agent: str | None = None
    ) -> tuple[list[WireEvent], int]:
        """``GET /api/events``: up to ``limit`` events after ``after_id`` (only ``agent``'s,
        if given) and the oldest id the log still holds, read in one transaction: the caller
        sees whether events right after ``after_id`` were pruned (``oldest > after_id + 1``)."""
        with self._read() as store:
            oldest = store.events.oldest_event_id()
            if agent is None:
                events = store.events.events_since(after_id, limit)
            else:
                events = [_event(r) for r in store.db.rows(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? AND agent = ? "
                    "ORDER BY id LIMIT ?",
                    (after_id, agent, limit),
                )]
            return self._enrich(store, events), oldest

    # -- one agent's page ------------------------------------------------------------------

    def agent_state(self, name: str) -> dict[str, Any]:
        """``GET /api/state`` on an agent's page: its row and the last event id; NotFound."""
        with self._read() as store:
            last = store.events.last_event_id()
            row = self._agent_row(store, name, last)
            if row is None:
                raise NotFound(f"no agent named {name!r}")
            return {"agent": row, "last_event_id": last}

    def agent_snapshot(self, name: str) -> Snapshot:
        """An agent page's snapshot: its row, its recent events, its open questions."""
        with self._read() as store:
            last = store.events.last_event_id()
            row = self._agent_row(store, name, last)
            rows = store.db.rows(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? AND agent = ? "
                "ORDER BY id DESC LIMIT ?",
                (max(0, last - self._log_window), name, self._recent_log),
            )
            recent = [WireEvent.of(_event(r)) for r in reversed(rows)]
            questions = [question_view(q) for q in store.questions.pending(name)]
        return Snapshot(
            {
                "agent": row,
                "log": [_wire_dict(e) for e in recent],
                "questions": questions,
            },
            last,
        )

    def agent_events_since(self, name: str, after_id: int, limit: int) -> list[WireEvent]:
        """Up to ``limit`` of the agent's events after ``after_id``, with their views."""
        with self._read() as store:
            rows = store.db.rows(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? AND agent = ? "
                "ORDER BY id LIMIT ?",
                (after_id, name, limit),
            )
            return self._enrich(store, [_event(r) for r in rows])

    # -- helpers (inside a read transaction) -------------------------------------------------

    def _catch_up_tally(self, store: Store, upto: int) -> None:
        with self._tally_lock:
            tally = self._tally
            marks = ", ".join("?" for _ in TALLY_KINDS)
            while tally.position < upto:
                rows = store.db.rows(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? AND id <= ? "
                    f"AND kind IN ({marks}) ORDER BY id LIMIT ?",
                    (tally.position, upto, *TALLY_KINDS, _TALLY_PAGE),
                )
                events = [_event(r) for r in rows]
                full = len(rows) == _TALLY_PAGE
                tally.apply(events, events[-1].id if full else upto)

    def _agent_view(
        self, agent: Any, depth: int, age: float, errors: Mapping[str, str]
    ) -> dict[str, Any]:
        kept = bool(agent.kept_state) and self.state_dir_of(agent.name).is_dir()
        with self._tally_lock:
            tally = self._tally.of(agent.name)
        return agent_view(
            agent, inbox_depth=depth, inbox_oldest_age=age, tally=tally, state_kept=kept,
            page_error=errors.get(agent.name),
            configured_model=self._configured_model(agent.name) or self._default_model,
        )

    def _configured_model(self, name: str) -> str | None:
        """The ``model`` of the agent's applied ``agent.toml`` (None: none, or unreadable),
        re-read only when the file changed (an apply swaps the checkout: a new inode)."""
        path = self._agent_toml_of(name)
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._models_lock:
            cached = self._models.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            model = None  # the agent refuses to start on it: the default is no worse a guess
        else:
            value = data.get("model")
            model = value.strip() if isinstance(value, str) and value.strip() else None
        with self._models_lock:
            self._models[path] = (key, model)
        return model

    def _agent_row(self, store: Store, name: str, last: int) -> dict[str, Any] | None:
        agent = store.registry.find(name)
        if agent is None:
            return None
        self._catch_up_tally(store, last)
        return self._agent_view(
            agent, store.messages.inbox_depth(name), store.messages.oldest_age(name),
            self._page_errors(),
        )

    def _enrich(self, store: Store, events: Sequence[Event]) -> list[WireEvent]:
        if not events:
            return []
        last = events[-1].id
        rows: dict[str, dict[str, Any] | None] = {}
        out: list[WireEvent] = []
        for event in events:
            view: dict[str, Any] = {}
            name = event.agent
            if name is not None and event.kind in AGENT_VIEW_KINDS:
                if name not in rows:
                    rows[name] = self._agent_row(store, name, last)
                if rows[name] is not None:
                    view["agent"] = rows[name]
            ref = event.payload.get("id")
            if isinstance(ref, int):
                try:
                    if event.kind.startswith("approval."):
                        view["approval"] = approval_view(store.approvals.get(ref))
                    elif event.kind.startswith("question."):
                        view["question"] = question_view(store.questions.get(ref))
                except NotFound:
                    pass  # pruned: the event alone has to do
            out.append(WireEvent.of(event, view))
        return out


def _wire_dict(event: WireEvent) -> dict[str, Any]:
    return {
        "id": event.id, "ts": event.ts, "kind": event.kind, "agent": event.agent,
        "payload": dict(event.payload), "view": dict(event.view),
    }
