"""What the crash path says: a container (or an agent's harness) died, and who is told.

A container's end takes one route: the :class:`~hive_actors.watcher.actor.CrashWatcherActor`
(in the tree on every backend) decides whether it is a crash and of which agent epoch, and
tells one :class:`ContainerCrash` to the agent's AgentActor (registered in the directory under
:func:`agent_service`), or records it when none runs. Its ``source`` says who saw it:

- ``systemd``: the watcher's D-Bus reader saw an agent's ``container@<name>.service`` fail;
- ``backend``: the container backend reported the exit to the watcher's subscription
  (:class:`BackendExit`: the process backend's reaper, and every later backend's);
- ``stall``: no container ended — the AgentActor itself saw a turn run past its deadline or a
  harness fall silent, and crashes with it in its own thread.

An agent's **epoch** counts its starts (``Agent.epoch``, bumped by each AgentActor's spawn; its
generation, the incarnation its mail belongs to, does not change on a restart): a crash names
the epoch whose container it was, so a late report about an earlier start never ends a later
one. The AgentActor of the crashed epoch raises :class:`AgentCrashed` on it at once, which its
supervisor sees as the child's exit reason: it restarts the agent with backoff or gives it up,
records the crash (``agent.crashed``) and the restart in the events log, and the manager's
``system`` message says what happened in the crash's own words
(:meth:`ContainerCrash.describe`: ``exit-code 1``, ``signal SIGKILL (9)``, ``stalled (…)``).
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pykka import ActorRef

from hive_actors.containers.base import ContainerExit
from hive_actors.errors import HiveError
from hive_actors.services.directory import Directory

__all__ = [
    "AgentCrashed",
    "AgentUp",
    "BackendExit",
    "ContainerCrash",
    "CrashSource",
    "ExitHandled",
    "RunBound",
    "RunStarted",
    "WatchReports",
    "WatchState",
    "agent_service",
    "announce_up",
    "signal_name",
]

CrashSource = Literal["systemd", "backend", "stall"]
"""Who saw the crash: the D-Bus watcher, the container backend, or the agent's own stall check."""

STALLED = "stalled"
"""The ``result`` of a crash that is a stall (no container exit: the agent made no progress)."""


def agent_service(agent: str) -> str:
    """The directory name under which ``agent``'s live AgentActor takes crash reports."""
    return f"agent:{agent}"


def signal_name(number: int) -> str:
    """``SIGKILL (9)`` for 9; ``signal 77`` for a number Python has no name for."""
    try:
        return f"{_signal.Signals(number).name} ({number})"
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True, slots=True)
class ContainerCrash:
    """An agent's container ended without the hive asking (or the agent stalled): told to the
    agent's AgentActor, which ignores it unless ``epoch`` is its own."""

    agent: str
    epoch: int
    """The start (``Agent.epoch``) whose container this was; an older one's crash is stale."""
    result: str
    """systemd's words: ``exit-code``, ``signal``, ``core-dump``, ``timeout``, ``oom-kill``…, or
    ``stalled`` for a turn past its deadline or a silent harness."""
    exit_status: int | None
    """The exit code when the main process exited, else None."""
    signal: int | None
    """The signal that ended it (``signal`` / ``core-dump``), else None."""
    when: float
    """When it was seen, wall-clock seconds."""
    source: CrashSource = "systemd"
    detail: str = ""
    """One line of context: the unit, or what stalled."""
    invocation_id: str = ""
    """systemd's ``InvocationID`` of the run that crashed (``systemd`` source only)."""
    will_restart: bool = False
    """systemd restarts the unit by itself (its ``Restart=`` policy)."""

    def describe(self) -> str:
        """The crash in an operator's words: ``exit-code 1``, ``signal SIGKILL (9)``,
        ``oom-kill, signal SIGKILL (9)``, ``stalled (turn … ran past its deadline of 3 s)``."""
        if self.result == STALLED:
            return f"{STALLED} ({self.detail})" if self.detail else STALLED
        if self.result == "exit-code" and self.exit_status is not None:
            return f"exit-code {self.exit_status}"
        if self.signal is not None:
            glue = " " if self.result in ("signal", "core-dump") else ", signal "
            return f"{self.result}{glue}{signal_name(self.signal)}"
        if self.exit_status is not None and self.result != "success":
            return f"{self.result}, exit status {self.exit_status}"
        return self.result

    def payload(self) -> dict[str, Any]:
        """The ``agent.crashed`` event's payload."""
        return {
            "reason": self.describe(),
            "result": self.result,
            "exit_status": self.exit_status,
            "signal": self.signal,
            "epoch": self.epoch,
            "source": self.source,
            "detail": self.detail,
            "invocation_id": self.invocation_id,
            "will_restart": self.will_restart,
            "when": self.when,
        }


class AgentCrashed(HiveError):
    """An AgentActor ends because its container crashed (or it stalled); ``crash`` says how."""

    def __init__(self, crash: ContainerCrash) -> None:
        self.crash = crash
        super().__init__(f"{crash.agent} crashed: {crash.describe()}")


@dataclass(frozen=True, slots=True)
class AgentUp:
    """Told to the crash watcher by an AgentActor that spawned ``epoch``, *before* it starts
    its container (:func:`announce_up`): the runs of the agent's unit the watcher sees from now
    on are this epoch's. The watcher's mailbox is FIFO, so every D-Bus signal of a run the
    container start causes is handled after this."""

    agent: str
    epoch: int
    adopts: bool = False
    """The container already runs (starting it is a no-op): its live run is this epoch's."""


def announce_up(directory: Directory, agent: str, epoch: int, *, adopts: bool = False) -> None:
    """Tell the crash watcher (if one runs) that ``agent``'s ``epoch`` is about to start its
    container. Call it *before* starting the container. A watcher that is not running misses
    it and reads the epoch from the registry when it starts (the spawn wrote it there)."""
    directory.tell("watcher", AgentUp(agent, epoch, adopts))


@dataclass(frozen=True)
class WatchReports:
    """Ask the crash watcher to tell ``ref`` everything it handles from now on, once handled:
    each verdict or notice (:class:`~hive_actors.watcher.reports.UnitReport` /
    :class:`~hive_actors.watcher.reports.WatcherNotice`), each :class:`RunBound` and each
    :class:`ExitHandled` (a backend exit judged). Answers
    the :class:`WatchState` at that moment."""

    ref: ActorRef[Any]


@dataclass(frozen=True)
class WatchState:
    """What the crash watcher knows when asked."""

    scans: int
    """Rescans of the agents' units handled so far (0: it has not read them yet)."""
    runs: Mapping[str, tuple[str, int]]
    """agent → (its live run's ``InvocationID``, the epoch that run is tied to)."""


@dataclass(frozen=True, slots=True)
class RunBound:
    """The crash watcher tied a unit's run (``InvocationID``) to an agent epoch."""

    agent: str
    unit: str
    invocation_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class BackendExit:
    """Told to the crash watcher by its subscription to the container backend (from the
    backend's thread — the process backend's reaper — which does nothing else with it):
    ``exit`` is a container's end as the backend saw it, to be judged in the watcher's thread."""

    exit: ContainerExit


@dataclass(frozen=True, slots=True)
class RunStarted:
    """Told to the crash watcher after the hive started ``agent``'s container
    (:class:`~hive_actors.watcher.intents.WatchedBackend`), from the thread that started it —
    so after that start's :class:`AgentUp`: the backend's run ``run_id`` is alive, and is the
    current epoch's (as a run the D-Bus reader sees alive)."""

    agent: str
    run_id: str


ExitOutcome = Literal["crash", "expected", "hive-stop", "not-an-agent", "no-epoch"]
"""What the crash watcher made of a backend exit: a crash told (or recorded), the backend's
own expected stop, a stop the hive announced, not an agent of this hive, no epoch known."""


@dataclass(frozen=True, slots=True)
class ExitHandled:
    """Told to the crash watcher's followers (:class:`WatchReports`) once it handled a
    :class:`BackendExit`: the exit, what it made of it, and the epoch it was a crash of."""

    exit: ContainerExit
    outcome: ExitOutcome
    epoch: int | None = None
