"""Helpers for tests against a real dbus-daemon: a report collector that waits on a queue, and
predicates over reports."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from hive_actors.testing.systemd_standin import StandinSystemd
from hive_actors.watcher.judge import UnitJudge
from hive_actors.watcher.reports import Observation, Report, UnitReport, WatcherNotice
from hive_actors.watcher.verdicts import Verdict
from tests.support.timeout import TIMEOUT

Predicate = Callable[[Report], bool]


class Reports:
    """Collects what a watcher reports (its ``on_report``) and lets the test wait for it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Report] = queue.Queue()
        self.seen: list[Report] = []
        """Every report taken off the queue so far, in order."""

    def __call__(self, report: Report) -> None:
        self._queue.put(report)

    def wait_for(self, predicate: Predicate, what: str, timeout: float = TIMEOUT) -> Report:
        """Take reports until one matches; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while True:
            left = deadline - time.monotonic()
            try:
                report = self._queue.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise AssertionError(
                    f"no report of {what} within {timeout:g} s; got {self.seen[start:]!r}"
                ) from None
            self.seen.append(report)
            if predicate(report):
                return report

    def until(self, predicate: Predicate, what: str, timeout: float = TIMEOUT) -> list[Report]:
        """Take reports up to and including the first match; return them all."""
        start = len(self.seen)
        self.wait_for(predicate, what, timeout)
        return self.seen[start:]

    def barrier(self, fake: StandinSystemd) -> list[Report]:
        """Everything reported about signals sent before now: the stand-in sends
        ``Reloading`` on the same connection after them, and the watcher handles events in
        order, so its rescan notice comes after every earlier signal was handled."""
        fake.emit_reloading()
        return self.until(notice("rescanned", "daemon-reload"), "the rescan after Reloading")


def verdict(agent: str, kind: type[Verdict] | tuple[type[Verdict], ...]) -> Predicate:
    """Matches a :class:`UnitReport` about ``agent`` whose verdict is a ``kind``."""

    def match(report: Report) -> bool:
        return (
            isinstance(report, UnitReport)
            and report.agent == agent
            and isinstance(report.verdict, kind)
        )

    return match


def notice(kind: str, contains: str = "") -> Predicate:
    """Matches a :class:`WatcherNotice` of ``kind`` whose detail contains ``contains``."""

    def match(report: Report) -> bool:
        return isinstance(report, WatcherNotice) and report.kind == kind and (
            contains in report.detail
        )

    return match


def of(reports: list[Report], agent: str, kind: type[Verdict]) -> list[Verdict]:
    """The verdicts of ``kind`` about ``agent`` among ``reports``."""
    return [r.verdict for r in reports
            if isinstance(r, UnitReport) and r.agent == agent and isinstance(r.verdict, kind)]


class Judged:
    """The reader's ``on_report``: each observation classified in the order it was handed over
    (one lock: the reader's thread and the callers of ``stop_unit`` both hand things over),
    the verdicts and notices passed on to ``reports``."""

    def __init__(self, reports: Reports) -> None:
        self.reports = reports
        self.judge = UnitJudge()
        self._lock = threading.Lock()

    def __call__(self, item: Observation) -> None:
        with self._lock:
            report = self.judge.take(item)
            if report is not None:
                self.reports(report)
