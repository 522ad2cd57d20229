"""The crash watcher: systemd's view of the hive's ``container@<name>.service`` units, on D-Bus.

- :mod:`~hive_actors.watcher.classify` — the pure verdict on one observation of a unit;
- :mod:`~hive_actors.watcher.reflex` — the same verdict, early, for a crash of a unit's run;
- :mod:`~hive_actors.watcher.verdicts` / :mod:`~hive_actors.watcher.reports` — what comes out;
- :mod:`~hive_actors.watcher.watch` — :class:`SystemdWatch`, the asyncio core on sdbus;
- :mod:`~hive_actors.watcher.systemd_iface` — systemd's D-Bus interfaces, declared for sdbus.
"""

from __future__ import annotations

from hive_actors.watcher.backoff import Backoff
from hive_actors.watcher.classify import Intent, UnitSnapshot, classify
from hive_actors.watcher.props import ServiceProps, UnitProps
from hive_actors.watcher.reports import Report, UnitReport, WatcherNotice
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
    "Rebooted",
    "Report",
    "RestartScheduled",
    "RestartedUnseen",
    "ServiceProps",
    "Stopped",
    "SystemdWatch",
    "UnitProps",
    "UnitReport",
    "UnitSnapshot",
    "Unreadable",
    "Verdict",
    "WatchThread",
    "WatcherNotice",
    "classify",
]
