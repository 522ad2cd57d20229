"""The stats service's settings (a ``[stats]`` section once the hive config carries one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hive_actors.errors import ConfigError

from .retention import RetentionPolicy

__all__ = ["StatsConfig"]


@dataclass(frozen=True)
class StatsConfig:
    """How often the stats actor samples and prunes, and how long rows are kept."""

    sample_interval: float = 15.0
    """Seconds between sampling ticks (inbox depth, notes size, queues, lifecycle events)."""
    depth_window: float = 300.0
    """``inbox.depth_max`` is the largest depth sampled over this many seconds."""
    gauge_heartbeat: float = 300.0
    """An unchanged gauge is written again only after this many seconds."""
    retention_interval: float = 600.0
    """Seconds between retention runs (downsampling and dropping old rows)."""
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    """How long raw rows, per-minute and per-hour aggregates are kept."""
    scrape_timeout: float = 2.0
    """Deadline for each actor a ``/metrics`` scrape asks (the agents supervisor)."""
    notes_threshold: int = 16 * 1024
    """The notes compaction threshold in bytes, drawn on the notes chart and exported as
    ``hive_notes_compaction_threshold_bytes`` (the agents' ``AgentRuntime.notes_threshold``)."""

    def __post_init__(self) -> None:
        for name in (
            "sample_interval", "depth_window", "gauge_heartbeat", "retention_interval",
            "scrape_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(
                    f"[stats] {name} = {value!r} must be a positive number of seconds"
                )
        if not isinstance(self.retention, RetentionPolicy):
            raise ConfigError(
                f"[stats] retention must be a RetentionPolicy, got {self.retention!r}"
            )
