"""Injected time: a monotonic clock with timers, and a virtual one for tests.

Every piece of hive logic that depends on time (restart intensity, backoff, readiness and shutdown
deadlines, stall detection) takes a :class:`Clock` instead of calling :func:`time.monotonic`, so
tests run it in virtual time: :meth:`FakeClock.advance` moves time forward and fires the timers
that came due, in the caller's thread, in deadline order.

Timer callbacks must be short and must not block: the usual callback tells an actor a message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable, Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "Timer"]

log = logging.getLogger(__name__)


class Timer(Protocol):
    """A handle on a scheduled callback."""

    def cancel(self) -> None:
        """Prevent the callback from running, if it has not run yet."""


class Clock(Protocol):
    """Monotonic time in seconds plus one-shot timers."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences are meaningful)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once, ``delay`` seconds from now."""


class _Entry:
    """One scheduled callback; ``cancelled`` is read by the scheduler under its lock."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Heap:
    """A deadline-ordered heap of entries, shared by both clocks."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()

    def push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, (entry.deadline, next(self._seq), entry))

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> _Entry | None:
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return None
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return sum(1 for _, _, e in self._heap if not e.cancelled)


def _run(entry: _Entry) -> None:
    try:
        entry.callback()
    except Exception:  # a timer callback must never take the scheduler down with it
        log.exception("timer callback %r failed", entry.callback)


class SystemClock:
    """Real monotonic time; all timers share one daemon scheduler thread.

    One thread for every timer (instead of a :class:`threading.Timer` each) keeps 200 agents'
    backoff and deadline timers cheap.
    """

    def __init__(self) -> None:
        self._heap = _Heap()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        entry = _Entry(self.now() + max(0.0, delay), callback)
        with self._cond:
            self._heap.push(entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="hive-clock", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return entry

    def _loop(self) -> None:
        while True:
            with self._cond:
                entry = self._heap.pop_due(self.now())
                if entry is None:
                    deadline = self._heap.next_deadline()
                    timeout = None if deadline is None else max(0.0, deadline - self.now())
                    self._cond.wait(timeout)
                    continue
            # Run outside the lock: a callback may schedule another timer.
            if not entry.cancelled:
                _run(entry)


class FakeClock:
    """Virtual time for tests: nothing happens until :meth:`advance` is called."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._heap = _Heap()
        self._lock = threading.RLock()
        self._scheduled = threading.Condition(self._lock)

    def now(self) -> float:
        with self._lock:
            return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        with self._lock:
            entry = _Entry(self._now + max(0.0, delay), callback)
            self._heap.push(entry)
            self._scheduled.notify_all()
        return entry

    def wait_pending(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` timers are scheduled (another thread schedules them);
        False if that did not happen within ``timeout`` real seconds."""
        with self._lock:
            return self._scheduled.wait_for(lambda: len(self._heap) >= count, timeout)

    def pending(self) -> int:
        """How many timers are scheduled and not cancelled."""
        with self._lock:
            return len(self._heap)

    def next_deadline(self) -> float | None:
        """Seconds from now to the next scheduled timer, or None."""
        with self._lock:
            deadline = self._heap.next_deadline()
            return None if deadline is None else deadline - self._now

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in deadline order at their own time."""
        with self._lock:
            target = self._now + seconds
        while True:
            with self._lock:
                entry = self._heap.pop_due(target)
                if entry is None:
                    self._now = target
                    return
                self._now = max(self._now, entry.deadline)
            if not entry.cancelled:
                _run(entry)
