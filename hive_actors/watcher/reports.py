"""What the watcher tells its owner: frozen reports handed to ``on_report``.

- :class:`UnitReport`: a verdict about one agent's unit (a :class:`~.verdicts.Crash` is the one
  that asks for a restart; the rest are notices).
- :class:`WatcherNotice`: the watcher's own condition (connected, lost the bus, systemd gone or
  back, a rescan done), for logs and for tests that need to know a rescan finished.
"""

from __future__ import annotations

from typing import Literal, Union

from hive_actors.frozen import frozen
from hive_actors.watcher.verdicts import Verdict

__all__ = ["NoticeKind", "Report", "UnitReport", "WatcherNotice"]

NoticeKind = Literal[
    "connected",
    "disconnected",
    "systemd-absent",
    "systemd-gone",
    "rescanned",
    "unit-gone",
    "unreadable",
]


@frozen
class UnitReport:
    """A verdict about the unit of one agent the hive knows."""

    agent: str
    """The agent's name (the unit's instance name)."""
    unit: str
    """``container@<agent>.service``."""
    when: float
    """When the watcher saw it, on the watcher's injected clock (monotonic by default)."""
    verdict: Verdict


@frozen
class WatcherNotice:
    """Something about the watcher itself, or input it could not tie to an agent."""

    kind: NoticeKind
    detail: str
    """One line for a log: what happened, with the values involved."""
    when: float


Report = Union[UnitReport, WatcherNotice]
"""Everything ``on_report`` receives."""
