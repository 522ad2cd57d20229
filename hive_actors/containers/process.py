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

- **Isolation**: when the hive runs as root, each agent runs under a uid of its own
  (``uid_base`` + 1, + 2…, recorded in its container record so it stays the agent's across
  restarts; a uid a host account has is skipped), its gid the same number, plus the shared group
  ``uid_base`` that may only search the state dir and ``agents/``. Its ``state/``, ``claude/``,
  ``home/`` and ``tmp/`` are chowned to it (0700); its agent directory stays the hive's
  (``root:<its gid>`` 0710: the record cannot be rewritten by the agent); ``config/``, the db,
  the operator token and the other agents' directories are out of its reach. The keeper stays
  the hive's user (it runs no agent code); every exec'd program and PTY shell drops to the
  agent's uid in a shim the hive's Python runs (``setgroups``/``setresgid``/``setresuid``, then
  ``exec``). A file the hive hands the agent on a command line inside the agent's directories
  (the CLI's ``--mcp-config``) and the ``claude/`` tree are given to the agent at each exec.
  A program the agent's uid cannot reach (the CLI under a 0700 ``/root``) is a clear exec
  error. ``isolate = "auto"`` isolates when the hive is root and its Python prefix (where the
  bundled CLI lives) is reachable by an unprivileged uid; otherwise, and always when the hive
  is not root, the backend warns once that agents are not isolated (development only).

Lock order: a container's ``op`` lock (create/start/stop/destroy, held for the whole operation)
before its ``state`` lock (short: fields, exec, the reaper's teardown).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

from hive_actors.containers.base import ContainerSpec, StopGrace
from hive_actors.containers.child import ChildBackend, Run, inherited_env
from hive_actors.containers.files import read_marker, write_marker
from hive_actors.containers.procgroup import (
    default_signals_argv,
    live_members,
    log_tail,
    read_line,
    signal_groups,
    stop_signals_ignored,
)
from hive_actors.containers.terminal import keeper_argv, keeper_env, spawn_on_pty
from hive_actors.errors import ConfigError, HiveError, StartFailure
from hive_actors.paths import AgentPaths

__all__ = ["NOT_ISOLATED", "ProcessBackend", "blocked_for"]

log = logging.getLogger(__name__)

NOT_ISOLATED = (
    "agents are not isolated from each other (the process backend runs them as this user; run "
    "as root or use the nspawn backend)"
)
"""The warning a hive whose agents share its user logs once at start."""

_ISOLATE = ("auto", "on", "off")
_warned = False
_warned_lock = Lock()

_DROP_SHIM = (
    "import os, signal, sys\n"
    "u, g, s = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
    "for n in filter(None, sys.argv[4].split(',')):\n"
    "    signal.signal(int(n), signal.SIG_DFL)\n"
    "os.setgroups([s])\n"
    "os.setresgid(g, g, g)\n"
    "os.setresuid(u, u, u)\n"
    "try:\n"
    "    os.execv(sys.argv[5], sys.argv[6:])\n"
    "except OSError as exc:\n"
    "    print(f'cannot run {sys.argv[5]!r}: {exc}', file=sys.stderr)\n"
    "    sys.exit(127)\n"
)
"""Runs as the hive's user: resets the given signals, drops to the agent's uid, execs."""


def interpreter_paths(python: str) -> tuple[str, ...]:
    """What an isolated agent's uid must reach to run the hive's Python: the interpreter and
    its prefixes (a venv's ``sys.prefix`` is reachable while the interpreter and the standard
    library it links to, under ``sys.base_prefix``, may sit under a 0700 ``/root``)."""
    return tuple(dict.fromkeys((sys.prefix, sys.base_prefix, python)))


def blocked_for(path: str | os.PathLike[str], uid: int, gids: Sequence[int], *,
                need: int = 0o1) -> str | None:
    """The first component of ``path`` (symlinks resolved) that ``uid`` with groups ``gids``
    cannot search (directories) or use with ``need`` (the file: 1 run, 4 read); None when it
    can get there. A missing path reads as blocked."""
    real = os.path.realpath(path)
    parts = Path(real).parts
    for i in range(1, len(parts) + 1):
        current = os.path.join(*parts[:i])
        try:
            st = os.stat(current)
        except OSError:
            return current
        wanted = need if i == len(parts) else 0o1
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid in gids:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if bits & wanted != wanted:
            return current
    return None


def _describe(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"'{path}' ({exc.strerror})"
    return f"'{path}' (mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid})"


def _warn_not_isolated(why: str) -> None:
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    log.warning("%s: %s", NOT_ISOLATED, why)

@dataclass
class _Running(Run):
    """One running keeper: its pid is also the container's process group."""

    uid: int | None = None
    """The agent's own uid when isolated (its gid is the same number)."""

    @property
    def pgid(self) -> int:
        return self.proc.pid


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
        isolate: str = "auto",
        uid_base: int = 200000,
    ) -> None:
        """``state_dir``: the hive's (agents live in ``<state_dir>/agents/<name>``); ``clock``
        stamps ``since``/``when``; ``grace`` is the default stop escalation; ``host_env`` the
        environment agents inherit PATH/LANG/TZ from (default: this process's); ``isolate``
        (``auto``, ``on``, ``off``) and ``uid_base``: each agent under its own uid (see the
        module docstring)."""
        super().__init__(state_dir, clock=clock, grace=grace, start_timeout_s=start_timeout_s,
                         host_env=host_env)
        self._python = python
        self._shell = shell or ("/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh")
        if not isinstance(uid_base, int) or not 1000 <= uid_base < 2**31 - 2**20:
            raise ConfigError(
                f"[process] uid_base must be a uid from 1000 below 2^31 - 2^20 with room for the "
                f"agents above it, got {uid_base!r}"
            )
        self._uid_base = uid_base
        self._uid_lock = Lock()
        self._uids: dict[str, int] = {}
        self.isolated, self.isolation = self._decide(isolate)
        if not self.isolated:
            _warn_not_isolated(self.isolation)
        else:
            log.info("process backend: %s", self.isolation)

    @property
    def shared_gid(self) -> int:
        """The group every isolated agent has: it may search the state dir and ``agents/``."""
        return self._uid_base

    def _decide(self, isolate: str) -> tuple[bool, str]:
        if isolate not in _ISOLATE:
            raise ConfigError(
                f"[process] isolate must be one of {', '.join(_ISOLATE)}, got {isolate!r}"
            )
        if isolate == "off":
            return False, 'not isolated: [process] isolate = "off"'
        if os.geteuid() != 0:
            if isolate == "on":
                raise ConfigError(
                    '[process] isolate = "on" needs the hive to run as root (it gives each '
                    "agent a uid of its own): run it as root, use the nspawn backend, or set "
                    'isolate = "auto"'
                )
            return False, "not isolated: the hive does not run as root"
        if isolate == "auto":
            probe = (self._uid_base + 1, [self._uid_base + 1, self._uid_base])
            for path in interpreter_paths(self._python):
                blocker = blocked_for(path, *probe)
                if blocker is not None:
                    return False, (
                        f"not isolated: {_describe(blocker)} keeps an unprivileged uid from "
                        f"the hive's Python '{path}' (and the claude CLI it bundles); make it "
                        'searchable (chmod o+x) or set [process] isolate = "on" with a [model] '
                        "claude_path every user can run"
                    )
        return True, f"each agent runs under its own uid (from {self._uid_base + 1})"

    # -- the interface ---------------------------------------------------------------------

    def create(self, name: str, spec: ContainerSpec) -> None:
        """As :meth:`ChildBackend.create`; an isolated agent's uid is picked and recorded here
        (creates are serialized so two never pick the same one)."""
        with self._uid_lock:
            super().create(name, spec)

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
                if run.uid is not None:
                    args = self._exec_argv(name, run, args, full_env, where, ignored)
                elif ignored:
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

    def _exec_argv(
        self, name: str, run: _Running, args: list[str], env: Mapping[str, str], where: str,
        ignored: Sequence[int],
    ) -> list[str]:
        """The argv that runs ``args`` as the agent: the drop shim (with ``ignored`` signals
        reset); HiveError when the program is out of the agent's reach."""
        assert run.uid is not None
        paths = self._paths(name)
        shimmed = default_signals_argv(
            args, ignored or [signal.SIGINT], python=self._python, path=env.get("PATH"),
            cwd=where,
        )
        resolved = shimmed[6]
        blocker = blocked_for(resolved, run.uid, [run.uid, self.shared_gid])
        if blocker is not None:
            raise HiveError(
                f"container {name}: '{resolved}' cannot be run by the agent's own uid "
                f"{run.uid}: {_describe(blocker)} keeps it out; install it where every user "
                "can read and run it (for the claude CLI: [model] claude_path under /opt or "
                '/usr/local), or set [process] isolate = "off" (agents are then not isolated)'
            )
        self._hand_over(paths, args, run.uid)
        names = ",".join(str(int(s)) for s in sorted(ignored))
        return [self._python, "-I", "-S", "-c", _DROP_SHIM, str(run.uid), str(run.uid),
                str(self.shared_gid), names, resolved, *args]

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
            if run.uid is not None:
                self._hand_over(paths, [], run.uid)
                argv = [self._python, "-I", "-S", "-c", _DROP_SHIM, str(run.uid), str(run.uid),
                        str(self.shared_gid), "", argv[0], *argv]
            pid, master = spawn_on_pty(argv, env, paths.state, python=self._python)
            self._track_shell(run, pid)  # a session leader: its pid is its process group
        log.info("container %s: shell pid %d on a PTY", name, pid)
        return pid, master

    # -- internals -------------------------------------------------------------------------

    def _created(self, name: str, paths: AgentPaths, spec: ContainerSpec) -> dict[str, object]:
        return {"uid": self._free_uid()} if self.isolated else {}

    def _free_uid(self) -> int:
        """The lowest uid above ``uid_base`` no agent's record holds and no host account has
        (under the uid lock)."""
        used: set[int] = set()
        for marker in (self._state_dir / "agents").glob("*/container.json"):
            try:
                record = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and isinstance(record.get("uid"), int):
                used.add(record["uid"])
        uid = self._uid_base + 1
        while uid in used or _host_account(uid):
            uid += 1
        return uid

    def _agent_uid(self, name: str, paths: AgentPaths) -> int:
        """The agent's recorded uid; a container created before isolation gets one now."""
        with self._uid_lock:
            record = read_marker(paths) or {}
            uid = record.get("uid")
            if uid is None:
                uid = self._free_uid()
                write_marker(paths, {**record, "uid": uid})
                log.info("container %s: given its own uid %d", name, uid)
        if not isinstance(uid, int) or uid <= self._uid_base:
            raise StartFailure(
                f"container {name}: its record '{paths.root / 'container.json'}' holds uid "
                f"{uid!r}, not one above [process] uid_base {self._uid_base}: destroy the "
                "container (keep_state=True keeps its state) and create it again"
            )
        return uid

    def _prepare(self, name: str, paths: AgentPaths) -> None:
        super()._prepare(name, paths)
        if not self.isolated:
            return
        uid = self._agent_uid(name, paths)
        shared = self.shared_gid
        for directory in (self._state_dir, self._state_dir / "agents"):
            os.chown(directory, -1, shared)  # the hive's user keeps it; agents may search it
            os.chmod(directory, 0o710)
        os.chown(paths.root, -1, uid)
        os.chmod(paths.root, 0o710)
        for own in (paths.state, paths.claude, paths.home, paths.tmp):
            _chown_tree(own, uid)
            os.chmod(own, 0o700)
        blocker = blocked_for(paths.state, uid, [uid, shared], need=0o7)
        if blocker is not None:
            raise StartFailure(
                f"container {name}: its uid {uid} cannot reach its state dir "
                f"'{paths.state}': {_describe(blocker)} is in the way; keep the hive's state "
                "dir under directories every user may search (chmod o+x), e.g. /var/lib/hive"
            )
        self._uids[name] = uid

    def _hand_over(self, paths: AgentPaths, args: Sequence[str], uid: int) -> None:
        """Give the agent what the hive wrote for it: the ``claude/`` tree, and each argument
        that names a path in its own directories (with the directories leading to it)."""
        _chown_tree(paths.claude, uid)
        owned = (paths.state, paths.claude, paths.home, paths.tmp)
        for arg in args:
            if not arg.startswith("/"):
                continue
            path = Path(os.path.normpath(arg))
            top = next((d for d in owned if d in path.parents), None)
            if top is None or any(
                p.is_symlink() for p in path.parents if top in p.parents
            ):
                continue  # a directory of the agent's turned symlink: nothing is handed over
            while path != top:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    break
                if st.st_uid != uid and not stat.S_ISLNK(st.st_mode):
                    os.lchown(path, uid, uid)
                path = path.parent

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
        return _Running(proc=proc, control=proc.stdin, since=self._clock(), env=env,
                        uid=self._uids.get(name) if self.isolated else None)

    def _members(self, run: _Running) -> set[int]:
        with self._live_shells(run) as shells:
            groups = [run.pgid, *shells]
        return live_members(groups) - {run.pgid}

    def _signal(self, run: _Running, sig: signal.Signals) -> None:
        with self._live_shells(run) as shells:  # not reaped: their pids cannot be reused
            if sig == signal.SIGINT:
                signal_groups(shells, signal.SIGHUP)  # a hang-up ends a login shell
            signal_groups([run.pgid, *shells], sig)  # at SIGKILL the keeper goes too

    def _kill_leader(self, run: _Running) -> None:
        signal_groups([run.pgid], signal.SIGKILL)

    def _kill_rest(self, run: _Running) -> None:
        # The zombie keeper still holds the group id, so this cannot hit a stranger's group.
        with self._live_shells(run) as shells:
            signal_groups([run.pgid, *shells], signal.SIGKILL)


def _host_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _chown_tree(top: Path, uid: int) -> None:
    """Every entry under ``top`` (and ``top``) owned by ``uid:uid``; symlinks themselves,
    never what they point to; entries already the agent's are left alone. Walked by directory
    descriptors (``fwalk``), so a directory the running agent swaps for a symlink meanwhile
    leads nowhere outside; a file with other hard links is left alone (it may be a link to a
    file of the host's)."""
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        for entry in (".", *dirnames, *filenames):
            try:
                st = os.stat(entry, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_uid == uid and st.st_gid == uid:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                log.warning("'%s/%s' has %d hard links: not given to uid %d", _dirpath, entry,
                            st.st_nlink, uid)
                continue
            os.chown(entry, uid, uid, dir_fd=dirfd, follow_symlinks=False)
