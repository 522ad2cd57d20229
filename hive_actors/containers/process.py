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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hive_actors.containers.base import StopGrace
from hive_actors.containers.child import ChildBackend, Run, inherited_env
from hive_actors.containers.procgroup import (
    default_signals_argv,
    live_members,
    log_tail,
    read_line,
    signal_groups,
    stop_signals_ignored,
)
from hive_actors.containers.terminal import keeper_argv, keeper_env, spawn_on_pty
from hive_actors.errors import HiveError, StartFailure
from hive_actors.paths import AgentPaths

__all__ = ["ProcessBackend"]

log = logging.getLogger(__name__)

@dataclass
class _Running(Run):
    """One running keeper: its pid is also the container's process group."""

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def groups(self) -> list[int]:
        return [self.pgid, *sorted(self.shells)]


class ProcessBackend(ChildBackend[_Running]):
    """Agents as process groups on this host (see the module docstring). Thread-safe."""

    kind = "process"

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
        super().__init__(state_dir, clock=clock, grace=grace, start_timeout_s=start_timeout_s,
                         host_env=host_env)
        self._python = python
        self._shell = shell or ("/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh")

    # -- the interface ---------------------------------------------------------------------

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the container's process group (see the interface)."""
        paths = self._paths(name)
        with self._entering(name, argv, env) as (run, args, full_env):
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

    def pty_shell(self, name: str) -> tuple[int, int]:
        """A login shell on a PTY in ``state/``, tracked as part of the container."""
        paths = self._paths(name)
        with self._entering(name, [self._shell, "-l"], {"TERM": "xterm-256color"}) as (
            run, argv, env,
        ):
            pid, master = spawn_on_pty(argv, env, paths.state, python=self._python)
            run.shells.add(pid)  # a session leader: its pid is its process group
        log.info("container %s: shell pid %d on a PTY", name, pid)
        return pid, master

    # -- internals -------------------------------------------------------------------------

    def _base_env(self, paths: AgentPaths, record: Mapping[str, object]) -> dict[str, str]:
        """Host paths: ``HOME`` = ``home/``, ``CLAUDE_CONFIG_DIR`` = ``claude/``…"""
        return inherited_env(
            self._host_env,
            {
                "HOME": str(paths.home),
                "CLAUDE_CONFIG_DIR": str(paths.claude),
                "TMPDIR": str(paths.tmp),
                "XDG_RUNTIME_DIR": str(paths.tmp),
            },
            record,
        )

    def _spawn(self, name: str, paths: AgentPaths, env: dict[str, str]) -> _Running:
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

    def _members(self, run: _Running) -> set[int]:
        return live_members(run.groups()) - {run.pgid}

    def _signal(self, run: _Running, sig: signal.Signals) -> None:
        if sig == signal.SIGINT:
            signal_groups(run.shells, signal.SIGHUP)  # a terminal hang-up ends a login shell
        signal_groups(run.groups(), sig)  # at SIGKILL the keeper goes too

    def _kill_leader(self, run: _Running) -> None:
        signal_groups([run.pgid], signal.SIGKILL)

    def _kill_rest(self, run: _Running) -> None:
        # The zombie keeper still holds the group id, so this cannot hit a stranger's group.
        signal_groups(run.groups(), signal.SIGKILL)

