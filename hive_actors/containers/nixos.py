"""The production backend: NixOS containers (``container@<name>.service``) via ``nixos-container``.

Commands (never ``--ensure-unique-name``: the container's name is the agent's)::

    nixos-container create  NAME --flake <agent>/config/applied#NAME
    nixos-container update  NAME --flake <agent>/config/applied#NAME   (start, after an apply)
    nixos-container start   NAME
    nixos-container stop    NAME
    nixos-container destroy NAME
    nixos-container status  NAME          -> up | down | gone
    nixos-container run     NAME -- /bin/sh -c LAUNCHER hive-env ENVFILE DIR ARGV   (exec, pty_shell)

``run`` enters the container through ``su -l``, which resets the environment, and a command line
is readable by every local user (``/proc/PID/cmdline``): the agent's variables, its credentials
among them, never travel in an argv. They go in a file only the hive's user can read,
``<state>/.hive-run/env-<random>`` (``/state/.hive-run/…`` inside); the fixed launcher
(:data:`_LAUNCHER`) opens it, deletes it, changes to DIR, exports the variables and execs ARGV.
The argv holds names and paths only. Should the launcher never run, the host deletes the file
once the process is reaped (:meth:`NixosBackend.exec`'s ``wait``/``poll``,
:meth:`NixosBackend.release_shell`). After ``create``, and before every ``start``, the
container's conf file gets the hive's host-side settings (see :mod:`.nixconf`: host network,
private users, ``/state``). **Imperative containers only**: nothing declares an agent's
container in the host's NixOS configuration.

**The manager's container** (the agent whose ``<agent>/role`` file, written by the config desk,
says ``manager``) also sees the other agents' config repositories under ``/hive/agents``
(:func:`~.nixrender.manager_binds`: ``proposed`` read-write, ``config`` with ``applied``
read-only, a draft's ``state`` read-write), and :meth:`NixosBackend.inside` names those paths as
it sees them. The binds are recomputed at each start of its container, and a running container
gains no bind: :meth:`NixosBackend.view_changed` tells when an agent staged since would be
mounted by a restart, and the manager's AgentActor then has itself restarted between two turns
(so a draft it staged appears in its container before its next turn).

``nixos-container`` runs with a fixed environment: PATH/HOME/NIX_* of the host and ``LC_ALL=C``,
nothing else (no API key of the hive leaks into a build). Each call is bounded; on a timeout the
whole command's process group is killed.

Crash events come from the D-Bus watcher, which calls :meth:`NixosBackend.report`; a stop the
hive asked for turns any exit reported for it into ``expected=True``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hive_actors.containers.base import (
    ContainerExit,
    ContainerSpec,
    ContainerStatus,
    ExitCallback,
    StopGrace,
    Subscribers,
    check_argv,
    check_env,
    find_tool,
)
from hive_actors.containers.files import read_marker, remove_agent_files, write_marker
from hive_actors.containers.nixconf import check_bind_source, check_private_users, host_conf
from hive_actors.containers.nixrender import manager_binds, read_role
from hive_actors.containers.terminal import spawn_on_pty
from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound, StartFailure
from hive_actors.paths import AgentPaths
from hive_actors.store.names import validate_name

__all__ = ["CONTAINER_ENV", "NixosBackend"]

log = logging.getLogger(__name__)

CONTAINER_ENV: Mapping[str, str] = {
    "HOME": "/root",
    "CLAUDE_CONFIG_DIR": "/root/.claude",
    "TMPDIR": "/tmp",
    "XDG_RUNTIME_DIR": "/tmp",
}
"""An agent's environment inside its NixOS container (PATH comes from its login shell)."""

STATE_MOUNT = "/state"
"""Where the agent's ``state/`` appears inside the container (its processes' working dir)."""

# Host variables nixos-container (and the nix build it runs) needs; nothing else is passed.
_TOOL_ENV = ("PATH", "HOME", "NIX_PATH", "NIX_REMOTE", "NIX_CONFIG", "NIX_SSL_CERT_FILE")
_FIX = 'install it or set [hive] backend = "process"'
_STDERR_TAIL = 1000

_RUN_DIR = ".hive-run"
"""Under the agent's state dir: where the environment files of ``run`` go (see the docstring)."""

_LAUNCHER = (
    'exec 3<"$1" || exit 126; rm -f -- "$1"; cd "$2" || exit 126; '
    'set -a; . /dev/fd/3; set +a; exec 3<&-; shift 2; exec "$@"'
)
"""``/bin/sh -c _LAUNCHER hive-env ENVFILE DIR ARGV…``: open the environment file, delete it,
change to DIR (with the login environment: no CDPATH of the agent's), export the file's
``K='V'`` lines, exec ARGV. Only positional parameters: an agent variable cannot shadow them."""

_SHELL_RESERVED = frozenset({
    "_", "BASHOPTS", "BASHPID", "BASH_ARGV0", "BASH_VERSINFO", "EPOCHREALTIME", "EPOCHSECONDS",
    "EUID", "FUNCNAME", "GROUPS", "HISTCMD", "LINENO", "OPTIND", "PPID", "RANDOM", "SECONDS",
    "SHELLOPTS", "SRANDOM", "UID",
})
"""Names the container's ``sh`` (bash) keeps for itself: read-only, or not carried to ARGV."""


def _env_file_text(env: Mapping[str, str], what: str) -> str:
    """``K='V'`` lines for ``sh``'s ``.`` (a ``'`` in V as ``'\\''``); ConfigError for a name
    that is not a shell identifier or that the shell keeps for itself, or a NUL in a value."""
    check_env(env, what=what)
    lines = []
    for key, value in env.items():
        if key in _SHELL_RESERVED:
            raise ConfigError(
                f"{what}: variable name {key!r} is reserved by the container's shell, which "
                "sets the environment of a command in a NixOS container: rename it"
            )
        quoted = value.replace("'", "'\\''")
        lines.append(f"{key}='{quoted}'\n")
    return "".join(lines)


class _RunProcess(subprocess.Popen[bytes]):
    """A ``nixos-container run`` whose environment file the host deletes once the process is
    reaped (through :meth:`wait`, :meth:`poll` or :meth:`communicate`), should the launcher in
    the container never have run."""

    _leftover: Callable[[], None] | None = None

    def poll(self) -> int | None:
        code = super().poll()
        if code is not None:
            self._cleanup()
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = super().wait(timeout)
        self._cleanup()
        return code

    def _cleanup(self) -> None:
        leftover, self._leftover = self._leftover, None
        if leftover is not None:
            leftover()


class NixosBackend:
    """Agents as NixOS containers, driven through the ``nixos-container`` CLI. Thread-safe."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        command: str = "nixos-container",
        conf_dir: str | os.PathLike[str] = "/etc/nixos-containers",
        clock: Callable[[], float] = time.time,
        grace: StopGrace | None = None,
        build_timeout_s: float = 1800.0,
        command_timeout_s: float = 120.0,
        host_env: Mapping[str, str] | None = None,
        private_users: str = "pick",
        unsafe_agents_run_as_host_root: bool = False,
    ) -> None:
        """``command``: the CLI (a name looked up on PATH, or a path); ``conf_dir``: where it
        keeps ``<name>.conf``; ``build_timeout_s`` bounds create/update (a nix build),
        ``command_timeout_s`` every other call (a stop adds its grace); ``private_users``: the
        conf file's ``PRIVATE_USERS`` (``[nixos]``; one that maps to the host's root is a
        ConfigError unless ``unsafe_agents_run_as_host_root``)."""
        self._private_users = check_private_users(
            private_users, unsafe_agents_run_as_host_root
        )
        self._host_root_ok = unsafe_agents_run_as_host_root
        if self._private_users != "pick":
            log.warning("nixos backend: PRIVATE_USERS=%s (not pick)", self._private_users)
        self._state_dir = Path(state_dir).absolute()
        self._command = command
        self._conf_dir = Path(conf_dir)
        self._clock = clock
        self._grace = grace or StopGrace()
        for label, value in (("build", build_timeout_s), ("command", command_timeout_s)):
            if not value > 0:
                raise ConfigError(f"nixos backend: {label}_timeout_s must be > 0, got {value}")
        self._build_timeout_s = build_timeout_s
        self._command_timeout_s = command_timeout_s
        host = dict(os.environ if host_env is None else host_env)
        self._tool_env = {k: host[k] for k in _TOOL_ENV if k in host}
        self._tool_env["LC_ALL"] = "C"
        self._subscribers = Subscribers()
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._stop_requested: set[str] = set()
        self._since: dict[str, float] = {}
        self._shell_files: dict[int, Callable[[], None]] = {}
        self._mounted: dict[str, frozenset[tuple[Path, str, bool]]] = {}
        """Per manager: the view binds its conf had when this backend last started it."""

    # -- the interface ---------------------------------------------------------------------

    def create(self, name: str, spec: ContainerSpec) -> None:
        """``nixos-container create NAME --flake FLAKE#NAME``, then the host-side conf."""
        paths = self._paths(name)
        flake = Path(os.path.abspath(spec.flake or paths.config / "applied"))
        with self._op(name):
            if read_marker(paths) is not None:
                raise Conflict(f"container {name} already exists: destroy it first")
            if not (flake / "flake.nix").is_file():
                raise ConfigError(
                    f"container {name}: '{flake}' has no flake.nix: the agent's config must "
                    "define nixosConfigurations." + name + " (commit a flake.nix in its "
                    "config/proposed and apply it)"
                )
            check_bind_source(paths.state)
            paths.create()
            self._run(name, ["create", name, "--flake", f"{flake}#{name}"], self._build_timeout_s)
            try:
                self._write_host_conf(name, paths)
            except HiveError:
                # Half a container is worse than none: the hive would start it without /state.
                self._run(name, ["destroy", name], self._command_timeout_s, check=False)
                raise
            write_marker(
                paths,
                {
                    "backend": "nixos",
                    "env": dict(spec.env),
                    "flake": str(flake),
                    "built": os.path.realpath(flake),
                    "created": self._clock(),
                },
            )
        log.info("container %s: created from %s", name, flake)

    def start(self, name: str) -> None:
        """Rebuild if the applied config changed since the last build, then start."""
        paths = self._paths(name)
        with self._op(name):
            record = read_marker(paths)
            if record is None:
                raise NotFound(f"container {name} does not exist: create it first")
            flake = str(record.get("flake", paths.config / "applied"))
            current = os.path.realpath(flake)
            if current != record.get("built"):
                # An approved config was applied since the last build (applied/ points at a
                # new checkout): rebuild before starting.
                self._run(
                    name, ["update", name, "--flake", f"{flake}#{name}"], self._build_timeout_s
                )
                write_marker(paths, {**record, "built": current})
            # The host-side settings again: the manager's view of the agents may have grown.
            # (No conf file: the CLI's start below says the container does not exist.)
            binds: list[tuple[Path, str, bool]] = []
            if (self._conf_dir / f"{name}.conf").exists():
                try:
                    binds = self._write_host_conf(name, paths)
                except HiveError as exc:
                    raise StartFailure(str(exc)) from exc
            with self._lock:
                self._stop_requested.discard(name)
            try:
                self._run(name, ["start", name], self._command_timeout_s)
            except HiveError as exc:
                raise StartFailure(str(exc)) from exc
            with self._lock:
                self._since[name] = self._clock()
                self._mounted[name] = frozenset(binds)
        log.info("container %s: started", name)

    def stop(self, name: str, *, grace: StopGrace | None = None) -> ContainerExit | None:
        """``nixos-container stop NAME`` (systemd's own stop escalation applies; ``grace``
        bounds how long the hive waits). The exit comes from the watcher: returns None."""
        grace = grace or self._grace
        self._paths(name)
        with self._op(name):
            with self._lock:
                self._stop_requested.add(name)
            proc = self._run(
                name, ["stop", name], self._command_timeout_s + grace.total, check=False
            )
            if proc.returncode != 0 and "does not exist" not in proc.stderr:
                raise HiveError(self._failure(name, ["stop", name], proc))
            with self._lock:
                self._since[name] = self._clock()
        return None

    def destroy(self, name: str, *, keep_state: bool) -> None:
        """``nixos-container destroy NAME``, then the agent's files (all but ``state/`` with
        ``keep_state``). Conflict if it runs."""
        paths = self._paths(name)
        with self._op(name):
            if self._status(name).state == "running":
                raise Conflict(f"container {name} is running: stop it before destroying it")
            self._run(name, ["destroy", name], self._command_timeout_s)
            remove_agent_files(paths, keep_state=keep_state)
            with self._lock:
                self._since.pop(name, None)
                self._mounted.pop(name, None)
        log.info("container %s: destroyed (state %s)", name, "kept" if keep_state else "removed")

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """``nixos-container run NAME -- LAUNCHER ENVFILE CWD ARGV`` (see the module docstring)
        in a new process group (signal it with ``os.killpg(proc.pid, …)``). The environment
        file goes at the latest when the returned process is reaped (``wait``/``poll``)."""
        argv_full, leftover = self._prepare_run(name, argv, env, cwd)
        try:
            proc = _RunProcess(
                argv_full,
                env=self._tool_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            leftover()
            raise HiveError(f"container {name}: cannot run {argv_full[0]!r}: {exc}") from exc
        except BaseException:
            leftover()
            raise
        proc._leftover = leftover
        return proc

    def run_argv(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> tuple[list[str], Callable[[], None]]:
        """The host argv :meth:`exec` runs (the CLI resolved on PATH), after writing the
        environment file it names; and what deletes that file (idempotent) once the process
        ended, should the launcher not have deleted it."""
        return self._prepare_run(name, argv, env, cwd)

    def inside(self, name: str, host_path: str | os.PathLike[str]) -> str:
        """The agent's state dir is bind-mounted at :data:`STATE_MOUNT`: ``<state>/x`` is
        ``/state/x`` inside; in the manager's container the other agents' repositories are
        under ``/hive/agents`` (see the module docstring); any other host path is not visible
        there (ConfigError)."""
        paths = self._paths(name)
        state = paths.state.absolute()
        path = Path(os.path.abspath(host_path))
        try:
            relative = path.relative_to(state)
        except ValueError:
            if read_role(paths.root) == "manager":
                # The longest source first: proposed/ lies inside config/.
                binds = sorted(self._views(name), key=lambda b: -len(b[0].parts))
                for source, target, _read_only in binds:
                    try:
                        rest = path.relative_to(source.absolute())
                    except ValueError:
                        continue
                    return str(Path(target) / rest) if rest.parts else target
            raise ConfigError(
                f"container {name}: '{path}' is outside the agent's state dir '{state}', which "
                f"is all the container sees of the host (at {STATE_MOUNT})"
            ) from None
        return str(Path(STATE_MOUNT) / relative) if relative.parts else STATE_MOUNT

    def environment(self, name: str) -> dict[str, str]:
        """:data:`CONTAINER_ENV` plus the spec's env."""
        return self._base_env(self._paths(name))

    def pty_shell(self, name: str) -> tuple[int, int]:
        """A login shell in the container on a new PTY, through ``nixos-container run``."""
        paths = self._paths(name)
        shell_env = {"TERM": "xterm-256color"}
        argv, leftover = self._prepare_run(name, ["bash", "-l"], shell_env, None)
        try:
            pid, master = spawn_on_pty(argv, self._tool_env, paths.state)
        except BaseException:
            leftover()
            raise
        with self._lock:
            self._shell_files[pid] = leftover
        return pid, master

    def release_shell(self, name: str, pid: int) -> None:
        """Reap a shell of :meth:`pty_shell` that exited, and delete its environment file if
        the launcher did not (``nixos-container stop`` ends the container, the host never
        signals a shell's pid)."""
        self._paths(name)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # reaped elsewhere
        with self._lock:
            leftover = self._shell_files.pop(pid, None)
        if leftover is not None:
            leftover()

    def status(self, name: str) -> ContainerStatus:
        """``nixos-container status NAME``: up → running, down → stopped, gone → absent."""
        self._paths(name)
        return self._status(name)

    def view_changed(self, name: str) -> bool:
        """Whether a restart of ``name``'s container would mount more than its last start
        did: True for the manager once another agent's repository appeared since (see the
        module docstring); False for any other agent, and for a container this backend has
        not started."""
        paths = self._paths(name)
        with self._lock:
            mounted = self._mounted.get(name)
        if mounted is None or read_role(paths.root) != "manager":
            return False
        return not set(self._views(name)) <= mounted

    def subscribe(self, callback: ExitCallback) -> Callable[[], None]:
        """Register an exit callback (called from the thread that calls :meth:`report`)."""
        return self._subscribers.add(callback)

    def report(self, event: ContainerExit) -> None:
        """The crash watcher's entry: hand ``event`` to the subscribers, marked expected when
        the hive asked for that container's stop."""
        with self._lock:
            asked = event.name in self._stop_requested
            self._since[event.name] = event.when
        if asked and not event.expected:
            event = dataclasses.replace(event, expected=True)
        self._subscribers.publish(event)

    def close(self) -> None:
        """Nothing to release: systemd owns the containers, the watcher the events."""

    # -- internals -------------------------------------------------------------------------

    def _paths(self, name: str) -> AgentPaths:
        return AgentPaths.of(self._state_dir, validate_name(name))

    def _views(self, name: str) -> list[tuple[Path, str, bool]]:
        """The manager's binds of the other agents' repositories (see the module docstring)."""
        return manager_binds(self._state_dir, name)

    def _op(self, name: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(name, threading.Lock())

    def _base_env(self, paths: AgentPaths) -> dict[str, str]:
        env = dict(CONTAINER_ENV)
        extra = (read_marker(paths) or {}).get("env") or {}
        if isinstance(extra, dict):
            env.update({str(k): str(v) for k, v in extra.items()})
        return env

    def _prepare_run(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
    ) -> tuple[list[str], Callable[[], None]]:
        """Write the environment file, return the argv of ``run`` and the file's cleanup."""
        paths = self._paths(name)
        args = check_argv(name, argv)
        check_env(env or {}, what=f"container {name}: exec env")
        full_env = {**self._base_env(paths), **(env or {})}
        text = _env_file_text(full_env, f"container {name}: exec env")
        where = cwd or STATE_MOUNT
        if not where.startswith("/"):
            where = "./" + where  # neither an option of cd nor looked up on CDPATH
        exe = self._exe()
        file_name, leftover = self._write_env_file(name, paths, text)
        inner = f"{STATE_MOUNT}/{_RUN_DIR}/{file_name}"
        return [exe, "run", name, "--", "/bin/sh", "-c", _LAUNCHER, "hive-env", inner, where,
                *args], leftover

    def _write_env_file(
        self, name: str, paths: AgentPaths, text: str
    ) -> tuple[str, Callable[[], None]]:
        """``<state>/.hive-run/env-<random>``, mode 0600, created without following a link the
        agent may have put in its state dir; returns its name and its (idempotent) removal."""
        state = paths.state
        nofollow = os.O_NOFOLLOW | os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC
        file_name = f"env-{secrets.token_hex(16)}"
        try:
            state_fd = os.open(state, nofollow)
        except FileNotFoundError:
            raise NotFound(
                f"container {name}: its state dir '{state}' does not exist: create it first"
            ) from None
        except OSError as exc:
            raise HiveError(f"container {name}: cannot open '{state}': {exc.strerror}") from exc
        try:
            try:
                try:
                    os.mkdir(_RUN_DIR, 0o700, dir_fd=state_fd)
                except FileExistsError:
                    pass
                dir_fd = os.open(_RUN_DIR, nofollow, dir_fd=state_fd)
            finally:
                os.close(state_fd)
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(file_name, flags, 0o600, dir_fd=dir_fd)
                try:
                    data = text.encode("utf-8", "surrogateescape")
                    while data:
                        data = data[os.write(fd, data):]
                except BaseException:
                    os.unlink(file_name, dir_fd=dir_fd)
                    raise
                finally:
                    os.close(fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise HiveError(
                f"container {name}: cannot write the environment file of a command under "
                f"'{state / _RUN_DIR}' ({exc.strerror or exc}): the hive needs write access to "
                "the agent's state dir, and .hive-run must be a directory"
            ) from exc

        def leftover() -> None:
            try:
                run_fd = os.open(state / _RUN_DIR, nofollow)
            except OSError:
                return  # gone (or replaced by a link: then not the hive's file to delete)
            try:
                os.unlink(file_name, dir_fd=run_fd)
            except FileNotFoundError:
                pass  # the launcher deleted it, as it should
            except OSError as exc:
                log.warning("container %s: cannot delete %s/%s: %s", name, state / _RUN_DIR,
                            file_name, exc)
            finally:
                os.close(run_fd)

        return file_name, leftover

    def _status(self, name: str) -> ContainerStatus:
        proc = self._run(name, ["status", name], self._command_timeout_s, check=False)
        answer = proc.stdout.strip()
        with self._lock:
            since = self._since.get(name)
        if answer == "up":
            return ContainerStatus(name, "running", since=since)
        if answer == "down":
            return ContainerStatus(name, "stopped", since=since)
        if answer == "gone":
            return ContainerStatus(name, "absent")
        raise HiveError(self._failure(name, ["status", name], proc))

    def _exe(self) -> str:
        return find_tool(self._command, self._tool_env.get("PATH", os.defpath), _FIX)

    def _write_host_conf(self, name: str, paths: AgentPaths) -> list[tuple[Path, str, bool]]:
        """Write ``name``'s conf file with the host-side settings; returns the view binds it
        has (none but for the manager)."""
        conf = self._conf_dir / f"{name}.conf"
        try:
            created = conf.read_text()
        except OSError as exc:
            raise HiveError(
                f"container {name}: '{conf}' cannot be read after create ({exc.strerror}): "
                "set the nixos backend's conf_dir to where nixos-container keeps its conf files"
            ) from exc
        binds = self._views(name) if read_role(paths.root) == "manager" else []
        text = host_conf(
            created,
            state=paths.state,
            private_users=self._private_users,
            host_root_ok=self._host_root_ok,
            binds=binds,
        )
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".conf", dir=self._conf_dir)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, conf)
        except OSError as exc:
            raise HiveError(
                f"container {name}: cannot write '{conf}' ({exc.strerror}): the hive needs "
                "write access to the nixos-container conf directory (run it as root)"
            ) from exc
        return binds

    def _run(
        self, name: str, args: list[str], timeout: float, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [self._exe(), *args]
        try:
            proc = subprocess.Popen(
                argv,
                env=self._tool_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a timeout kills the nix build it started too
            )
        except OSError as exc:
            raise HiveError(f"container {name}: cannot run {argv[0]!r}: {exc}; {_FIX}") from exc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.communicate(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.wait(timeout=5.0)  # a grandchild that left the group holds the pipes
            raise HiveError(
                f"container {name}: '{self._command} {' '.join(args)}' did not finish within "
                f"{timeout:g}s and was killed; look at 'journalctl -u container@{name}'"
            ) from exc
        done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        log.debug("container %s: %s -> %d", name, args, proc.returncode)
        if check and done.returncode != 0:
            message = self._failure(name, args, done)
            if "already exists" in done.stderr:
                raise Conflict(message)
            if "does not exist" in done.stderr:
                raise NotFound(message)
            raise HiveError(message)
        return done

    def _failure(self, name: str, args: list[str], proc: subprocess.CompletedProcess[str]) -> str:
        stderr = proc.stderr.strip()[-_STDERR_TAIL:] or "no output"
        return (
            f"container {name}: '{self._command} {' '.join(args)}' failed (exit "
            f"{proc.returncode}): {stderr}; look at 'journalctl -u container@{name}'"
        )
