"""AgentActor: one agent — its container, its claude session, its turns.

On start it spawns the agent (a new epoch in the registry, in one transaction with the stop a
restart implies; its generation — the incarnation its mail is addressed to — stays, and the
mail a cut-short turn had taken is queued again), brings its container up and subscribes to its
inbox. When mail arrives and no turn runs, it starts one **in a worker thread** — the actor's
mailbox never blocks on a turn. Each turn gets its own hive MCP token, issued (by the actor) as
the turn starts and revoked as it ends or the actor stops: between turns the agent holds none,
so a token read during a turn cannot be replayed after it. The worker claims the inbox under a
fresh turn id, reads the model override from the bus (so ``/model`` lands on the next turn),
runs the real ``claude`` CLI inside the container and
reports back: live log lines as they stream, then the TurnEnd. The actor then acknowledges the
turn's messages (or releases them for the next turn if it failed), records the turn, and starts
the next turn if more mail is waiting — unless the backend says a restart of its container would
mount more than it has (``view_changed``: the nixos manager's view of a draft it just staged):
then it asks the agents supervisor for a planned restart
(:class:`~hive_actors.agent.supervisor.RestartAgent`) and starts no turn; the mail waiting goes
to the new actor.

A failing turn is not a crash; ``max_failed_turns`` failed turns in a row are (the supervisor
then restarts the agent with backoff, and gives it up past its limit). Every other crash arrives
as a :class:`~hive_actors.watcher.messages.ContainerCrash` told to this actor: from the crash
watcher (:class:`~hive_actors.watcher.actor.CrashWatcherActor`, which hears of every container's
end — the backend's exits, systemd's units on D-Bus — and decides which epoch a crash is of),
or from the actor's own stall check (a turn past its deadline, a harness silent for
``heartbeat_timeout``: result ``stalled``). One of this actor's epoch crashes the actor at
once with :class:`~hive_actors.watcher.messages.AgentCrashed`: the supervisor sees the ``Down``
and decides in its own thread (restarts it, records ``agent.crashed``), as for every other
exit; one of another epoch is recorded as ignored.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import pykka

from hive_actors.actor import HiveActor, unexpected
from hive_actors.agent.notes import NotesCompaction, compact_notes
from hive_actors.agent.prompt import render_turn_prompt, system_prompt
from hive_actors.agent.runtime import AgentRuntime, AgentSettings
from hive_actors.agent.turnbook import OpenTurn
from hive_actors.containers.base import view_changed
from hive_actors.errors import ConfigError
from hive_actors.harness import ClaudeBinary, TurnEnd, TurnEvent, TurnRequest, run_cli, run_turn
from hive_actors.harness.sessions import resume_session
from hive_actors.protocol import (
    Ack,
    Claim,
    GetModel,
    MailArrived,
    Release,
    Subscribe,
    TurnRecord,
    Unsubscribe,
)
from hive_actors.store import AgentState, Message, Role, Store
from hive_actors.store.events import EventKind
from hive_actors.watcher.messages import (
    STALLED,
    AgentCrashed,
    ContainerCrash,
    agent_service,
    announce_up,
)

__all__ = ["AgentActor", "AgentMessage"]

_SESSION_FILE = ".hive-session.json"
_SCRATCH = ".hive-run"
"""Under the agent's state dir: the turn's private files (its ``--mcp-config``), which the CLI
must see from inside the container; removed after each run."""


@dataclass(frozen=True)
class _TurnEvent:
    turn_id: str
    event: TurnEvent


@dataclass(frozen=True)
class _TurnBegan:
    """The worker claimed messages and is about to run the CLI."""

    turn_id: str
    model: str
    message_ids: tuple[int, ...]
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class _TurnDone:
    turn_id: str
    end: TurnEnd | None
    """None: the inbox was empty when the turn claimed it."""
    error: str | None = None
    """Set when the worker itself failed (the bus was down, the CLI could not start…)."""
    compacting: bool = False
    """The worker goes on to compact notes.md: no turn starts until ``_NotesCompacted``."""


@dataclass(frozen=True)
class _NotesCompacted:
    result: NotesCompaction


@dataclass(frozen=True)
class _Tick:
    """The slow heartbeat check (stalls)."""


AgentMessage = (
    MailArrived | ContainerCrash | _TurnEvent | _TurnBegan | _TurnDone | _NotesCompacted | _Tick
)
"""Every message :class:`AgentActor` accepts: the bus's mail notice, a crash of its container,
and its turn worker's and timer's reports to itself; its ``receive`` matches each one."""


class AgentActor(HiveActor):
    """Owns one agent's container and runs its turns."""

    def __init__(self, runtime: AgentRuntime, agent: str) -> None:
        super().__init__(name=f"agent:{agent}", clock=runtime.clock)
        self.agent = agent
        self.rt = runtime
        self.paths = runtime.hive.agent_paths(agent)
        self._store: Store | None = None
        self.role = Role.AGENT
        self.generation = 0
        """The incarnation this actor's turns claim mail for."""
        self.epoch = 0
        """This start of the agent: the crash path's container runs are tied to it."""
        self.settings: AgentSettings | None = None
        self.claude: ClaudeBinary | None = None
        self._turn: str | None = None
        self._turn_wall = 0.0
        self._received: Counter[str] = Counter()
        self._turn_started = 0.0
        self._last_progress = 0.0
        self._cancel = threading.Event()
        self._worker: threading.Thread | None = None
        self._mail_waiting = False
        self._compacting = False
        """The last turn's worker is compacting notes.md: the next turn waits for it (a turn
        writing notes.md meanwhile would have its edits replaced by the rewrite)."""
        self._failed_turns = 0
        self._session_id = ""
        self._token = ""
        """The running turn's hive MCP token ("" between turns); the actor thread's alone."""
        self._session_started = False
        self._tick: Any = None
        self._restarting = False
        """A planned restart is asked for (:meth:`_maybe_restart`): no turn starts any more."""

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    # -- life --------------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._store = self.rt.hive.open_store()
        row = self.store.registry.get(self.agent)
        self.role = row.role
        # If the registry says it ran, this actor is new: the hive (or this agent) restarted.
        # The stop that implies and the new start are one transaction. Started first, so
        # that whatever fails after it leaves the agent honestly crashed, backing off or
        # given up, never still pending.
        row = self.store.registry.spawn(self.agent, restarted=True)
        self.generation = row.generation
        self.epoch = row.epoch
        try:
            self.paths.create()
        except OSError as exc:
            raise _dirs_error(self.agent, self.paths.root, exc) from exc
        # Bad config or a missing/wrong CLI is refused here with a clear error (the agent is
        # ``starting``, so it honestly becomes crashed / backoff / given_up): the supervisor
        # backs off and gives up.
        self.settings = self.rt.settings(self.agent)
        self.claude = self.rt.claude()
        directory = self.rt.hive.directory
        # Crash reports for this agent come here from now on (the watcher finds us by name).
        directory.register(agent_service(self.agent), self.actor_ref)
        try:
            self._start_container()
            # No MCP token yet: each turn gets its own (_maybe_start_turn), revoked at its end.
            self.store.registry.set_state(self.agent, AgentState.IDLE, reason="container up")
            self.rt.hive.bell.ring()
            directory.get("bus").tell(Subscribe(self.agent, self.actor_ref))
        except BaseException:
            # on_stop does not run after a failed on_start: let go of what points at us.
            self._let_go()
            raise
        self._tick = self.send_after(self.rt.tick_interval, _Tick())
        self.log.info("up: generation %d (epoch %d), model %s", self.generation, self.epoch,
                      self.settings.model)

    def _start_container(self) -> None:
        assert self.settings is not None
        self._load_session()
        state = self.rt.backend.status(self.agent).state
        # Before the container starts: the runs the crash watcher sees from now on are this
        # epoch's (and the live one, when the container runs already).
        announce_up(self.rt.hive.directory, self.agent, self.epoch, adopts=state == "running")
        if state == "absent":
            self.rt.backend.create(self.agent, self.rt.container_spec(self.agent, self.settings))
        self.rt.backend.start(self.agent)

    def _let_go(self) -> None:
        self.rt.hive.directory.withdraw(agent_service(self.agent), self.actor_ref)

    def on_stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        self._cancel.set()
        if self._worker is not None:
            self._worker.join(self.rt.stop_grace)
        if self._turn is not None:
            self.rt.hive.directory.tell("bus", Release(self._turn, "agent stopped"))
            self.rt.turns.close(self.agent, self._turn)
        self.rt.hive.directory.tell("bus", Unsubscribe(self.agent, self.actor_ref))
        self._revoke_token()
        self._let_go()
        try:
            self.rt.backend.stop(self.agent, grace=self.rt.grace)
        finally:
            if self._store is not None:
                self._store.close()

    # -- messages ----------------------------------------------------------------------------------

    def receive(self, message: AgentMessage) -> Any:
        match message:
            case MailArrived():
                self._mail_waiting = True
                self._maybe_start_turn()
            case _TurnEvent(turn_id=turn_id, event=event):
                if turn_id == self._turn:
                    self._last_progress = self.clock.now()
                    self._record(EventKind.TURN_LOG, {"turn_id": turn_id, "line": event.describe()})
            case _TurnBegan(turn_id=turn_id, model=model, message_ids=ids, kinds=kinds):
                if turn_id == self._turn:
                    self._received = Counter(kinds)
                    row = self.store.registry.get(self.agent)
                    if row.state is AgentState.IDLE:
                        self.store.registry.set_state(self.agent, AgentState.BUSY, reason="turn")
                    self._record(
                        EventKind.TURN_STARTED,
                        {"turn_id": turn_id, "model": model, "messages": list(ids)},
                    )
            case _TurnDone(turn_id=turn_id, end=end, error=error, compacting=compacting):
                if turn_id == self._turn and compacting:
                    self._compacting = True
                self._finish_turn(turn_id, end, error)
            case _NotesCompacted(result=result):
                self._compacting = False
                payload = asdict(result)
                payload["line"] = (
                    f"notes.md compacted: {result.before} -> {result.after} bytes"
                    if result.outcome == "compacted"
                    else f"notes.md compaction skipped ({result.outcome}), {result.before} bytes"
                )
                self._record(EventKind.NOTES_COMPACTED, payload)
                if not self._maybe_restart(""):
                    self._maybe_start_turn()
            case _Tick():
                self._check_stall()
                self._tick = self.send_after(self.rt.tick_interval, _Tick())
            case ContainerCrash() as crash:
                self._on_crash(crash)
            case _:
                unexpected(self, message)
        return None

    # -- turns -------------------------------------------------------------------------------------

    def _maybe_start_turn(self) -> None:
        if (
            self._turn is not None or self._compacting or self._restarting
            or not self._mail_waiting
        ):
            return
        self._mail_waiting = False
        turn_id = f"{self.agent}-{self.epoch}-{uuid.uuid4().hex[:12]}"
        self._turn = turn_id
        self._turn_wall = time.time()
        self._received = Counter()
        self._cancel = threading.Event()
        self._turn_started = self._last_progress = self.clock.now()
        self.rt.turns.open(OpenTurn(self.agent, self.generation, turn_id))
        # This turn's MCP token (any earlier one of this agent goes); _finish_turn or on_stop
        # revokes it. Handed to the worker: it never reads the actor's state.
        self._token = token = self.rt.tokens.issue(self.agent, self.role.value)
        self._worker = threading.Thread(
            target=self._run_turn, args=(turn_id, self._cancel, token), name=f"turn:{self.agent}",
            daemon=True,
        )
        self._worker.start()

    def _revoke_token(self) -> None:
        """Revoke the running turn's MCP token: that exact one, never a newer one."""
        token, self._token = self._token, ""
        if token:
            self.rt.tokens.revoke(self.agent, token=token)

    def _run_turn(self, turn_id: str, cancel: threading.Event, token: str) -> None:
        """The worker: claim, run the CLI, report. Talks to the actor only by tells; ``token``
        is this turn's hive MCP token (revoked by the actor once the turn is done)."""
        me = _Teller(self.actor_ref)
        try:
            bus = self.rt.hive.directory.get("bus")
            messages = cast(list[Message], bus.ask(
                Claim(self.agent, self.generation, turn_id), timeout=self.rt.ask_timeout
            ))
            if not messages:
                me.tell(_TurnDone(turn_id, None))
                return
            assert self.settings is not None
            override = cast("str | None", bus.ask(GetModel(self.agent), timeout=self.rt.ask_timeout))
            model = override or self.settings.model
            me.tell(_TurnBegan(
                turn_id, model, tuple(m.id for m in messages), tuple(str(m.kind) for m in messages)
            ))
            # The CLI runs in the container: its working dir, the dir its prompt names and the
            # dir of its private files are the state dir as seen from inside.
            backend = self.rt.backend
            state = backend.inside(self.agent, self.paths.state)
            scratch_dir = self.paths.state / _SCRATCH
            scratch = (scratch_dir, backend.inside(self.agent, scratch_dir))
            request = TurnRequest(
                prompt=render_turn_prompt(self.agent, messages),
                model=model,
                session_id=self._session_id,
                resume=self._resume(state),
                base_url=self.rt.base_url,
                api_key=self.rt.api_key,
                env=self.rt.agent_env(self.agent),
                mcp_config=self.rt.mcp_config(self.agent, token, self.settings, cancel),
                allowed_tools=self.settings.allowed_tools,
                append_system_prompt=system_prompt(
                    self.agent, self.role, Path(state), self.settings.system_prompt
                ),
                max_turns=self.settings.max_turns,
                cwd=state,
                deadline_s=self.settings.turn_deadline,
                auto_compact=False,  # our policy compacts: one /compact, one retry, then fresh
            )

            def run(req: TurnRequest) -> TurnEnd:
                return run_cli(
                    req,
                    on_event=lambda ev: me.tell(_TurnEvent(turn_id, ev)),
                    cancel=cancel,
                    claude=self.claude,
                    spawn=lambda argv, env, cwd: self.rt.backend.exec(self.agent, argv, env, cwd),
                    scratch=scratch,
                )

            end = run_turn(request, run)
            notes = self.paths.state / "notes.md"
            compact = (
                end.outcome in ("ok", "compact-retry") and _size(notes) > self.rt.notes_threshold
            )
            # The turn ends now (its events say so); with ``compacting`` the actor starts no
            # next turn until _NotesCompacted: a turn must not write notes.md under the rewrite.
            me.tell(_TurnDone(turn_id, end, compacting=compact))
        except Exception as exc:  # noqa: BLE001  (reported to the actor, which decides)
            me.tell(_TurnDone(turn_id, None, f"{type(exc).__name__}: {exc}"))
            return
        if compact:
            # After _TurnDone: the turn's token is revoked (or about to be), so the
            # compaction runs without the hive MCP server (it has no tools anyway).
            try:
                offline = replace(request, mcp_config={})
                result = compact_notes(notes, offline, run)
            except Exception as exc:  # noqa: BLE001  (the actor must hear the compaction end)
                size = _size(notes)
                result = NotesCompaction(size, size, f"error: {type(exc).__name__}: {exc}")
            me.tell(_NotesCompacted(result))

    def _finish_turn(self, turn_id: str, end: TurnEnd | None, error: str | None) -> None:
        if turn_id != self._turn:
            return
        self._turn = None
        self._worker = None
        # Whatever the outcome (an empty inbox too): the turn's token dies with it.
        self._revoke_token()
        self.rt.turns.close(self.agent, turn_id)
        bus = self.rt.hive.directory.get("bus")
        if end is None and error is None:
            self._set_idle()
            if not self._maybe_restart(turn_id):
                self._maybe_start_turn()
            return
        if end is not None and self.settings is not None:
            dead = sorted(
                s.name for s in end.mcp_servers
                if s.status == "failed" and s.name in self.settings.required_servers
            )
            if dead:
                error = f"required MCP server(s) failed to start: {', '.join(dead)}"
                end = replace(end, outcome="error", is_error=True, error=error)
        ok = error is None and end is not None and end.outcome in ("ok", "compact-retry")
        if ok:
            assert end is not None
            bus.tell(Ack(turn_id))
            self._failed_turns = 0
            self._session_after(end, ok=True)
        else:
            bus.tell(Release(turn_id, f"turn failed: {error or (end.outcome if end else '?')}"))
            self._failed_turns += 1
            if end is not None:
                self._session_after(end, ok=False)
        self._record(EventKind.TURN_ENDED, _summary(turn_id, end, error))
        self.rt.on_turn_end(TurnRecord(
            self.agent, turn_id, self._turn_wall, time.time(), end, dict(self._received), error
        ))
        if end is not None and end.outcome == "timeout":
            deadline = f" of {self.settings.turn_deadline:g} s" if self.settings else ""
            self._stall(f"turn {turn_id} ran past its deadline{deadline}")
        if self._failed_turns >= self.rt.max_failed_turns:
            raise RuntimeError(
                f"{self.agent}: {self._failed_turns} turns failed in a row; last: "
                f"{error or (end.error if end else '') or (end.outcome if end else '')}"
            )
        self._set_idle()
        if not self._maybe_restart(turn_id):
            self._maybe_start_turn()

    def _maybe_restart(self, turn_id: str) -> bool:
        """Between turns: when a restart of the container would mount more than it has (the
        manager's view of the agents' repositories grew: a draft it staged), ask the agents
        supervisor for a planned restart and start no turn meanwhile; the mail waiting stays
        in the bus for the new actor. True when a restart is asked for (now or before)."""
        if self._restarting:
            return True
        if self._turn is not None or self._compacting:
            return False
        try:
            grown = view_changed(self.rt.backend, self.agent)
        except Exception as exc:  # noqa: BLE001  (no restart on a guess; the next turn goes on)
            self.log.warning("cannot tell whether the container's view changed: %s", exc)
            return False
        if not grown:
            return False
        from hive_actors.agent.supervisor import AgentsSupervisor, RestartAgent

        reason = "restarting to mount new agents' repositories"
        self._restarting = True
        try:
            # A round trip through the bus commits the ack (or release) told before it: the
            # new actor's start re-queues whatever is still in flight, so an ack committed
            # after it would hand the turn's messages over a second time.
            self.rt.hive.directory.get("bus").ask(GetModel(self.agent),
                                                  timeout=self.rt.ask_timeout)
        except Exception as exc:  # noqa: BLE001  (at worst a message is delivered twice)
            self.log.warning("the bus did not confirm the last turn's ack: %s", exc)
        if not self.rt.hive.directory.tell(AgentsSupervisor.SERVICE,
                                           RestartAgent(self.agent, reason)):
            self._restarting = False
            self.log.warning("%s, but the agents supervisor is not there", reason)
            return False
        self.log.info("%s", reason)
        self._record(EventKind.TURN_LOG, {"turn_id": turn_id, "line": reason})
        return True

    def _set_idle(self) -> None:
        row = self.store.registry.get(self.agent)
        if row.state is AgentState.BUSY:
            self.store.registry.set_state(self.agent, AgentState.IDLE, reason="turn ended")
            self.rt.hive.bell.ring()

    def _check_stall(self) -> None:
        if self._turn is None:
            return
        silent = self.clock.now() - self._last_progress
        if silent > self.rt.heartbeat_timeout:
            self._stall(
                f"no output from the harness for {silent:.1f} s in turn {self._turn}; "
                f"heartbeat timeout {self.rt.heartbeat_timeout:g} s"
            )

    def _stall(self, detail: str) -> None:
        """The agent makes no progress: a crash like a container's, with result ``stalled``."""
        self._cancel.set()
        self._on_crash(ContainerCrash(
            self.agent, self.epoch, STALLED, None, None, time.time(), source="stall",
            detail=detail,
        ))

    def _on_crash(self, crash: ContainerCrash) -> None:
        """Record a crash report; crash with it when it is about this epoch's container."""
        ignored = self._stale(crash)
        if ignored is not None:
            self.log.info("ignoring a crash report (%s): %s", crash.describe(), ignored)
            self._record(EventKind.AGENT_CRASHED, {**crash.payload(), "ignored": ignored})
            return
        # At once: the supervisor restarts first, then records the crash (no disk write here).
        raise AgentCrashed(crash)

    def _stale(self, crash: ContainerCrash) -> str | None:
        """Why a crash report is not about this actor's container, or None when it is."""
        if crash.agent != self.agent:
            return f"it is about {crash.agent}, not {self.agent}"
        if crash.epoch != self.epoch:
            return f"it is about epoch {crash.epoch}; epoch {self.epoch} runs now"
        return None

    # -- bookkeeping -------------------------------------------------------------------------------

    def _record(self, kind: EventKind, payload: dict[str, Any]) -> None:
        self.store.events.record(kind, self.agent, payload)
        self.rt.hive.bell.ring()

    def _session_path(self) -> Path:
        return self.paths.state / _SESSION_FILE

    def _load_session(self) -> None:
        try:
            data = json.loads(self._session_path().read_text())
            self._session_id = str(uuid.UUID(str(data["session_id"])))
            self._session_started = bool(data.get("started"))
        except (OSError, ValueError, KeyError, TypeError):
            self._session_id = str(uuid.uuid4())
            self._session_started = False
            try:
                self._save_session()
            except OSError as exc:
                raise _dirs_error(self.agent, self.paths.root, exc) from exc

    def _resume(self, cwd: str) -> bool:
        """Whether this turn resumes the agent's claude session (``--resume``) or creates it
        (``--session-id``). Decided by the CLI's session file under the agent's CLAUDE_CONFIG_DIR
        for the ``cwd`` the CLI is given — a first turn cut short (a stall, a kill, a stop) may
        have created it — or by a turn that ended well in it before (``started``)."""
        config_dir = self.rt.agent_env(self.agent).get("CLAUDE_CONFIG_DIR") or self.paths.claude
        return resume_session(
            config_dir, cwd, self._session_id, known=self._session_started, who=self.agent
        )

    def _session_after(self, end: TurnEnd, *, ok: bool) -> None:
        """Record the session a turn ended in: the next turn goes on in it (a hand-off moves the
        agent to a fresh session). ``started`` only after a turn ended well in it; the file
        decides about a turn cut short (:meth:`_resume`)."""
        if end.session_id and end.session_id != self._session_id:
            self.log.debug("claude session %s replaces %s", end.session_id, self._session_id)
            self._session_id = end.session_id
            self._session_started = ok
        elif ok:
            self._session_started = True
        else:
            return
        self._save_session()

    def _save_session(self) -> None:
        path = self._session_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"session_id": self._session_id, "started": self._session_started}))
        tmp.replace(path)


def _dirs_error(name: str, root: Path, exc: OSError) -> ConfigError:
    """An agent's directories that cannot be made or written, in the operator's words: the
    agent, the path and the fix (not a bare ``[Errno 17] File exists``)."""
    where = exc.filename or root
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return ConfigError(
            f"agent {name}: '{where}' is in the way of its directories under '{root}' (a file "
            "where a directory must be), so nothing can be written there: move that file away"
        )
    return ConfigError(
        f"agent {name}: its directories under '{root}' cannot be written ('{where}': "
        f"{exc.strerror}): fix their permissions, free space or a read-only mount"
    )


class _Teller:
    """The worker's line to its actor; an actor that stopped meanwhile needs no more news."""

    def __init__(self, ref: Any) -> None:
        self._ref = ref

    def tell(self, message: Any) -> None:
        try:
            self._ref.tell(message)
        except pykka.ActorDeadError:
            pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _summary(turn_id: str, end: TurnEnd | None, error: str | None) -> dict[str, Any]:
    if end is None:
        return {"turn_id": turn_id, "outcome": "error", "error": error}
    return {
        "turn_id": turn_id,
        "outcome": end.outcome,
        "duration_s": end.duration_s,
        "tool_calls": dict(end.tool_calls),
        "tokens": asdict(end.tokens),
        "cost_usd": end.cost_usd,
        "model": end.model,
        "permission_denials": [f"{d.tool}: {d.summary}" for d in end.permission_denials],
        # How the CLI's MCP servers came up (the hive's and the agent's own): the agent page
        # shows each extra server's state from here.
        "mcp_servers": [{"name": s.name, "status": s.status} for s in end.mcp_servers],
        "session_id": end.session_id,
        "error": end.error or error,
    }
