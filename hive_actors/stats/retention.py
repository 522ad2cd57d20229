"""Pure retention: which rows of the ``stats`` table to drop, and which to merge into coarser ones.

Three tiers, by age (``now`` minus the row's ``ts``), each cut aligned to its resolution:

==========================  =====================================================
age                         what the table holds
==========================  =====================================================
under ``raw`` (48 h)        raw rows, as written
``raw`` .. ``minutes``      one row per (agent, key, minute)  — ts = minute start
``minutes`` .. ``hours``    one row per (agent, key, hour)    — ts = hour start
past ``hours`` (180 d)      nothing: dropped
==========================  =====================================================

A merged row aggregates by the key's rule (:func:`keys.aggregation`): event keys **sum** (so a
count, a token total or a histogram bucket stays exact however coarse), gauges take the **max**.
The plan is idempotent: a group that already is one row at its bucket's start is left alone, so
running it twice, or over rows an earlier run merged, changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from hive_actors.errors import ConfigError

from .keys import aggregation
from .series import Row

__all__ = [
    "Cutoffs",
    "RetentionPlan",
    "RetentionPolicy",
    "StoredRow",
    "cutoffs",
    "plan_retention",
    "scan_ranges",
]

MINUTE = 60.0
HOUR = 3600.0


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each tier is kept, in seconds of age."""

    raw: float = 48 * HOUR
    """Raw rows younger than this stay as written."""
    minutes: float = 14 * 24 * HOUR
    """Per-minute aggregates are kept until this age…"""
    hours: float = 180 * 24 * HOUR
    """…then per-hour aggregates until this one; older rows are dropped."""

    def __post_init__(self) -> None:
        for name in ("raw", "minutes", "hours"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(
                    f"[stats] retention {name} = {value!r} must be a positive number of seconds"
                )
        if not self.raw <= self.minutes <= self.hours:
            raise ConfigError(
                f"[stats] retention must grow with each tier: raw ({self.raw:g} s) <= minutes "
                f"({self.minutes:g} s) <= hours ({self.hours:g} s); raise the later ones"
            )


@dataclass(frozen=True)
class Cutoffs:
    """The tier boundaries for one run, as timestamps (rows with ``ts`` below a cut are older)."""

    raw: float
    """Below: merged per minute (minute-aligned)."""
    minute: float
    """Below: merged per hour (hour-aligned)."""
    drop: float
    """Below: dropped (hour-aligned)."""


def _floor(value: float, step: float) -> float:
    return math.floor(value / step) * step


def cutoffs(now: float, policy: RetentionPolicy) -> Cutoffs:
    """The cuts for a run at ``now``; each tier covers whole minutes or hours."""
    raw = _floor(now - policy.raw, MINUTE)
    minute = min(_floor(now - policy.minutes, HOUR), raw)
    drop = min(_floor(now - policy.hours, HOUR), minute)
    return Cutoffs(raw=raw, minute=minute, drop=drop)


def scan_ranges(cut: Cutoffs, previous: Cutoffs | None) -> list[tuple[float, float]]:
    """The ``[lo, hi)`` ts ranges a run must read, given the cuts of the last run that completed.

    Without a previous run (the actor just started) that is everything older than ``cut.raw``.
    After one, only what crossed a cut since: the minute tier's new slice, the hour tier's
    new slice, and whatever is past the drop cut.
    """
    if previous is None:
        return [(-math.inf, cut.raw)]
    ranges = [(-math.inf, cut.drop)]
    if cut.minute > previous.minute:
        ranges.append((max(previous.minute, cut.drop), cut.minute))
    if cut.raw > previous.raw:
        ranges.append((max(previous.raw, cut.minute), cut.raw))
    return ranges


class StoredRow(NamedTuple):
    """A row as read back for retention, with its rowid."""

    rowid: int
    agent: str
    ts: float
    key: str
    value: float


@dataclass(frozen=True)
class MergeGroup:
    """Rows replaced by one aggregate (delete and insert together, in one transaction)."""

    delete: tuple[int, ...]
    insert: Row


@dataclass(frozen=True)
class RetentionPlan:
    """What one retention run does."""

    drop: tuple[int, ...]
    """Rowids past the horizon."""
    merges: tuple[MergeGroup, ...]
    """Groups merged into one row each."""

    @property
    def merged_rows(self) -> int:
        """Rows replaced by aggregates."""
        return sum(len(g.delete) for g in self.merges)

    @property
    def empty(self) -> bool:
        return not self.drop and not self.merges


def plan_retention(rows: Iterable[StoredRow], cut: Cutoffs) -> RetentionPlan:
    """Plan a run over ``rows``; rows at or after ``cut.raw`` are never touched."""
    drop: list[int] = []
    groups: dict[tuple[str, str, float], list[StoredRow]] = {}
    for row in rows:
        if row.ts >= cut.raw:
            continue
        if row.ts < cut.drop:
            drop.append(row.rowid)
            continue
        step = HOUR if row.ts < cut.minute else MINUTE
        groups.setdefault((row.agent, row.key, _floor(row.ts, step)), []).append(row)
    merges: list[MergeGroup] = []
    for (agent, key, start), members in sorted(groups.items()):
        if len(members) == 1 and members[0].ts == start:
            continue  # already an aggregate of this tier
        values = [m.value for m in members]
        value = max(values) if aggregation(key) == "max" else math.fsum(values)
        merges.append(
            MergeGroup(
                delete=tuple(sorted(m.rowid for m in members)),
                insert=Row(agent, start, key, value),
            )
        )
    return RetentionPlan(drop=tuple(sorted(drop)), merges=tuple(merges))
