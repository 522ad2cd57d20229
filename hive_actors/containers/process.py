"""The embedded default backend: each agent runs on this host in its own directory tree.

"The container" of an agent is a keeper process (:mod:`hive_actors.containers.keeper`) that
leads its own process group (in the hive's session: ``setpgid`` cannot cross sessions), started
in ``<state_dir>/agents/<name>/``. Processes started with :meth:`ProcessBackend.exec` join that
group and get the agent's environment: ``HOME`` = ``home/``, ``CLAUDE_CONFIG_DIR`` =
``claude/``, ``TMPDIR`` and ``XDG_RUNTIME_DIR`` = ``tmp/``, working directory ``state/`` (the
``/state`` of a real container).

- **Stop** signals the whole group, plus the sessions of its PTY shells (a shell with a
  controlling terminal needs a session of its own, and ``setpgid`` cannot cross sessions, so
  those are tracked beside the group): SIGINT (and SIGHUP to shells), then SIGTERM, then SIGKILL,
  each after its grace period, until no process but the keeper is left; then the keeper is told
  to exit by closing its control pipe. Once every process left ignores SIGINT (``SigIgn`` in
  ``/proc``), the stop goes on to SIGTERM without waiting out the SIGINT grace.
- **Signals**: programs started by :meth:`ProcessBackend.exec` and the PTY shells get SIGINT
  and SIGTERM at their default even when the hive runs with them ignored (ignored dispositions
  survive ``exec``; see :mod:`.procgroup`): a hive started in the background or by a CI runner
  that ignores SIGINT still stops its agents in order.
- **Crashes**: a reaper thread per running container waits on the keeper with ``WNOWAIT``, so
  the keeper's pid (and with it the group id) stays reserved while the reaper kills what is left
  of the group; then it reaps and reports a :class:`ContainerExit` (``expected`` when the hive
  asked for the stop; ``run_id`` naming which start of the container ended, as its status did
  while it ran) to every subscriber. The one subscriber in a hive is the
  :class:`~hive_actors.watcher.actor.CrashWatcherActor`: an unexpected exit takes the same
  route to the agent's AgentActor and its supervisor as a unit crash systemd reports on D-Bus
  (the watcher decides which agent epoch the run was, and whether the hive asked for the stop).

Lock order: a container's ``op`` lock (create/start/stop/destroy, held for the whole operation)
before its ``state`` lock (short: fields, exec, the reaper's teardown).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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
from hive_actors.containers.procgroup import (
    decode_exit,
    default_signals_argv,
    ignored_signals,
    live_members,
    log_tail,
    read_line,
    signal_groups,
    stop_signals_ignored,
    wait_until,
)
from hive_actors.containers.terminal import keeper_argv, keeper_env, spawn_on_pty
from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound, StartFailure
from hive_actors.paths import AgentPaths
from hive_actors.store.names import validate_name

__all__ = ["ProcessBackend"]

log = logging.getLogger(__name__)

# Host variables an agent's processes inherit; nothing else of the host's environment (its API
# keys, the operator's settings) reaches an agent.
_INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
# How long an orderly stop waits for the keeper to exit after its pipe closed, at least.
_KEEPER_EXIT_S = 2.0


@dataclass
class _Running:
    """One running keeper and what hangs on it. Fields change under the slot's state lock."""

    proc: subprocess.Popen[bytes]
    control: IO[bytes]
    """The keeper's stdin: closing it is the orderly "exit now"."""
    since: float
    env: dict[str, str]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """This start of the container (carried by its status and its exit)."""
    shells: set[int] = field(default_factory=set)
    """Process-group ids of the PTY shells started in this container."""
    stopping: bool = False
    exit: ContainerExit | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    reaper: threading.Thread | None = None

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def groups(self) -> list[int]:
        return [self.pgid, *sorted(self.shells)]


@dataclass
class _Slot:
    op: threading.Lock = field(default_factory=threading.Lock)
    state: threading.Lock = field(default_factory=threading.Lock)
    running: _Running | None = None
    stopped_at: float | None = None
    last_exit: ContainerExit | None = None
    """How the last run ended (None: none ended since this backend started)."""


class ProcessBackend:
    """Agents as process groups on this host (see the module docstring). Thread-safe."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        grace: StopGrace | None = None,
        start_timeout_s: float = 15.0,
        python: str = sys.executable,
        shell: str | None = None,
        host_env: Mapping[str, str] | None = None,
    ) -> None:
        """``state_dir``: the hive's (agents live in ``<state_dir>/agents/<name>``); ``clock``
        stamps ``since``/``when``; ``grace`` is the default stop escalation; ``host_env`` the
        environment agents inherit PATH/LANG/TZ from (default: this process's)."""
        self._state_dir = Path(state_dir).absolute()
        self._clock = clock
        self._grace = grace or StopGrace()
        if not start_timeout_s > 0:
            raise ConfigError(
                f"process backend: start_timeout_s must be > 0, got {start_timeout_s}"
            )
        self._start_timeout_s = start_timeout_s
        self._python = python
        self._shell = shell or ("/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh")
        self._host_env = dict(os.environ if host_env is None else host_env)
        self._subscribers = Subscribers()
        self._slots: dict[str, _Slot] = {}
        self._slots_lock = threading.Lock()

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
            paths.create()
            write_marker(
                paths, {"backend": "process", "env": dict(spec.env), "created": self._clock()}
            )
            with slot.state:
                slot.stopped_at = self._clock()
        log.info("container %s: created in %s", name, paths.root)

    def start(self, name: str) -> None:
        """Start the keeper and wait (bounded) for its ready line; no-op if it runs."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.op:
            with slot.state:
                if slot.running is not None:
                    return
            record = read_marker(paths)
            if record is None:
                raise NotFound(f"container {name} does not exist: create it first")
            paths.create()  # a directory removed by hand comes back empty rather than failing
            env = self._base_env(paths, record)
            run = self._spawn_keeper(name, paths, env)
            reaper = threading.Thread(
                target=self._reap, args=(name, slot, run), name=f"reaper:{name}", daemon=True
            )
            run.reaper = reaper
            with slot.state:
                slot.running = run
            reaper.start()
        log.info("container %s: running, keeper pid %d", name, run.pgid)

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

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the container's process group (see the interface)."""
        paths = self._paths(name)
        args = check_argv(name, argv)
        check_env(env or {}, what=f"container {name}: exec env")
        slot = self._slot(name)
        # Under the state lock: the reaper cannot tear the group down between the check and
        # the child joining it, so a child never outlives a crashed container.
        with slot.state:
            run = self._require_running(name, slot)
            full_env = {**run.env, **(env or {})}
            where = cwd or str(paths.state)
            try:
                ignored = stop_signals_ignored()
                if ignored:
                    # Inherited as ignored across exec otherwise: the stop's SIGINT would
                    # not reach the program.
                    args = default_signals_argv(
                        args, ignored, python=self._python, path=full_env.get("PATH"),
                        cwd=where,
                    )
                return subprocess.Popen(
                    args,
                    env=full_env,
                    cwd=where,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    process_group=run.pgid,
                )
            except OSError as exc:
                raise HiveError(
                    f"container {name}: cannot start {args[0]!r} in '{where}': {exc}; check "
                    "the program (PATH is the host's) and the working directory"
                ) from exc

    def inside(self, name: str, host_path: str | os.PathLike[str]) -> str:
        """The same path: a process container shares the host's file system."""
        self._paths(name)  # the name is checked
        return os.path.abspath(host_path)

    def environment(self, name: str) -> dict[str, str]:
        """The agent's base environment (host paths; see the module docstring)."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.state:
            if slot.running is not None:
                return dict(slot.running.env)
        return self._base_env(paths, read_marker(paths) or {})

    def pty_shell(self, name: str) -> tuple[int, int]:
        """A login shell on a PTY in ``state/``, tracked as part of the container."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.state:
            run = self._require_running(name, slot)
            env = {**run.env, "TERM": "xterm-256color"}
            pid, master = spawn_on_pty([self._shell, "-l"], env, paths.state, python=self._python)
            run.shells.add(pid)  # a session leader: its pid is its process group
        log.info("container %s: shell pid %d on a PTY", name, pid)
        return pid, master

    def status(self, name: str) -> ContainerStatus:
        """absent / stopped / running (with the keeper's pid and the start time)."""
        paths = self._paths(name)
        slot = self._slot(name)
        with slot.state:
            run = slot.running
            if run is not None:
                return ContainerStatus(name, "running", pid=run.pgid, since=run.since,
                                       run_id=run.run_id)
            stopped_at = slot.stopped_at
        if read_marker(paths) is None:
            return ContainerStatus(name, "absent")
        return ContainerStatus(name, "stopped", since=stopped_at)

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

    def close(self) -> None:
        """Stop every running container (default grace); for the hive's shutdown and tests."""
        with self._slots_lock:
            names = list(self._slots)
        for name in names:
            try:
                self.stop(name)
            except HiveError:
                log.exception("container %s: stop failed while closing the backend", name)

    # -- internals -------------------------------------------------------------------------

    def _paths(self, name: str) -> AgentPaths:
        return AgentPaths.of(self._state_dir, validate_name(name))

    def _slot(self, name: str) -> _Slot:
        with self._slots_lock:
            return self._slots.setdefault(name, _Slot())

    def _base_env(self, paths: AgentPaths, record: Mapping[str, object]) -> dict[str, str]:
        env = {k: self._host_env[k] for k in _INHERITED if k in self._host_env}
        env.setdefault("PATH", os.defpath)
        env.update(
            {
                "HOME": str(paths.home),
                "CLAUDE_CONFIG_DIR": str(paths.claude),
                "TMPDIR": str(paths.tmp),
                "XDG_RUNTIME_DIR": str(paths.tmp),
            }
        )
        extra = record.get("env") or {}
        if isinstance(extra, dict):
            env.update({str(k): str(v) for k, v in extra.items()})
        return env

    def _require_running(self, name: str, slot: _Slot) -> _Running:
        run = slot.running
        if run is None or run.exited.is_set():
            raise Conflict(f"container {name} is not running: start it first")
        if run.stopping:
            raise Conflict(f"container {name} is stopping: start it again once it stopped")
        return run

    def _spawn_keeper(self, name: str, paths: AgentPaths, env: dict[str, str]) -> _Running:
        log_path = paths.root / "keeper.log"
        keeper_environ, _ = keeper_env(env)
        try:
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen(
                    keeper_argv(self._python, "keep", "--name", name),
                    cwd=paths.root,
                    env=keeper_environ,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    # A group of its own in the hive's session, not a new session: setpgid
                    # cannot cross sessions, and exec'd processes must be able to join.
                    process_group=0,
                )
        except OSError as exc:
            raise StartFailure(
                f"container {name}: cannot start its keeper with '{self._python}' in "
                f"'{paths.root}': {exc}; check the hive's Python and the agent directory"
            ) from exc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready = read_line(proc.stdout, self._start_timeout_s)
        finally:
            proc.stdout.close()
        if not ready.startswith(b"ready"):
            signal_groups([proc.pid], signal.SIGKILL)
            proc.wait(timeout=self._start_timeout_s)
            proc.stdin.close()
            why = "said nothing" if not ready else f"said {ready!r}"
            raise StartFailure(
                f"container {name}: the keeper {why} within {self._start_timeout_s:g}s "
                f"(exit {proc.returncode}); its log '{log_path}' ends: {log_tail(log_path)!r}"
            )
        return _Running(proc=proc, control=proc.stdin, since=self._clock(), env=env)

    def _stop(
        self, name: str, slot: _Slot, run: _Running, grace: StopGrace
    ) -> ContainerExit | None:
        keeper = run.pgid

        def others() -> set[int]:
            return live_members(run.groups()) - {keeper}

        def ended_or_deaf() -> bool:
            # Gone, or only processes that ignore SIGINT are left: waiting out the grace
            # would change nothing.
            return all(_ignores(pid, signal.SIGINT) for pid in others())

        log.info("container %s: stopping (SIGINT, grace %gs)", name, grace.sigint)
        signal_groups(run.shells, signal.SIGHUP)  # a terminal hang-up ends a login shell
        signal_groups(run.groups(), signal.SIGINT)
        wait_until(ended_or_deaf, grace.sigint)
        if others():
            log.warning("container %s: %s ignored SIGINT; SIGTERM", name, sorted(others()))
            signal_groups(run.groups(), signal.SIGTERM)
            if not wait_until(lambda: not others(), grace.sigterm):
                log.error("container %s: %s ignored SIGTERM; SIGKILL", name, sorted(others()))
                signal_groups(run.groups(), signal.SIGKILL)  # the keeper goes too
        with slot.state:  # the reaper closes it too, under this lock
            run.control.close()  # the keeper's "exit now"; moot after SIGKILL
        # Even with no SIGKILL grace the keeper gets a moment to exit on its own.
        wait_s = max(grace.sigkill, _KEEPER_EXIT_S)

        def gone() -> bool:
            return run.exited.is_set() and not live_members(run.groups())

        done = wait_until(gone, wait_s)
        if not run.exited.is_set():
            log.error("container %s: the keeper ignored its closed pipe; SIGKILL", name)
            signal_groups([keeper], signal.SIGKILL)
            done = wait_until(gone, wait_s)
        if run.reaper is not None:
            run.reaper.join(wait_s)
        if not done:
            survivors = sorted(live_members(run.groups()))
            raise HiveError(
                f"container {name}: processes {survivors} survived SIGKILL for "
                f"{grace.sigkill:g}s (stuck in the kernel?); look at them with ps, the "
                "container counts as stopped"
            )
        return run.exit

    def _reap(self, name: str, slot: _Slot, run: _Running) -> None:
        pid = run.pgid
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            info = None  # someone else reaped it; Popen.wait still tells a status
        with slot.state:
            expected = run.stopping
            if not expected:
                # The container died under the hive: everything in it goes, as with a real
                # container. The zombie keeper still holds the group id, so this cannot hit a
                # stranger's group.
                signal_groups(run.groups(), signal.SIGKILL)
            returncode = run.proc.wait()
            run.control.close()
            if info is not None:
                result, status, sig = decode_exit(info.si_code, info.si_status)
            elif returncode < 0:
                result, status, sig = "signal", None, -returncode
            else:
                result, status, sig = (
                    ("success" if returncode == 0 else "exit-code"),
                    returncode,
                    None,
                )
            when = self._clock()
            event = ContainerExit(name, result, status, sig, when, expected, run.run_id)
            run.exit = event
            slot.running = None
            slot.stopped_at = when
            slot.last_exit = event
        self._subscribers.publish(event)
        run.exited.set()


def _ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether ``pid`` ignores ``sig`` (a process gone meanwhile counts as ignoring: nothing
    is left to wait for)."""
    ignored = ignored_signals(pid)
    return ignored is None or int(sig) in ignored
