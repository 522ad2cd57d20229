"""The one exception tree of hive_actors.

Every error the hive raises on purpose derives from :class:`HiveError`. Its message says what
happened, the bad value, and what to do about it (the fix or the config key)::

    HiveError
    ├── ConfigError            bad configuration or a malformed spec, refused when it is built
    │   └── SpecError          a malformed child spec or supervisor flags
    ├── Refused                a request refused for what it asked; the actor that refused goes on
    │   ├── NotFound           an unknown agent, approval, question…
    │   └── Conflict           a second decision, a duplicate name…
    ├── StartFailure           a child that could not start or never became ready
    ├── StoreError             the sqlite file cannot be used (locked, unreadable, newer schema)
    ├── Escalation             a supervisor gave up after too many restarts
    └── UnexpectedMessage      an actor got a message outside its union: a bug, it crashes

``Refused`` is special to the actor base: an actor whose handler raises it answers the caller
with it and keeps running, where any other exception is a crash reported to its supervisor.
Library errors are translated at the boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "ConfigError",
    "Escalation",
    "HiveError",
    "NotFound",
    "Refused",
    "SpecError",
    "StartFailure",
    "StoreError",
    "UnexpectedMessage",
]


class HiveError(Exception):
    """Root of every error hive_actors raises on purpose."""


class ConfigError(HiveError):
    """Configuration or input that cannot be used, refused when it arrives."""


class SpecError(ConfigError):
    """A malformed child spec or supervisor flags, refused when built."""


class Refused(HiveError):
    """A request refused because of what it asked; nothing changed and the actor goes on."""


class NotFound(Refused):
    """The request names something that does not exist."""


class Conflict(Refused):
    """The request conflicts with what is stored (a second decision, a duplicate)."""


class StartFailure(HiveError):
    """A child could not be started or did not become ready in time."""


class StoreError(HiveError):
    """The store cannot be used as it is."""


class Escalation(HiveError):
    """A supervisor reached its restart intensity and gave up."""


class UnexpectedMessage(HiveError):
    """An actor was sent a message outside the union its ``receive`` handles (a bug in the
    sender): the actor answers an ``ask`` with it and crashes."""
