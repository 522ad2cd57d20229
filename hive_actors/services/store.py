"""StoreActor: the first child of the hive; it owns the sqlite file.

It opens the file (creating or migrating it), takes the hive's lock on it — a second hive on the
same file fails here with a clear error — and runs start-up recovery: every message that was in
flight when the previous hive died goes back to its inbox (no turn survives the daemon). Only then
is it ready, so every service started after it (bus, approvals, agents…) finds a current schema.
Those services open their own connections; this one stays open to hold the lock.

It also keeps the file's history bounded (:mod:`hive_actors.store.prune`): every
``prune_interval`` seconds a pruning run starts, one bounded step per message to itself,
``prune_pause`` apart, so the bus's commits get the write lock between steps. Nothing else runs
on this actor, so a run never delays another service's messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hive_actors.actor import HiveActor, unexpected
from hive_actors.clock import Clock, Timer
from hive_actors.errors import StoreError
from hive_actors.store import Store
from hive_actors.store.prune import Pruner, PruneReport, RetentionLimits

__all__ = ["PruneNow", "StoreActor", "StoreMessage"]


@dataclass(frozen=True)
class PruneNow:
    """Ask: run a whole pruning run now (step after step, unpaced); answers a PruneReport."""


@dataclass(frozen=True)
class _PruneTick:
    """Timer: start a pruning run."""


@dataclass(frozen=True)
class _PruneStep:
    """One more step of the run in progress."""


StoreMessage = PruneNow | _PruneTick | _PruneStep
"""Every message :class:`StoreActor` accepts; its ``receive`` matches each one."""


class StoreActor(HiveActor):
    """Holds the hive's store open (and locked) for the life of the tree."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        retention: RetentionLimits | None = None,
        clock: Clock | None = None,
        name: str = "store",
    ) -> None:
        """``retention``: how much history the file keeps (None: the defaults); ``clock``
        paces the pruning runs (tests give a fake one)."""
        super().__init__(name=name, clock=clock)
        self._open_store = open_store
        self._store: Store | None = None
        self.recovery: Any = None
        self.retention = retention or RetentionLimits()
        self._pruner: Pruner | None = None
        self._report = PruneReport()
        self._timer: Timer | None = None

    def on_start(self) -> None:
        self._store = self._open_store()
        self.recovery = self._store.recover()
        self.log.info(
            "store open at %s (recovered %d in-flight message(s))",
            self._store.path,
            self.recovery.released,
        )
        self._pruner = Pruner(self._store.db, self.retention)
        if self.retention.enabled:
            self._timer = self.send_after(self.retention.prune_interval, _PruneTick())

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._store is not None:
            self._store.close()

    def receive(self, message: StoreMessage) -> Any:
        match message:
            case _PruneTick():
                self._start_run()
                return None
            case _PruneStep():
                self._step()
                return None
            case PruneNow():
                assert self._pruner is not None and self._store is not None
                report = self._pruner.run(self._store.db.now())
                self._log_run(report)
                return report
            case _:
                unexpected(self, message)

    # -- pruning ---------------------------------------------------------------------------

    def _start_run(self) -> None:
        assert self._pruner is not None and self._store is not None
        self._pruner.start(self._store.db.now())
        self._report = PruneReport()
        self._step()

    def _step(self) -> None:
        assert self._pruner is not None
        if not self._pruner.running:
            return  # a PruneNow finished the run
        try:
            step = self._pruner.step()
        except StoreError as exc:
            # Its transaction rolled back: nothing was half-pruned. A crash here would restart
            # every service after the store, for history that can as well wait: next run.
            self.log.error("pruning failed (retried in %g s): %s",
                           self.retention.prune_interval, exc)
            self._timer = self.send_after(self.retention.prune_interval, _PruneTick())
            return
        self._report.add(step)
        if step.more:
            self._timer = self.send_after(self.retention.prune_pause, _PruneStep())
            return
        self._log_run(self._report)
        self._timer = self.send_after(self.retention.prune_interval, _PruneTick())

    def _log_run(self, report: PruneReport) -> None:
        if report.total:
            detail = ", ".join(f"{n} {table}" for table, n in sorted(report.deleted.items()))
            self.log.info("pruned %s in %d step(s)", detail, report.steps)

