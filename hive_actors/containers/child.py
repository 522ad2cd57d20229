"""What the backends whose containers are the hive's own children share.

The process backend (a keeper process group, :mod:`.process`) and the nspawn backend (a
``systemd-nspawn`` child, :mod:`.nspawn`) keep the same books: a slot per agent with its ``op``
lock (create/start/stop/destroy, held for the whole operation) before its ``state`` lock (short:
fields, exec, the reaper's teardown); the container's record on disk (:mod:`.files`); a reaper
thread per run that waits on the container's main process with ``WNOWAIT`` (so its pid stays
reserved while what is left of the container is killed), then reaps it and publishes a
:class:`ContainerExit` (``expected`` when the hive asked for the stop; ``run_id`` naming the
start that ended) to every subscriber; :meth:`ChildBackend.runs`, what a crash watcher that
starts after the containers reads; and the PTY shells' books (:meth:`ChildBackend.release_shell`).

The shells' rule: a shell's pid is in ``run.shells`` from its start until
:meth:`ChildBackend.release_shell` forgets it and reaps it, both under the backend's shells
lock, and the stop paths read ``run.shells`` and signal those shells under that same lock
(:meth:`ChildBackend._live_shells`). A shell is the hive's child, and a child that has not been
reaped keeps its pid (a zombie) — so a pid signalled under the lock is the shell's, never a
process that got the same number after a closed terminal's shell was reaped.

A subclass says how a run starts (:meth:`ChildBackend._spawn`), stops in order
(:meth:`ChildBackend._stop`), what must die with a crashed one
(:meth:`ChildBackend._kill_rest`) and how its end reads (:meth:`ChildBackend._decode`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from hive_actors.containers.base import (
    ContainerExit,
    ContainerSpec,
    ContainerStatus,
    ExitCallback,
    StopGrace,
    Subscribers,
    check_argv,
    check_env,
)
from hive_actors.containers.files import read_marker, remove_agent_files, write_marker
from hive_actors.containers.procgroup import decode_exit, ignores, wait_until
from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound
from hive_actors.paths import AgentPaths
from hive_actors.store.names import validate_name

__all__ = ["INHERITED", "ChildBackend", "Run", "Slot", "inherited_env"]

log = logging.getLogger(__name__)

INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
"""Host variables an agent's processes inherit; nothing else of the host's environment (its API
keys, the operator's settings) reaches an agent."""


def inherited_env(
    host_env: Mapping[str, str], own: Mapping[str, str], record: Mapping[str, object]
) -> dict[str, str]:
    """An agent's base environment: :data:`INHERITED` of ``host_env``, then the backend's
    ``own`` variables (HOME…), then the container record's ``env`` (the spec's)."""
    env = {k: host_env[k] for k in INHERITED if k in host_env}
    env.setdefault("PATH", os.defpath)
    env.update(own)
    extra = record.get("env") or {}
    if isinstance(extra, dict):
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


@dataclass
class Run:
    """One run of a container and what hangs on it. Fields change under the slot's state
    lock."""

    proc: subprocess.Popen[bytes]
    """The container's main process, the hive's child."""
    control: IO[bytes]
    """Its stdin: closing it is the orderly "exit now"."""
    since: float
    env: dict[str, str]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """This start of the container (carried by its status and its exit)."""
    shells: set[int] = field(default_factory=set)
    """The PTY shells started in this container and not released yet (their host pids, each a
    session leader and the hive's child); changed and read for signals under the backend's
    shells lock (see the module)."""
    stopping: bool = False
    exit: ContainerExit | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    reaper: threading.Thread | None = None

    @property
    def leader(self) -> int:
        """What the status calls the container's main process."""
        return self.proc.pid


R = TypeVar("R", bound=Run)


@dataclass
class Slot(Generic[R]):
    op: threading.Lock = field(default_factory=threading.Lock)
    state: threading.Lock = field(default_factory=threading.Lock)
    running: R | None = None
    stopped_at: float | None = None
    last_exit: ContainerExit | None = None
    """How the last run ended (None: none ended since this backend started)."""


class ChildBackend(ABC, Generic[R]):
    """The shared part of a backend whose containers are its children (see the module)."""

    kind = "child"
    """The record's ``backend`` and the word in errors."""
    _leader_exit_s = 2.0
    """How long an orderly stop waits for the leader to exit after its pipe closed, at
    least."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        grace: StopGrace | None = None,
        start_timeout_s: float = 15.0,
        host_env: Mapping[str, str] | None = None,
    ) -> None:
        self._state_dir = Path(state_dir).absolute()
        self._clock = clock
        self._grace = grace or StopGrace()
        if not start_timeout_s > 0:
            raise ConfigError(
                f"{self.kind} backend: start_timeout_s must be > 0, got {start_timeout_s}"
            )
        self._start_timeout_s = start_timeout_s
        self._host_env = dict(os.environ if host_env is None else host_env)
        self._subscribers = Subscribers()
        self._slots: dict[str, Slot[R]] = {}
        self._slots_lock = threading.Lock()
        self._shells_lock = threading.Lock()
        """Held while a shell is tracked, while one is forgotten and reaped
        (:meth:`release_shell`) and while the stop paths signal the tracked ones
        (:meth:`_live_shells`): a pid in a run's ``shells`` is never reaped, so signalling it
        under this lock cannot hit a process that reused the number. After a slot's state lock
        when both are held."""
        self._shell_runs: dict[int, Any] = {}
        """Each tracked shell's run (a pid → the run whose ``shells`` holds it)."""

    # -- to be given by the subclass -------------------------------------------------------

    @abstractmethod
    def _base_env(self, paths: AgentPaths, record: Mapping[str, object]) -> dict[str, str]:
        """The agent's base environment (its container's view)."""

    @abstractmethod
    def _spawn(self, name: str, paths: AgentPaths, env: dict[str, str]) -> R:
        """Start a run and return once it is ready (StartFailure otherwise)."""

    @abstractmethod
    def _members(self, run: R) -> set[int]:
        """The live processes of the container but its leader (host pids)."""

    @abstractmethod
    def _signal(self, run: R, sig: signal.Signals) -> None:
        """Send ``sig`` to what runs in the container (not the leader, but at SIGKILL)."""

    @abstractmethod
    def _kill_leader(self, run: R) -> None:
        """SIGKILL the container's leader: the container ends with it."""

    @abstractmethod
    def _kill_rest(self, run: R) -> None:
        """The container died under the hive: kill everything left of it (under the slot's
        state lock, the main process a zombie still)."""

    def _decode(
        self, run: R, info: os.waitid_result | None, returncode: int
    ) -> tuple[str, int | None, int | None]:
        """How the run ended: ``(result, exit_status, signal)`` in systemd's words."""
        if info is not None:
            return decode_exit(info.si_code, info.si_status)
        if returncode < 0:
            return "signal", None, -returncode
        return ("success" if returncode == 0 else "exit-code"), returncode, None

    def _prepare(self, name: str, paths: AgentPaths) -> None:
        """Before each start: the agent's directories (one removed by hand comes back empty
        rather than failing)."""
        paths.create()

    def _created(self, name: str, paths: AgentPaths, spec: ContainerSpec) -> dict[str, Any]:
        """Checks before a create, and what its record holds beyond the common keys."""
        return {}

    # -- the interface ---------------------------------------------------------------------

    def create(self, name: str, spec: ContainerSpec) -> None:
        """Make the agent's directories and record the container; Conflict if it exists."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.op:
            if read_marker(paths) is not None:
                raise Conflict(
                    f"container {name} already exists: destroy it first, or start it as it is"
                )
            extra = self._created(name, paths, spec)
            paths.create()
            write_marker(
                paths,
                {"backend": self.kind, "env": dict(spec.env), "created": self._clock(), **extra},
            )
            with slot.state:
                slot.stopped_at = self._clock()
        log.info("container %s: created in %s", name, paths.root)

    def start(self, name: str) -> None:
        """Start a run and wait (bounded) until it is ready; no-op if it runs."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.op:
            with slot.state:
                if slot.running is not None:
                    return
            record = read_marker(paths)
            if record is None:
                raise NotFound(f"container {name} does not exist: create it first")
            self._prepare(name, paths)
            run = self._spawn(name, paths, self._base_env(paths, record))
            reaper = threading.Thread(
                target=self._reap, args=(name, slot, run), name=f"reaper:{name}", daemon=True
            )
            run.reaper = reaper
            with slot.state:
                slot.running = run
            reaper.start()
        log.info("container %s: running, leader pid %d", name, run.leader)

    def stop(self, name: str, *, grace: StopGrace | None = None) -> ContainerExit | None:
        """Stop every process of the container; return its (expected) exit, None if it was
        not running. HiveError if something survives SIGKILL."""
        grace = grace or self._grace
        self._paths(name)
        slot = self._slot(name)
        with slot.op:
            with slot.state:
                run = slot.running
                if run is None:
                    return None
                run.stopping = True
            return self._stop(name, slot, run, grace)

    def destroy(self, name: str, *, keep_state: bool) -> None:
        """Remove the agent's files (all but ``state/`` with ``keep_state``); Conflict if it
        runs. Idempotent."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.op:
            with slot.state:
                if slot.running is not None:
                    raise Conflict(f"container {name} is running: stop it before destroying it")
            remove_agent_files(paths, keep_state=keep_state)
            with slot.state:
                slot.stopped_at = None
        log.info("container %s: destroyed (state %s)", name, "kept" if keep_state else "removed")

    def environment(self, name: str) -> dict[str, str]:
        """The agent's base environment (see the subclass)."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.state:
            if slot.running is not None:
                return dict(slot.running.env)
        return self._base_env(paths, read_marker(paths) or {})

    def status(self, name: str) -> ContainerStatus:
        """absent / stopped / running (with the leader's pid and the start time)."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.state:
            run = slot.running
            if run is not None:
                return ContainerStatus(name, "running", pid=run.leader, since=run.since,
                                       run_id=run.run_id)
            stopped_at = slot.stopped_at
        if read_marker(paths) is None:
            return ContainerStatus(name, "absent")
        return ContainerStatus(name, "stopped", since=stopped_at)

    def view_changed(self, name: str) -> bool:
        """Never: these containers see no other agent's files, so a restart mounts nothing
        new (see ``ContainerBackend``)."""
        return False

    def subscribe(self, callback: ExitCallback) -> Callable[[], None]:
        """Register an exit callback (called from a reaper thread); returns the unsubscribe."""
        return self._subscribers.add(callback)

    def runs(self) -> dict[str, str | ContainerExit]:
        """Every container's run, read at once: name → the live run's ``run_id``, or how the
        last run ended when none runs now. What a crash watcher that starts after the
        containers learns their runs from — and the exits it was not there to hear."""
        with self._slots_lock:
            slots = list(self._slots.items())
        runs: dict[str, str | ContainerExit] = {}
        for name, slot in slots:
            with slot.state:
                if slot.running is not None:
                    runs[name] = slot.running.run_id
                elif slot.last_exit is not None:
                    runs[name] = slot.last_exit
        return runs

    def release_shell(self, name: str, pid: int) -> None:
        """A PTY shell of :meth:`pty_shell` exited: stop tracking it and reap it, at once under
        the shells lock (the caller waited for its exit without reaping it, e.g. ``waitid``
        ``WNOWAIT``; a shell still running is waited for first, outside the lock, so a stop is
        never held up by it). A pid the backend does not track is only reaped."""
        self._paths(name)
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # reaped elsewhere (or not a child): nothing to wait for
        with self._shells_lock:
            run = self._shell_runs.pop(pid, None)
            if run is not None:
                run.shells.discard(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # reaped elsewhere

    def close(self) -> None:
        """Stop every running container (default grace); for the hive's shutdown and tests."""
        with self._slots_lock:
            names = list(self._slots)
        for name in names:
            try:
                self.stop(name)
            except HiveError:
                log.exception("container %s: stop failed while closing the backend", name)

    # -- shared internals ------------------------------------------------------------------

    def _paths(self, name: str) -> AgentPaths:
        return AgentPaths.of(self._state_dir, validate_name(name))

    def _slot(self, name: str) -> Slot[R]:
        with self._slots_lock:
            return self._slots.setdefault(name, Slot())

    def _track_shell(self, run: Any, pid: int) -> None:
        """A PTY shell just started in ``run`` (the hive's child, not reaped: nobody else knows
        its pid yet): signalled by the stop until :meth:`release_shell`."""
        with self._shells_lock:
            run.shells.add(pid)
            self._shell_runs[pid] = run

    @contextmanager
    def _live_shells(self, run: Any) -> Iterator[list[int]]:
        """The run's shells not released yet, the shells lock held until the caller is done
        signalling them: none of them is reaped meanwhile, so no number among them can be a
        stranger's (the stop paths' one way to reach the shells)."""
        with self._shells_lock:
            yield sorted(run.shells)

    def _require_running(self, name: str, slot: Slot[R]) -> R:
        run = slot.running
        if run is None or run.exited.is_set():
            raise Conflict(f"container {name} is not running: start it first")
        if run.stopping:
            raise Conflict(f"container {name} is stopping: start it again once it stopped")
        return run

    def _orderly(self, name: str, run: R, grace: StopGrace) -> None:
        """SIGINT, SIGTERM, SIGKILL to what runs in the container but its leader, each after
        its grace (on at once when all that is left ignores SIGINT)."""

        def ended_or_deaf() -> bool:
            # Gone, or only processes that ignore SIGINT are left: waiting out the grace
            # would change nothing.
            return all(ignores(pid, signal.SIGINT) for pid in self._members(run))

        log.info("container %s: stopping (SIGINT, grace %gs)", name, grace.sigint)
        self._signal(run, signal.SIGINT)
        wait_until(ended_or_deaf, grace.sigint)
        if left := self._members(run):
            log.warning("container %s: %s ignored SIGINT; SIGTERM", name, sorted(left))
            self._signal(run, signal.SIGTERM)
            if not wait_until(lambda: not self._members(run), grace.sigterm):
                log.error("container %s: %s ignored SIGTERM; SIGKILL", name,
                          sorted(self._members(run)))
                self._signal(run, signal.SIGKILL)
                wait_until(lambda: not self._members(run), grace.sigkill)

    def _stop(self, name: str, slot: Slot[R], run: R, grace: StopGrace) -> ContainerExit | None:
        """:meth:`_orderly`, then the leader's "exit now" (its closed control pipe), SIGKILL
        if it does not listen; the run's expected exit."""
        self._orderly(name, run, grace)
        with slot.state:  # the reaper closes it too, under this lock
            run.control.close()  # the leader's "exit now"; moot after SIGKILL
        # Even with no SIGKILL grace the leader gets a moment to exit on its own.
        wait_s = max(grace.sigkill, self._leader_exit_s)

        def gone() -> bool:
            return run.exited.is_set() and not self._members(run)

        done = wait_until(gone, wait_s)
        if not run.exited.is_set():
            log.error("container %s: the leader ignored its closed pipe; SIGKILL", name)
            self._kill_leader(run)
            done = wait_until(gone, wait_s)
        if run.reaper is not None:
            run.reaper.join(wait_s)
        if not done:
            raise HiveError(
                f"container {name}: processes {sorted(self._members(run))} survived SIGKILL "
                f"for {grace.sigkill:g}s (stuck in the kernel?); look at them with ps, the "
                "container counts as stopped"
            )
        return run.exit

    @contextmanager
    def _entering(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None
    ) -> Iterator[tuple[R, list[str], dict[str, str]]]:
        """For an exec or a shell: the running run, the checked argv and the full environment
        (the agent's plus ``env``), held under the state lock — the reaper cannot tear the
        container down between the check and the new process joining it, so none outlives a
        crashed container. Conflict if it does not run."""
        self._paths(name)
        args = check_argv(name, argv)
        check_env(env or {}, what=f"container {name}: exec env")
        slot = self._slot(name)
        with slot.state:
            run = self._require_running(name, slot)
            yield run, args, {**run.env, **(env or {})}

    def _reap(self, name: str, slot: Slot[R], run: R) -> None:
        pid = run.proc.pid
        try:
            info: os.waitid_result | None = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            info = None  # someone else reaped it; Popen.wait still tells a status
        with slot.state:
            expected = run.stopping
            if not expected:
                # The container died under the hive: everything in it goes, as with a real
                # container. The zombie still holds its pid, so no stranger is hit.
                self._kill_rest(run)
            returncode = run.proc.wait()
            run.control.close()
            result, status, sig = self._decode(run, info, returncode)
            when = self._clock()
            event = ContainerExit(name, result, status, sig, when, expected, run.run_id)
            run.exit = event
            slot.running = None
            slot.stopped_at = when
            slot.last_exit = event
        self._subscribers.publish(event)
        run.exited.set()
