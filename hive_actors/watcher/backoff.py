"""Reconnect backoff, pure: exponential with jitter, capped. The randomness is passed in."""

from __future__ import annotations

from dataclasses import dataclass

from hive_actors.errors import ConfigError

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): ``initial * factor**n`` capped at
    ``maximum``, then spread by ±``jitter`` (a fraction) so that many watchers do not hammer a
    restarted bus in step."""

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.factor >= 1 and 0 <= self.jitter < 1):
            raise ConfigError(
                f"watcher backoff: need 0 < initial <= maximum, factor >= 1, 0 <= jitter < 1; "
                f"got initial={self.initial}, maximum={self.maximum}, factor={self.factor}, "
                f"jitter={self.jitter}"
            )

    def delay(self, attempt: int, unit_random: float) -> float:
        """Seconds to wait before attempt ``attempt``; ``unit_random`` is a draw in [0, 1)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1 - self.jitter + 2 * self.jitter * unit_random)
