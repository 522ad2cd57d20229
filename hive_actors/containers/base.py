"""The container-backend interface: what the hive asks of wherever an agent runs.

Narrow on purpose (create, start, stop, destroy, exec, status, crash events) so that a cluster
engine can sit behind it later. Every method is thread-safe and every blocking call is bounded.

Errors (all :class:`~hive_actors.errors.HiveError`): :class:`~hive_actors.errors.NotFound` for a
container that does not exist, :class:`~hive_actors.errors.Conflict` for one in the wrong state
(create twice, exec in a stopped container, destroy a running one),
:class:`~hive_actors.errors.StartFailure` when a start fails, ``ConfigError`` for a backend that
cannot work here (its tool missing, a bad path), plain ``HiveError`` for a backend command that
failed; each names the agent and the fix.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol, runtime_checkable

from hive_actors.errors import ConfigError

__all__ = [
    "ContainerBackend",
    "ContainerExit",
    "ContainerSpec",
    "ContainerState",
    "ContainerStatus",
    "ExitCallback",
    "ExitResult",
    "StopGrace",
    "Subscribers",
    "check_argv",
    "check_env",
    "find_tool",
    "view_changed",
]

log = logging.getLogger(__name__)

ContainerState = Literal["absent", "stopped", "running"]
"""``absent``: never created or destroyed; ``stopped``: created, not running; ``running``."""

ExitResult = Literal[
    "success", "exit-code", "signal", "core-dump", "timeout", "watchdog", "oom-kill"
]
"""How a container ended, in systemd's ``Result`` words (the D-Bus watcher passes others on)."""


@dataclass(frozen=True)
class ContainerSpec:
    """What a container is created with."""

    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of every process started in the container (over the backend's own)."""
    flake: Path | None = None
    """nixos: the flake directory to build the container from (default: the agent's
    ``config/applied``); the process backend ignores it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        check_env(self.env, what="container spec env")


@dataclass(frozen=True)
class ContainerStatus:
    """Where a container is now."""

    name: str
    """The agent's name (the container's)."""
    state: ContainerState
    pid: int | None = None
    """The container's main process (the keeper; its pid is also the process group), if known."""
    since: float | None = None
    """When it entered ``state`` on the backend's clock (wall-clock seconds), if known."""
    run_id: str = ""
    """The live run (this start of the container) when it runs and the backend names its
    runs (the process backend does), else empty."""


@dataclass(frozen=True)
class ContainerExit:
    """A container's main process ended: a crash unless ``expected``."""

    name: str
    """The agent's name."""
    result: str
    """systemd's words: ``success``, ``exit-code``, ``signal``, ``core-dump``, … (see
    :data:`ExitResult`; the D-Bus watcher may pass on others such as ``start-limit-hit``)."""
    exit_status: int | None
    """The exit code when it exited (``success`` / ``exit-code``), else None."""
    signal: int | None
    """The signal number when a signal ended it (``signal`` / ``core-dump``), else None."""
    when: float
    """When the backend saw it, on its clock (wall-clock seconds)."""
    expected: bool
    """True when the hive asked for the stop: not a crash."""
    run_id: str = ""
    """Which run of the container ended (the ``run_id`` its :class:`ContainerStatus` showed
    while it ran), when the backend names its runs; empty otherwise. The crash watcher ties
    runs to agent epochs with it: a late exit of an older run is told apart from the run an
    agent's newer epoch started."""


ExitCallback = Callable[[ContainerExit], None]
"""What :meth:`ContainerBackend.subscribe` takes; called from a backend thread, must not block."""


@dataclass(frozen=True)
class StopGrace:
    """How long a stop waits after each signal before the next one (seconds)."""

    sigint: float = 10.0
    """After SIGINT (claude prints its result line and exits on it)."""
    sigterm: float = 5.0
    """After SIGTERM."""
    sigkill: float = 5.0
    """After SIGKILL, before the stop gives up waiting and reports the survivors."""

    _MAX = 600.0

    def __post_init__(self) -> None:
        for name in ("sigint", "sigterm", "sigkill"):
            value = getattr(self, name)
            if not 0 <= value <= self._MAX:
                raise ConfigError(
                    f"stop grace {name} = {value!r} is out of range: use 0..{self._MAX:g} seconds"
                )

    @property
    def total(self) -> float:
        """The longest a stop can take."""
        return self.sigint + self.sigterm + self.sigkill


@runtime_checkable
class ContainerBackend(Protocol):
    """Where agents run. One instance serves every agent; every method is thread-safe.

    Optional (not required of a backend; ask through :func:`view_changed`):
    ``view_changed(name) -> bool``, True when a restart of ``name``'s running container would
    mount more than it has now (the nixos manager's view of the other agents' repositories,
    which a running container cannot gain); a backend without it never asks for one."""

    def create(self, name: str, spec: ContainerSpec) -> None:
        """Create ``name``'s container (not started). Conflict if it exists."""

    def start(self, name: str) -> None:
        """Start it and return once it runs. NotFound if absent; no-op if running."""

    def stop(self, name: str, *, grace: StopGrace | None = None) -> ContainerExit | None:
        """Stop every process of it (SIGINT, SIGTERM, SIGKILL with ``grace`` between) and return
        how it ended (``expected=True``; None when the backend cannot tell). No-op (None) if it
        is not running."""

    def destroy(self, name: str, *, keep_state: bool) -> None:
        """Remove the container and the agent's files, all but ``state/`` when ``keep_state``.
        Conflict if it runs (stop it first); idempotent for an absent one."""

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the running container with the agent's environment plus
        ``env``, in ``cwd`` (default: the agent's state dir, ``/state`` inside). stdin is
        /dev/null, stdout and stderr are pipes; the caller owns (waits for) the process."""

    def environment(self, name: str) -> dict[str, str]:
        """The agent's base environment as seen inside its container (HOME, TMPDIR,
        XDG_RUNTIME_DIR, CLAUDE_CONFIG_DIR, PATH…), what :meth:`exec` starts from."""

    def inside(self, name: str, host_path: str | os.PathLike[str]) -> str:
        """``host_path`` — the agent's state dir or a path under it — as the processes inside
        its container see it (the process backend: the same path; NixOS: under ``/state``).
        ConfigError for a path the container cannot see."""

    def pty_shell(self, name: str) -> tuple[int, int]:
        """A login shell on a new PTY inside the running container: ``(pid, master_fd)``
        (``pid`` the hive's child). The caller closes ``master_fd``, waits for ``pid``'s exit
        without reaping it (``waitid`` ``WNOWAIT``) and hands it to :meth:`release_shell`,
        which reaps it: a backend that signals its shells at stop must know first that the
        number is no longer the shell's."""

    def release_shell(self, name: str, pid: int) -> None:
        """A shell of :meth:`pty_shell` exited: forget it (the stop no longer signals it) and
        reap it, at once. A pid the backend does not track is only reaped."""

    def status(self, name: str) -> ContainerStatus:
        """Where ``name``'s container is now."""

    def subscribe(self, callback: ExitCallback) -> Callable[[], None]:
        """Call ``callback`` for every :class:`ContainerExit`; returns the unsubscribe."""

    def close(self) -> None:
        """Stop the backend's own threads (and, for the process backend, its containers)."""


def view_changed(backend: object, name: str) -> bool:
    """``backend.view_changed(name)`` (see :class:`ContainerBackend`), False for a backend
    without it."""
    method = getattr(backend, "view_changed", None)
    return bool(method(name)) if callable(method) else False


class Subscribers:
    """A thread-safe list of exit callbacks; one failing callback never stops the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[ExitCallback] = []

    def add(self, callback: ExitCallback) -> Callable[[], None]:
        """Register ``callback``; returns a function that removes it (idempotent)."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def publish(self, event: ContainerExit) -> None:
        """Hand ``event`` to every callback, in registration order, in this thread."""
        with self._lock:
            callbacks = list(self._callbacks)
        level = logging.INFO if event.expected else logging.WARNING
        log.log(
            level,
            "container %s ended: %s (status %s, signal %s, expected %s)",
            event.name,
            event.result,
            event.exit_status,
            event.signal,
            event.expected,
        )
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("container %s: an exit subscriber failed on %r", event.name, event)


# POSIX portable names; anything else (a '=' or a NUL above all) breaks `env K=V` and execve.
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env(env: Mapping[str, str], *, what: str) -> None:
    """Refuse environment entries ``execve`` or ``env K=V`` cannot carry (ConfigError)."""
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise ConfigError(
                f"{what}: variable name {key!r} is invalid: use letters, digits and '_', "
                "not starting with a digit"
            )
        if not isinstance(value, str) or "\0" in value:
            raise ConfigError(f"{what}: {key} = {value!r} must be a string without NUL bytes")


def check_argv(name: str, argv: Sequence[str]) -> list[str]:
    """A non-empty list of NUL-free strings whose program is not a ``K=V`` word (which ``env``
    would take for an assignment); ConfigError naming the agent otherwise."""
    args = list(argv)
    if not args:
        raise ConfigError(f"container {name}: exec needs a command, got an empty argv")
    for arg in args:
        if not isinstance(arg, str) or "\0" in arg:
            raise ConfigError(f"container {name}: exec argument {arg!r} must be a NUL-free string")
    if "=" in args[0]:
        raise ConfigError(
            f"container {name}: exec program {args[0]!r} contains '=': give the program's path"
        )
    return args


def find_tool(command: str, path: str, fix: str, *, who: str = "") -> str:
    """``command`` (a name looked up on ``path``, or a path) resolved; ConfigError otherwise,
    ``who`` (e.g. ``"container NAME: "``) first and ``fix`` last."""
    exe = shutil.which(command, path=path)
    if exe is None:
        raise ConfigError(f"{who}{command} is not on PATH ({path}): {fix}")
    return exe
