"""Test support for the MCP surface: a HiveOps over the real store, and a real HTTP server.

``StoreOps`` is what the tests put behind the surface: every tool lands in a real sqlite file
through ``hive_actors.store`` (the lead writes the production HiveOps over the hive's actors).
``serve`` runs an ASGI app under uvicorn on 127.0.0.1, port 0, in a thread, and stops it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from hive_actors.mcp import Draft, InboxMessage
from hive_actors.store import AgentState, ApprovalKind, MessageKind, Role, Store

__all__ = ["StoreOps", "serve"]


class StoreOps:
    """:class:`hive_actors.mcp.HiveOps` over one real :class:`Store`, serialized by a lock.

    A ``Store`` is for one thread at a time, and the surface calls from worker threads: every
    operation (and every test read through :meth:`locked`) holds the lock. Each agent's
    "turn" is ``turn-<agent>-<generation>``, which ``recv`` claims messages for.
    """

    def __init__(self, path: Path, drafts_root: Path | None = None) -> None:
        self._store = Store.open(path)
        self._lock = threading.Lock()
        self._drafts_root = drafts_root
        self.calls: list[tuple[str, str]] = []
        """(tool, caller) of every call that reached the hive, in order."""

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self._store.close()

    @contextmanager
    def locked(self) -> Iterator[Store]:
        """The store, held for the caller alone (test reads)."""
        with self._lock:
            yield self._store

    def start_agent(self, name: str, role: Role = Role.AGENT) -> None:
        """Register ``name``, spawn it and make it idle (a live agent taking turns)."""
        with self._lock:
            self._store.registry.register(name, role=role)
            self._store.registry.spawn(name)
            self._store.registry.set_state(name, AgentState.IDLE)

    def _note(self, tool: str, caller: str) -> None:
        self.calls.append((tool, caller))

    # -- HiveOps ---------------------------------------------------------------------------

    def send(self, caller: str, to: str, body: str) -> int:
        with self._lock:
            self._note("send", caller)
            sender = self._store.registry.get(caller)
            kind = MessageKind.MANAGER if sender.role is Role.MANAGER else MessageKind.PEER
            return self._store.messages.send(caller, to, body, kind)

    def recv(self, caller: str) -> Sequence[InboxMessage]:
        with self._lock:
            self._note("recv", caller)
            generation = self._store.registry.get(caller).generation
            claimed = self._store.messages.claim(caller, generation, f"turn-{caller}-{generation}")
            return [InboxMessage(m.id, m.sender, str(m.kind), m.body) for m in claimed]

    def request_spawn(self, caller: str, name: str) -> int:
        with self._lock:
            self._note("request_spawn", caller)
            return self._store.approvals.request(ApprovalKind.SPAWN, name, requested_by=caller).id

    def request_spawn_draft(self, caller: str, name: str) -> Draft:
        with self._lock:
            self._note("request_spawn_draft", caller)
            self._store.registry.register(name, state=AgentState.DRAFT)
        if self._drafts_root is None:
            return Draft(name=name)
        return Draft(
            name=name,
            config_path=str(self._drafts_root / name / "config"),
            state_path=str(self._drafts_root / name / "state"),
        )

    def request_spawn_commit(self, caller: str, name: str, ref: str) -> int:
        with self._lock:
            self._note("request_spawn_commit", caller)
            return self._store.approvals.request(
                ApprovalKind.SPAWN_COMMIT, name, requested_by=caller, ref=ref
            ).id

    def apply_commit(self, caller: str, name: str, ref: str) -> int:
        with self._lock:
            self._note("apply_commit", caller)
            return self._store.approvals.request(
                ApprovalKind.APPLY_COMMIT, name, requested_by=caller, ref=ref
            ).id

    def ask_operator(self, caller: str, question: str) -> int:
        with self._lock:
            self._note("ask_operator", caller)
            return self._store.questions.ask(caller, question).id


class _Server(uvicorn.Server):
    """uvicorn that says when it listens (an Event, not a polled flag)."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._ready.set()


@contextmanager
def serve(app: object, timeout: float) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (port 0) in a thread; yield ``http://127.0.0.1:PORT``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        lifespan="on",
        ws="none",
        http="h11",
        # Neither uvicorn's logging config nor a log level: both change the process's
        # "uvicorn.*" loggers for good (no propagation; WARNING), and later tests read them.
        log_config=None,
        log_level=None,
        timeout_graceful_shutdown=int(timeout),
    )
    ready = threading.Event()
    server = _Server(config, ready)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{port}", daemon=True
    )
    thread.start()
    try:
        if not ready.wait(timeout):
            raise AssertionError(f"uvicorn on port {port} did not start within {timeout}s")
        if server.should_exit:
            raise AssertionError(f"uvicorn on port {port} failed to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
        if thread.is_alive():
            raise AssertionError(f"uvicorn on port {port} did not stop within {timeout}s")
