"""The verdicts on what the D-Bus reader observed: one :func:`~.classify.classify` per observation.

:class:`UnitJudge` is plain single-owner state — each unit's last
:class:`~.classify.UnitSnapshot` and the hive's stop intents — with no bus, no thread and no
lock. The :class:`~hive_actors.watcher.actor.CrashWatcherActor` owns one and feeds it its mailbox
in order (so a stop intent told before a stop is known when the stop's signals are judged);
tests of the reader alone put one behind the reader's callback (:meth:`UnitJudge.take`).
"""

from __future__ import annotations

from hive_actors.watcher.classify import DEFAULT_REBOOT_STATUSES, Intent, UnitSnapshot, classify
from hive_actors.watcher.intents import StopIntents
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
from hive_actors.watcher.verdicts import NoEvent, Stopped, Verdict

__all__ = ["UnitJudge"]


class UnitJudge:
    """Classifies each unit's observations in order; owned by one thread."""

    def __init__(
        self,
        intents: StopIntents | None = None,
        *,
        reboot_statuses: frozenset[int] = DEFAULT_REBOOT_STATUSES,
    ) -> None:
        self.intents = intents if intents is not None else StopIntents()
        self._reboot_statuses = reboot_statuses
        self._snapshots: dict[str, UnitSnapshot] = {}

    def snapshot(self, unit: str) -> UnitSnapshot | None:
        """What the last observation of ``unit`` left (None before the first)."""
        return self._snapshots.get(unit)

    def observed(self, seen: UnitObserved) -> Verdict:
        """Classify one observation against the unit's previous one and the hive's intent."""
        intent = Intent(hive_stop=self.intents.hive_stop(seen.agent), job_type=seen.job_type)
        snapshot, verdict = classify(self._snapshots.get(seen.unit), seen.service, seen.props,
                                     intent, reboot_statuses=self._reboot_statuses)
        self._snapshots[seen.unit] = snapshot
        self.intents.settle(seen.agent, verdict)
        return verdict

    def gone(self, gone: UnitGone) -> Verdict:
        """A unit is no longer loaded: systemd unloads units that stopped cleanly (a failed one
        stays loaded), so one that was up when last seen was stopped while nobody looked."""
        snapshot = self._snapshots.pop(gone.unit, None)
        if snapshot is None or snapshot.active_state in ("inactive", "failed"):
            return NoEvent("unloaded after it ended")
        if snapshot.record_for(snapshot.invocation_id, snapshot.n_restarts) is not None:
            return NoEvent("unloaded after its end was reported")
        hive = self.intents.hive_stop(gone.agent)
        verdict = Stopped(by="hive" if hive else "operator-or-guest",
                          invocation_id=snapshot.invocation_id)
        self.intents.settle(gone.agent, verdict)
        return verdict

    def take(self, item: Observation) -> Report | None:
        """Apply whatever the reader handed over: a verdict as a :class:`UnitReport` (None for
        no event and for the intents, which are only recorded); reports and notices pass."""
        match item:
            case UnitObserved():
                verdict = self.observed(item)
            case UnitGone():
                verdict = self.gone(item)
            case StopExpected(agent=agent):
                self.intents.expect_stop(agent)
                return None
            case StopCleared(agent=agent):
                self.intents.clear(agent)
                return None
            case UnitReport() | WatcherNotice():
                return item
        if isinstance(verdict, NoEvent):
            return None
        return UnitReport(item.agent, item.unit, item.when, verdict)
