"""Each agent in a real, unprivileged ``systemd-nspawn`` container, the hive's child.

The container (``hive-<name>``) runs without systemd as PID 1 and without machined::

    systemd-nspawn --register=no --keep-unit -q -D / --volatile=yes --console=pipe
        --private-users=pick --private-users-ownership=off --machine=hive-<name>
        --bind=<agent>/state:/state:idmap --bind=<agent>/home:/agent/home:idmap
        --bind=<agent>/claude:/agent/claude:idmap --bind=<agent>/tmp:/tmp:idmap
        --bind-ro=<the hive's Python prefix, its package, /etc/passwd…> --chdir=/state
        [--private-network]
        -- <python> -m hive_actors.containers.keeper keep --name <name> --init

- **Users**: the container's uid 0 is an unprivileged host range (``--private-users=pick``:
  ``/proc/<pid>/uid_map`` reads ``0 <base> 65536``); the agent's directories are bound with
  ``idmap``, so a file root writes in ``/state`` is owned by uid 0 on both sides and keeps its
  owner across restarts whatever range the next run picks. A configuration that would run the
  agent as host root (``private_users = "no"``, ``"identity"`` or a range from 0) is refused
  unless ``unsafe_agents_run_as_host_root`` is set (:mod:`.nspawnconf`).
- **Files**: a throwaway tmpfs root with the host's ``/usr`` read-only; the hive's Python prefix
  and package (where they are not under ``/usr``; the bundled ``claude`` CLI lives in the
  prefix) and a few ``/etc`` files (passwd, group, hosts, nsswitch.conf, ssl) bound read-only
  at their host paths. Inside, ``/state`` is the agent's state dir, ``HOME`` = ``/agent/home``,
  ``CLAUDE_CONFIG_DIR`` = ``/agent/claude``, ``TMPDIR`` = ``/tmp`` (:meth:`inside`,
  :meth:`environment`).
- **Network** (``[nspawn] network``): ``host`` (the default) shares the host's (the hive's MCP
  endpoint and the model API on loopback are reached as on the host). ``private`` gives each
  container its own network namespace (``--private-network``: only its own loopback) where the
  hive relays exactly two loopback ports (:mod:`.netrelay`): those of the URLs it hands the
  program it execs, ``ANTHROPIC_BASE_URL`` (the model API) and the ``hive`` server of its
  ``--mcp-config`` (the MCP endpoint). Inside, ``127.0.0.1:PORT`` is a listener of the hive's
  in the container's namespace that forwards each connection to the host's ``127.0.0.1:PORT``;
  nothing else of the host or the internet is reachable. Those URLs must be loopback
  (ConfigError otherwise: a real API endpoint needs a local proxy for now). The relay ends
  with the container. Child mode only for now (unit mode refuses it).
- **The leader**: the keeper (:mod:`.keeper`, ``--init``: it also reaps orphans) as the
  container's PID 1, on a ``--console=pipe`` console: its ``ready`` line on stdout is the
  readiness handshake (bounded by ``start_timeout_s``), its stdin the control pipe.
  :attr:`ContainerStatus.pid` is its host pid. ``systemd-nspawn`` itself is the hive's child;
  a reaper thread waits on it and publishes the :class:`ContainerExit` like the process
  backend (:mod:`.child`).
- **exec / pty_shell**: :mod:`.enter` joins the leader's namespaces (user first), becomes the
  container's root, forks the program into the container's pid namespace and forwards SIGINT,
  SIGTERM, SIGHUP and SIGQUIT to it; the caller's ``Popen`` is that launcher (its own session),
  so the harness's deadline signals reach the CLI and its exit status reads as the CLI's.
- **Modes**: this is child mode; with systemd as PID 1 (``[nspawn] mode = "auto"``, or
  ``"unit"``) :func:`nspawn_backend` makes :class:`~hive_actors.containers.nspawn_unit.
  NspawnUnitBackend` instead: the same command line as a transient ``hive-agent@<name>.service``.
- **Stop**: SIGINT, SIGTERM, SIGKILL to every process in the container's pid namespace but the
  leader (each after its grace), SIGHUP first to the launchers of the PTY shells not released
  yet (:meth:`~hive_actors.containers.child.ChildBackend.release_shell`: the hive's children,
  never reaped while tracked), then the leader's closed control pipe ends the container.
  A leader killed under the hive ends the pid namespace and with it everything inside.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hive_actors.containers.base import ContainerSpec, StopGrace, find_tool
from hive_actors.containers.child import ChildBackend, Run, inherited_env
from hive_actors.containers.netrelay import LoopbackRelay
from hive_actors.containers.nspawnconf import check_network, check_private_users, resolve_mode
from hive_actors.containers.procgroup import log_tail, read_line, wait_until
from hive_actors.containers.terminal import _PACKAGE_PARENT, keeper_argv, spawn_on_pty
from hive_actors.errors import ConfigError, HiveError, StartFailure
from hive_actors.paths import AgentPaths

__all__ = ["CONTAINER_ENV", "STATE_MOUNT", "NspawnBackend", "nspawn_backend"]

log = logging.getLogger(__name__)

STATE_MOUNT = "/state"
"""Where the agent's ``state/`` appears inside (its processes' working directory)."""

_MOUNTS = (("state", STATE_MOUNT), ("home", "/agent/home"), ("claude", "/agent/claude"),
           ("tmp", "/tmp"))
"""The agent's directories (an :class:`AgentPaths` attribute) and where each is bound."""

CONTAINER_ENV: Mapping[str, str] = {
    "HOME": "/agent/home",
    "CLAUDE_CONFIG_DIR": "/agent/claude",
    "TMPDIR": "/tmp",
    "XDG_RUNTIME_DIR": "/tmp",
}
"""An agent's own variables inside its container (over PATH/LANG/TZ of the host)."""

_ETC = ("/etc/passwd", "/etc/group", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl",
        "/etc/ca-certificates")
"""Host files a program inside needs to name its user and reach hosts (read-only)."""

_ENTER = str(Path(__file__).with_name("enter.py"))
_FIX_INSTALL = "install it (apt-get install systemd-container) or set [hive] backend = \"process\""
_SIGNAL_RE = re.compile(r"terminated by signal ([A-Z0-9]+)")
_HIVE_SERVER = "hive"
"""The hive's own server in an ``--mcp-config`` (``hive_actors.mcp.tokens.HIVE_SERVER``)."""


@dataclass
class _Running(Run):
    """A running ``systemd-nspawn`` (``proc``) and its container."""

    init: int = 0
    """The container's PID 1 (the keeper) as the host sees it."""
    pidns: tuple[int, int] = (0, 0)
    """Its pid namespace (device, inode): what tells the container's processes."""
    log_path: Path | None = None
    relay: LoopbackRelay | None = None
    """With a private network: the loopback ports relayed into it (made at the first exec
    that needs one, closed when the run ends)."""

    @property
    def leader(self) -> int:
        return self.init


class NspawnBackend(ChildBackend[_Running]):
    """Agents in unprivileged ``systemd-nspawn`` containers (see the module). Thread-safe."""

    kind = "nspawn"
    mode = "child"
    """``child``: the container is this hive's child (``unit``: :mod:`.nspawn_unit`)."""
    unit_prefix: str | None = None
    """No systemd units: the reaper reports every exit."""
    _leader_exit_s = 10.0  # nspawn tears the container down after its PID 1 exits

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        private_users: str = "pick",
        unsafe_agents_run_as_host_root: bool = False,
        start_timeout: float = 30.0,
        command: str = "systemd-nspawn",
        clock: Callable[[], float] = time.time,
        grace: StopGrace | None = None,
        python: str = sys.executable,
        shell: str | None = None,
        ro_paths: Sequence[str] = (),
        host_env: Mapping[str, str] | None = None,
        proc: str = "/proc",
        network: str = "host",
    ) -> None:
        """``private_users``: ``--private-users`` (see :mod:`.nspawnconf`); ``command``: the
        ``systemd-nspawn`` to run (a name on PATH or a path); ``ro_paths``: more host paths
        bound read-only at the same place (a ``claude`` outside the Python prefix);
        ``network``: ``host`` or ``private`` (see the module)."""
        super().__init__(state_dir, clock=clock, grace=grace, start_timeout_s=start_timeout,
                         host_env=host_env)
        self._userns = check_private_users(
            private_users, unsafe_agents_run_as_host_root, source="nspawn backend"
        )
        self.network = check_network(network, source="nspawn backend")
        if self.network == "private" and self.mode != "child":
            raise ConfigError(
                'nspawn backend: [nspawn] network = "private" runs in child mode only for now '
                "(the hive relays the container's loopback ports itself, and in unit mode it "
                'does not see a container end): set [nspawn] mode = "child", or network = '
                '"host"'
            )
        self._private_users = private_users
        self._command = command
        self._python = python
        self._shell = shell or "/bin/bash"
        self._proc = proc
        # The package itself, not its parent: a checkout's parent may hold a state dir.
        self._ro = _ro_binds([python, sys.prefix, sys.base_prefix, sys.exec_prefix,
                              os.path.join(_PACKAGE_PARENT, "hive_actors"), *ro_paths])
        state = os.path.realpath(self._state_dir)
        for bind in self._ro:
            shared = bind.split(":", 1)[0]
            if _under(state, shared):
                raise ConfigError(
                    f"nspawn backend: the hive's state dir '{state}' is inside '{shared}', "
                    "which every agent's container sees read-only: each agent could read the "
                    "others' files and the hive's database. Put the state dir elsewhere "
                    "(--state-dir / state_dir), outside the hive's Python and its package"
                )

    # -- the interface (the rest is ChildBackend's) ----------------------------------------

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the container, through the :mod:`.enter` launcher (its own
        session on the host: signal ``proc.pid`` and the launcher passes it on)."""
        with self._entering(name, argv, env) as (run, args, full_env):
            where = cwd or STATE_MOUNT
            if self.network == "private":
                self._relay(name, run, args, full_env)
            try:
                return subprocess.Popen(
                    self._enter_argv(run, where, args),
                    env=full_env,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    restore_signals=True,
                )
            except OSError as exc:
                raise HiveError(
                    f"container {name}: cannot start the launcher with '{self._python}': "
                    f"{exc}; check the hive's Python"
                ) from exc

    def relayed(self, name: str) -> list[tuple[str, int]]:
        """With a private network: the host loopback ``(address, port)`` pairs relayed into the
        container's running now (empty when it does not run or has none yet)."""
        slot = self._slot(name)
        with slot.state:
            run = slot.running
            relay = run.relay if run is not None else None
        return relay.endpoints if relay is not None else []

    def inside(self, name: str, host_path: str | os.PathLike[str]) -> str:
        """The agent's ``state/``, ``home/``, ``claude/`` and ``tmp/`` as bound inside
        (``<state>/x`` is ``/state/x``); ConfigError for any other host path."""
        paths = self._paths(name)
        path = Path(os.path.abspath(host_path))
        for attr, mount in _MOUNTS:
            try:
                relative = path.relative_to(getattr(paths, attr).absolute())
            except ValueError:
                continue
            return str(Path(mount) / relative) if relative.parts else mount
        raise ConfigError(
            f"container {name}: '{path}' is outside the agent's directories bound into its "
            f"container ({', '.join(f'{a}/ at {m}' for a, m in _MOUNTS)} under {paths.root})"
        )

    def pty_shell(self, name: str) -> tuple[int, int]:
        """A login shell inside the container on a new PTY (its foreground process group)."""
        paths = self._paths(name)
        with self._entering(name, [self._shell, "-l"], {"TERM": "xterm-256color"}) as (
            run, shell, env,
        ):
            argv = self._enter_argv(run, STATE_MOUNT, shell, tty=True)
            pid, master = spawn_on_pty(argv, env, paths.root, python=self._python)
            self._track_shell(run, pid)  # the launcher: the hive's child until released
        log.info("container %s: shell pid %d on a PTY", name, pid)
        return pid, master

    # -- ChildBackend's hooks --------------------------------------------------------------

    def _created(self, name: str, paths: AgentPaths, spec: ContainerSpec) -> dict[str, Any]:
        self._preflight(name, paths)
        return {"private_users": self._private_users}

    def _base_env(self, paths: AgentPaths, record: Mapping[str, object]) -> dict[str, str]:
        return inherited_env(self._host_env, CONTAINER_ENV, record)

    def _prepare(self, name: str, paths: AgentPaths) -> None:
        self._preflight(name, paths)

    def _spawn(self, name: str, paths: AgentPaths, env: dict[str, str]) -> _Running:
        log_path = paths.root / "nspawn.log"
        argv = self._nspawn_argv(name, paths)
        try:
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen(
                    argv,
                    cwd="/",
                    env=self._tool_env(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    start_new_session=True,  # the hive's Ctrl-C is not the container's
                )
        except OSError as exc:
            raise StartFailure(
                f"container {name}: cannot run {argv[0]!r}: {exc}; {_FIX_INSTALL}"
            ) from exc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready = read_line(proc.stdout, self._start_timeout_s)
        finally:
            proc.stdout.close()
        init = self._find_init(proc.pid) if ready.startswith(b"ready") else None
        if init is None:
            _kill(proc.pid)
            try:
                proc.wait(timeout=self._start_timeout_s)
            except subprocess.TimeoutExpired:
                pass
            proc.stdin.close()
            why = "said nothing" if not ready else f"said {ready!r}"
            raise StartFailure(
                f"container {name}: systemd-nspawn {why} within {self._start_timeout_s:g}s "
                f"(exit {proc.returncode}; the container exited at once or never came up); "
                f"its log '{log_path}' ends: {log_tail(log_path)!r}; fix what it names, or "
                'set [hive] backend = "process"'
            )
        st = os.stat(f"{self._proc}/{init}/ns/pid")
        return _Running(proc=proc, control=proc.stdin, since=self._clock(), env=env, init=init,
                        pidns=(st.st_dev, st.st_ino), log_path=log_path)

    def _members(self, run: _Running) -> set[int]:
        return _ns_members(run.pidns, self._proc) - {run.init}

    def _reap(self, name: str, slot: Any, run: _Running) -> None:
        try:
            super()._reap(name, slot, run)
        finally:
            with slot.state:  # no exec can make it anew: the run is no longer the slot's
                relay, run.relay = run.relay, None
            if relay is not None:
                relay.close()

    def _signal(self, run: _Running, sig: signal.Signals) -> None:
        if sig == signal.SIGINT:
            # A terminal hang-up ends a login shell (its launcher passes it on); only shells
            # not released, under the lock: their pids cannot have been reused.
            with self._live_shells(run) as shells:
                for pid in shells:
                    _send(pid, signal.SIGHUP)
        for pid in sorted(self._members(run)):
            _send(pid, sig)

    def _kill_leader(self, run: _Running) -> None:
        # PID 1 gone, the kernel kills the whole pid namespace; nspawn exits after it.
        if self._alive_init(run):
            _send(run.init, signal.SIGKILL)
        if not wait_until(lambda: not self._alive_init(run), 2.0):
            _send(run.proc.pid, signal.SIGKILL)

    def _kill_rest(self, run: _Running) -> None:
        # nspawn is a zombie; its PID 1 normally died first (or with it: PR_SET_PDEATHSIG).
        if self._alive_init(run):
            _send(run.init, signal.SIGKILL)

    def _decode(
        self, run: _Running, info: os.waitid_result | None, returncode: int
    ) -> tuple[str, int | None, int | None]:
        # nspawn exits non-zero when its container's PID 1 was killed; its log says how.
        if run.log_path is not None and returncode != 0 and not run.stopping:
            found = _SIGNAL_RE.findall(log_tail(run.log_path, 400))
            if found and hasattr(signal, f"SIG{found[-1]}"):
                return "signal", None, int(getattr(signal, f"SIG{found[-1]}"))
        return super()._decode(run, info, returncode)

    # -- internals -------------------------------------------------------------------------

    def _tool_env(self) -> dict[str, str]:
        return {"PATH": self._host_env.get("PATH", os.defpath), "LC_ALL": "C"}

    def _exe(self, name: str) -> str:
        return find_tool(self._command, self._tool_env()["PATH"], _FIX_INSTALL,
                         who=f"container {name}: ")

    def _preflight(self, name: str, paths: AgentPaths) -> None:
        """The clear errors before nspawn's own: tool, root, user namespaces (the host's
        :func:`preflight`, naming the agent), then the agent's state dir."""
        try:
            preflight(command=self._command, path=self._tool_env()["PATH"], proc=self._proc,
                      userns=self._userns)
        except ConfigError as exc:
            raise ConfigError(f"container {name}: {exc}") from exc
        for directory in (paths.root, paths.state):
            if directory.exists() and not directory.is_dir():
                raise ConfigError(
                    f"container {name}: its state dir '{directory}' is not a directory, so "
                    "nothing can be written there: move that file away"
                )
        try:
            paths.create()
            probe = paths.state / ".hive-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"container {name}: its state dir '{paths.state}' cannot be written "
                f"({exc.strerror}): fix its permissions, free space or a read-only mount"
            ) from exc

    def _nspawn_argv(self, name: str, paths: AgentPaths) -> list[str]:
        idmap = ":idmap" if self._userns else ""
        argv = [
            self._exe(name), "--register=no", "--keep-unit", "-q", "-D", "/", "--volatile=yes",
            "--console=pipe", f"--machine=hive-{name}",
            f"--private-users={self._private_users}",
        ]
        if self._userns:
            argv.append("--private-users-ownership=off")
        if self.network == "private":
            argv.append("--private-network")
        for attr, mount in _MOUNTS:
            argv.append(f"--bind={getattr(paths, attr).absolute()}:{mount}{idmap}")
        for path in self._ro:
            argv.append(f"--bind-ro={path}")
        argv += [
            f"--chdir={STATE_MOUNT}",
            f"--setenv=PYTHONPATH={_PACKAGE_PARENT}",
            "--",
            *keeper_argv(self._python, "keep", "--name", name, "--init"),
        ]
        return argv

    def _relay(self, name: str, run: _Running, argv: Sequence[str],
               env: Mapping[str, str]) -> None:
        """Relay into the run's private network the loopback ports of the URLs the hive
        hands this program: ``ANTHROPIC_BASE_URL`` and the hive server of its
        ``--mcp-config`` (ConfigError for one that is not loopback)."""
        wanted: list[tuple[str, str]] = []
        base = env.get("ANTHROPIC_BASE_URL")
        if base:
            wanted.append(("the model API (ANTHROPIC_BASE_URL)", base))
        url = self._mcp_url(name, argv)
        if url:
            wanted.append(("the hive's MCP endpoint", url))
        if not wanted:
            return
        if run.relay is None:
            run.relay = LoopbackRelay(name, run.init, proc=self._proc)
        for what, url in wanted:
            try:
                run.relay.serve([url], what=what)
            except ConfigError as exc:
                raise ConfigError(f"container {name}: {exc}") from exc

    def _mcp_url(self, name: str, argv: Sequence[str]) -> str | None:
        """The ``hive`` server's URL in the ``--mcp-config`` file ``argv`` names (a path
        inside the container, read on the host), if any."""
        path = None
        for i, arg in enumerate(argv):
            if arg == "--mcp-config" and i + 1 < len(argv):
                path = argv[i + 1]
            elif arg.startswith("--mcp-config="):
                path = arg.split("=", 1)[1]
        if path is None:
            return None
        host = self._host_path(name, path)
        if host is None:
            log.warning("container %s: --mcp-config %s is outside the agent's directories: "
                        "its hive URL is not relayed into the private network", name, path)
            return None
        try:
            servers = json.loads(Path(host).read_text()).get("mcpServers") or {}
            url = (servers.get(_HIVE_SERVER) or {}).get("url")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("container %s: cannot read the hive's MCP URL from %s (%s): it is not "
                        "relayed into the private network", name, host, exc)
            return None
        return url if isinstance(url, str) and url else None

    def _host_path(self, name: str, inside: str) -> str | None:
        """The host path of ``inside`` (a path in the agent's bound directories); None for
        any other path."""
        paths = self._paths(name)
        for attr, mount in _MOUNTS:
            try:
                relative = Path(inside).relative_to(mount)
            except ValueError:
                continue
            if ".." in relative.parts:
                return None
            return str(getattr(paths, attr).absolute() / relative)
        return None

    def _enter_argv(
        self, run: _Running, cwd: str, argv: Sequence[str], *, tty: bool = False
    ) -> list[str]:
        return [self._python, "-I", "-S", _ENTER, "--leader", str(run.init), "--cwd", cwd,
                *(["--tty"] if tty else []), "--", *argv]

    def _find_init(self, nspawn: int) -> int | None:
        """The container's PID 1: nspawn's child whose innermost pid is 1."""
        for pid in _children(nspawn, self._proc):
            try:
                status = Path(f"{self._proc}/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == "1" \
                        and len(line.split()) > 2:
                    return pid
        return None

    def _alive_init(self, run: _Running) -> bool:
        """Whether the container's PID 1 still runs (and that pid is still it)."""
        try:
            st = os.stat(f"{self._proc}/{run.init}/ns/pid")
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == run.pidns and run.init in _ns_members(
            run.pidns, self._proc, only=(run.init,)
        )


def preflight(*, command: str = "systemd-nspawn", path: str | None = None, proc: str = "/proc",
              userns: bool = True) -> str:
    """Whether this host can run the backend's containers at all, before anything starts:
    ``command`` on ``path`` (default: ``$PATH``), root, and (``userns``) user namespaces
    enabled. Returns the tool's path; a ConfigError naming what to install or enable."""
    exe = find_tool(command, os.environ.get("PATH", os.defpath) if path is None else path,
                    "install it (Debian: apt-get install systemd-container)")
    if os.geteuid() != 0:
        raise ConfigError(
            f"the nspawn backend needs root (systemd-nspawn makes the containers; this runs as "
            f"uid {os.geteuid()}): run it as root (sudo)"
        )
    limit_file = Path(proc, "sys", "user", "max_user_namespaces")
    if userns and not limit_file.exists() and not Path(proc, "self", "ns", "user").exists():
        raise ConfigError(
            "this kernel has no user namespaces (no /proc/self/ns/user), and the containers' "
            "root must be an unprivileged host uid: boot a kernel built with CONFIG_USER_NS=y"
        )
    try:
        limit = int(limit_file.read_text()) if userns else None
    except (OSError, ValueError):
        limit = None
    if limit == 0:
        raise ConfigError(
            f"user namespaces are disabled ({limit_file} is 0), and the containers' root must "
            "be an unprivileged host uid: enable them (sysctl -w user.max_user_namespaces=65536)"
        )
    return exe


def nspawn_backend(
    state_dir: str | os.PathLike[str], *, mode: str = "auto", bus_address: str = "",
    **options: Any,
) -> NspawnBackend:
    """The nspawn backend ``[nspawn] mode`` asks for on this host: with systemd as PID 1
    (``auto``) or ``unit``, each container a transient unit (:class:`~hive_actors.containers.
    nspawn_unit.NspawnUnitBackend`, asking the systemd on ``bus_address``, empty: the system
    bus); otherwise (``child``) the hive's child (:class:`NspawnBackend`)."""
    if resolve_mode(mode) == "unit":
        from hive_actors.containers.nspawn_unit import NspawnUnitBackend

        return NspawnUnitBackend(state_dir, bus_address=bus_address, **options)
    return NspawnBackend(state_dir, **options)


def _ro_binds(paths: Sequence[str]) -> list[str]:
    """The distinct host directories among ``paths`` (a file: its directory) not under
    ``/usr`` (already there), plus the ``/etc`` files that exist, as ``--bind-ro`` args."""
    dirs: list[str] = []
    for raw in paths:
        if not raw:
            continue
        real = os.path.realpath(raw)
        if os.path.isfile(real):
            real = os.path.dirname(real)
            if os.path.basename(real) == "bin":  # a Python: bind its whole prefix
                real = os.path.dirname(real)
        if not os.path.isdir(real) or real == "/" or _under(real, "/usr"):
            continue
        dirs.append(real)
    kept: list[str] = []
    for d in sorted(set(dirs), key=len):
        if not any(_under(d, k) for k in kept):
            kept.append(d)
    return [f"{d}:{d}" for d in kept] + [f"{e}:{e}" for e in _ETC if os.path.exists(e)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _children(pid: int, proc: str) -> list[int]:
    try:
        text = Path(f"{proc}/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except (OSError, ValueError):
        pass
    found = []
    for entry in os.listdir(proc):  # no CONFIG_PROC_CHILDREN: scan for the parent
        if entry.isdigit():
            try:
                status = Path(f"{proc}/{entry}/status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry))
    return found


def _ns_members(
    pidns: tuple[int, int], proc: str, only: Sequence[int] | None = None
) -> set[int]:
    """Host pids of the live (not zombie) processes in pid namespace ``pidns``."""
    found: set[int] = set()
    entries = [str(p) for p in only] if only is not None else os.listdir(proc)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"{proc}/{entry}/ns/pid")
            if (st.st_dev, st.st_ino) != pidns:
                continue
            with open(f"{proc}/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        if fields and fields[0] not in (b"Z", b"X"):
            found.add(int(entry))
    return found


def _send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        _send(pid, signal.SIGKILL)
