"""The crash watcher: systemd's view of the hive's ``container@<name>.service`` units, on D-Bus.

- :mod:`~hive_actors.watcher.watch` — :class:`SystemdWatch`, the D-Bus reader (asyncio, sdbus):
  it reads signals and units and hands them over, deciding nothing;
- :mod:`~hive_actors.watcher.reports` — what it hands over (observations, notices);
- :mod:`~hive_actors.watcher.classify` — the pure verdict on one observation of a unit, the
  one classification;
- :mod:`~hive_actors.watcher.judge` — :class:`~hive_actors.watcher.judge.UnitJudge`, the
  classification applied to the reader's observations in order (the crash watcher actor's
  state; not imported here, it depends on :mod:`hive_actors.watcher.intents`);
- :mod:`~hive_actors.watcher.verdicts` — the verdicts;
- :mod:`~hive_actors.watcher.systemd_iface` — systemd's D-Bus interfaces, declared for sdbus.
"""

from __future__ import annotations

from hive_actors.watcher.backoff import Backoff
from hive_actors.watcher.classify import Intent, UnitSnapshot, classify
from hive_actors.watcher.props import ServiceProps, UnitProps
from hive_actors.watcher.reports import (
    Observation,
    Report,
    StopCleared,
    StopExpected,
    UnitGone,
    UnitObserved,
    UnitReport,
    WatcherNotice,
)
from hive_actors.watcher.runner import WatchThread
from hive_actors.watcher.verdicts import (
    Crash,
    FailedStop,
    GaveUp,
    NoEvent,
    Rebooted,
    RestartedUnseen,
    RestartScheduled,
    Stopped,
    Unreadable,
    Verdict,
)
from hive_actors.watcher.watch import SystemdWatch

__all__ = [
    "Backoff",
    "Crash",
    "FailedStop",
    "GaveUp",
    "Intent",
    "NoEvent",
    "Observation",
    "Rebooted",
    "Report",
    "RestartScheduled",
    "RestartedUnseen",
    "ServiceProps",
    "StopCleared",
    "StopExpected",
    "Stopped",
    "SystemdWatch",
    "UnitGone",
    "UnitObserved",
    "UnitProps",
    "UnitReport",
    "UnitSnapshot",
    "Unreadable",
    "Verdict",
    "WatchThread",
    "WatcherNotice",
    "classify",
]
