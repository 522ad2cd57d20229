"""The fan-out's vocabulary: what it is given (events, snapshots), its bounds, its reports.

Kept apart from :mod:`.fanout` so the store and the gateway can name these types without
pulling in the websocket machinery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ClientInfo", "EventLike", "FanoutLimits", "Snapshot", "event_to_dict"]


class EventLike(Protocol):
    """What the fan-out needs of an event: a monotonic integer id (the rest is encoded)."""

    @property
    def id(self) -> int:
        """Monotonic, gap-free in commit order."""


@dataclass(frozen=True)
class Snapshot:
    """The state a new client starts from."""

    state: Any
    """JSON-able: whatever the dashboard needs to render from scratch."""
    last_event_id: int
    """The newest event the state includes (read in the same transaction as the state)."""


@dataclass(frozen=True)
class FanoutLimits:
    """Bounds of the fan-out."""

    queue_size: int = 256
    """Events queued per client before it is resynced from the log."""
    page_size: int = 200
    """Events per log read while catching up."""
    max_replay: int = 5000
    """Events replayed in one catch-up before a fresh snapshot is sent instead."""
    max_message: int = 16 * 1024
    """Largest client message in bytes (1009 above)."""
    read_timeout: float = 10.0
    """Deadline of one ``snapshot()`` / ``events_since()`` call (1011 past it)."""
    close_timeout: float = 2.0
    """How long a close frame may wait for a client that is not reading."""
    inbox_size: int = 100_000
    """Published events waiting for the loop; beyond, they are dropped and every client
    catches up from the log (the loop was stuck)."""

    def __post_init__(self) -> None:
        for name in ("queue_size", "page_size", "max_replay", "max_message", "inbox_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"FanoutLimits.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ClientInfo:
    """Who a resync or a close happened to (for logs and hooks)."""

    client: str
    """The client's address, ``host:port``."""
    sent_id: int
    """The last event id handed to the client's socket."""


def event_to_dict(event: Any) -> dict[str, Any]:
    """Encode a dataclass event (e.g. the store's ``Event``) as a JSON-able dict."""
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(event):
            value = getattr(event, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out
    if isinstance(event, Mapping):
        return dict(event)
    raise TypeError(f"cannot encode event {event!r}: give Fanout an encode= function")
