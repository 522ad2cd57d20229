"""What the crash path says: a container (or an agent's harness) died, and who is told.

Three sources report through one message, :class:`ContainerCrash`:

- ``systemd``: the :class:`~hive_actors.crashwatch.CrashWatcherActor` saw an agent's
  ``container@<name>.service`` fail on D-Bus;
- ``backend``: the container backend's own exit callback (the process backend's reaper);
- ``stall``: the AgentActor itself saw a turn run past its deadline or a harness fall silent.

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

from hive_actors.crash_runs import RunBook
from hive_actors.directory import Directory
from hive_actors.errors import HiveError
from hive_actors.frozen import frozen
from hive_actors.messages import Crashed

__all__ = [
    "AgentCrashed",
    "AgentUp",
    "ContainerCrash",
    "CrashSource",
    "RunBound",
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


@frozen
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
        super().__init__(self._words(crash, crash.describe()))

    @staticmethod
    def _words(crash: ContainerCrash, described: str) -> str:
        return f"{crash.agent} crashed: {described}"

    @staticmethod
    def exit_text(crash: ContainerCrash, described: str) -> str:
        """The exit reason an AgentActor dying of this crash gives (``str`` of its
        :class:`~hive_actors.messages.Crashed`), for a supervisor that decides on the crash
        before the actor is gone; ``described`` is ``crash.describe()``. Made without raising
        and catching: it is on the path of every restart."""
        return Crashed.text("receive", AgentCrashed.__name__,
                            AgentCrashed._words(crash, described))


@frozen
class AgentUp:
    """Told to the crash watcher once an AgentActor announced ``epoch`` in the hive's run
    book (:func:`announce_up`): it watches the agent's unit from now on."""

    agent: str
    epoch: int
    adopted: str | None = None
    """The live run (``InvocationID``) the announcement tied to this epoch, if any."""


def announce_up(
    runs: RunBook, directory: Directory, agent: str, epoch: int, *, adopts: bool = False
) -> None:
    """An AgentActor spawned ``epoch`` and is about to start its container: the runs the
    crash watcher sees start from now on are this epoch's. Call it *before* starting the
    container (it is synchronous: no crash can be routed with the old epoch after it).
    ``adopts``: the container already runs (starting it is a no-op), so its live run is this
    epoch's from now on, too."""
    adopted = runs.agent_up(agent, epoch, adopts=adopts)
    directory.tell("watcher", AgentUp(agent, epoch, adopted))


@dataclass(frozen=True)
class WatchReports:
    """Ask the crash watcher to tell ``ref`` everything it handles from now on, once handled:
    each watcher report (:class:`~hive_actors.watcher.reports.UnitReport` /
    :class:`~hive_actors.watcher.reports.WatcherNotice`) and each :class:`RunBound`. Answers
    the :class:`WatchState` at that moment."""

    ref: ActorRef[Any]


@dataclass(frozen=True)
class WatchState:
    """What the crash watcher knows when asked."""

    scans: int
    """Rescans of the agents' units handled so far (0: it has not read them yet)."""
    runs: Mapping[str, tuple[str, int]]
    """agent → (its live run's ``InvocationID``, the epoch that run is tied to)."""


@frozen
class RunBound:
    """The crash watcher tied a unit's run (``InvocationID``) to an agent epoch."""

    agent: str
    unit: str
    invocation_id: str
    epoch: int
