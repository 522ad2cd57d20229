"""What the watcher's D-Bus reader tells its owner, and what its owner makes of it.

The reader (:class:`~hive_actors.watcher.watch.SystemdWatch`) hands ``on_report`` plain data, in
the order it read it, and decides nothing:

- :class:`UnitObserved`: a unit's properties as one observation (a ``Unit`` change signal with
  the ``Service`` values before it, or a full read in a rescan);
- :class:`UnitGone`: a unit seen before is no longer loaded;
- :class:`StopExpected` / :class:`StopCleared`: the hive asked the reader itself to stop (or
  start) a unit;
- :class:`UnitReport` with an :class:`~.verdicts.Unreadable` verdict: input it could not read;
- :class:`WatcherNotice`: the reader's own condition (connected, lost the bus, systemd gone or
  back, a rescan done), for logs and for tests that need to know a rescan finished.

Its owner classifies each observation (:class:`~hive_actors.watcher.judge.UnitJudge`) into a
:class:`UnitReport`: a verdict about one agent's unit (a :class:`~.verdicts.Crash` is the one
that asks for a restart; the rest are notices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hive_actors.watcher.props import ServiceProps, UnitProps
from hive_actors.watcher.verdicts import Verdict

__all__ = [
    "NoticeKind",
    "Observation",
    "Report",
    "StopCleared",
    "StopExpected",
    "UnitGone",
    "UnitObserved",
    "UnitReport",
    "WatcherNotice",
]

NoticeKind = Literal[
    "connected",
    "disconnected",
    "systemd-absent",
    "systemd-gone",
    "rescanned",
    "unit-gone",
    "unreadable",
]


@dataclass(frozen=True, slots=True)
class UnitReport:
    """A verdict about the unit of one agent the hive knows."""

    agent: str
    """The agent's name (the unit's instance name)."""
    unit: str
    """``container@<agent>.service``."""
    when: float
    """When the watcher saw it, on the watcher's injected clock (monotonic by default)."""
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class WatcherNotice:
    """Something about the watcher itself, or input it could not tie to an agent."""

    kind: NoticeKind
    detail: str
    """One line for a log: what happened, with the values involved."""
    when: float


@dataclass(frozen=True, slots=True)
class UnitObserved:
    """One observation of a unit's properties, read whole and well formed: to be classified."""

    agent: str
    """The unit's instance name."""
    unit: str
    """``container@<agent>.service``."""
    when: float
    """When the reader read it, on its injected clock (monotonic by default)."""
    service: ServiceProps
    props: UnitProps
    job_type: str | None = None
    """The type of the unit's pending job when the reader knows it (one it saw queued, or one
    it asked systemd about: a failed unit's job it did not queue); None otherwise."""


@dataclass(frozen=True, slots=True)
class UnitGone:
    """A unit the reader had read is no longer loaded (systemd unloads a unit that stopped
    cleanly): whether that is a stop depends on what was last seen of it."""

    agent: str
    unit: str
    when: float


@dataclass(frozen=True, slots=True)
class StopExpected:
    """The hive is about to stop ``agent``'s container: the unit's end is a stop, its failure
    a failed stop, not a crash. Told to the crash watcher *before* the stop is asked for, so
    it is handled before any signal the stop causes."""

    agent: str


@dataclass(frozen=True, slots=True)
class StopCleared:
    """The hive starts ``agent``'s container again (or did not stop it after all): its next
    end is not the hive's doing."""

    agent: str


Report = UnitReport | WatcherNotice
"""What the classification of the reader's output gives: verdicts and the reader's notices."""

Observation = (
    UnitObserved | UnitGone | StopExpected | StopCleared | UnitReport | WatcherNotice
)
"""Everything the reader hands ``on_report``."""
