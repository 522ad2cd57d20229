"""What a supervisor is told to supervise: child specs and supervisor flags, validated when built.

A malformed spec is refused at construction with a :class:`~hive_actors.errors.SpecError` that
names the field, the bad value and the allowed values — never later, deep in a thread.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from pykka import ActorRef

from hive_actors.errors import SpecError

__all__ = [
    "Backoff",
    "ChildSpec",
    "RestartLimit",
    "RestartType",
    "Strategy",
    "SupervisorFlags",
]


class RestartType(enum.Enum):
    """When a child that ended is started again (OTP's restart types)."""

    PERMANENT = "permanent"
    """Always restarted."""
    TRANSIENT = "transient"
    """Restarted only after an abnormal exit."""
    TEMPORARY = "temporary"
    """Never restarted; removed from the supervisor when it ends."""


class Strategy(enum.Enum):
    """Which children a failure takes down with it (OTP's strategies)."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that failed is restarted."""
    ONE_FOR_ALL = "one_for_all"
    """Every child is stopped (reverse order) and restarted (in order)."""
    REST_FOR_ONE = "rest_for_one"
    """The failed child and those started after it are stopped and restarted."""


def _enum(cls: type[enum.Enum], value: Any, where: str, fieldname: str) -> Any:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise SpecError(
            f"{where}: {fieldname}={value!r} is not one of the allowed values: {allowed}"
        ) from None


def _number(value: Any, where: str, fieldname: str, *, positive: bool, hint: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        need = "a number > 0" if positive else "a number >= 0"
        raise SpecError(f"{where}: {fieldname}={value!r} must be {need} ({hint})")
    return float(value)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between restarts of one child (Akka/Kubernetes style).

    The n-th consecutive restart of a child waits ``min(max, min * factor**n)`` seconds, spread by
    ±``jitter`` (a fraction). A child that stayed up for ``reset_after`` seconds starts again at n=0.
    """

    min: float = 0.1
    """Delay before the first restart, in seconds (0 restarts at once)."""
    max: float = 30.0
    """Ceiling of the delay, in seconds."""
    factor: float = 2.0
    """Growth per consecutive restart (>= 1)."""
    jitter: float = 0.2
    """Random spread as a fraction of the delay, in [0, 1)."""
    reset_after: float = 60.0
    """Seconds a child must stay up for its backoff to start over."""

    def __post_init__(self) -> None:
        where = "backoff"
        _number(self.min, where, "min", positive=False, hint="seconds before the first restart")
        _number(self.max, where, "max", positive=False, hint="ceiling in seconds")
        _number(self.reset_after, where, "reset_after", positive=True, hint="stable seconds")
        if self.max < self.min:
            raise SpecError(f"{where}: max={self.max!r} is below min={self.min!r}; raise max")
        f = _number(self.factor, where, "factor", positive=True, hint="growth per restart")
        if f < 1:
            raise SpecError(f"{where}: factor={self.factor!r} must be >= 1 (1 = constant delay)")
        j = _number(self.jitter, where, "jitter", positive=False, hint="a fraction")
        if j >= 1:
            raise SpecError(f"{where}: jitter={self.jitter!r} must be in [0, 1)")

    def delay(self, attempt: int, unit_random: float) -> float:
        """The delay before restart number ``attempt`` (0-based); ``unit_random`` in [0, 1)."""
        if not self.min:
            base = 0.0
        else:
            try:
                base = min(self.max, self.min * self.factor**attempt)
            except OverflowError:  # a child that has failed a thousand times in a row
                base = self.max
        spread = base * self.jitter * (2.0 * unit_random - 1.0)
        return max(0.0, min(self.max, base + spread)) if base else 0.0


NO_BACKOFF = Backoff(min=0.0, max=0.0, factor=1.0, jitter=0.0)


@dataclass(frozen=True)
class RestartLimit:
    """At most ``intensity`` restarts in ``period`` seconds — and, when ``consecutive`` is set,
    at most that many failures in a row.

    The window alone never fills for a child whose backoff has grown past ``period`` /
    ``intensity``: ``consecutive`` bounds such a child whatever the timing. Failures are *in a
    row* while the child never stayed up for its backoff's ``reset_after`` seconds between them
    (a failed start counts; a stable run starts the count over).
    """

    intensity: int
    period: float
    consecutive: int | None = None
    """The most failures in a row: the one that reaches it gives the child up. None: no such
    limit (the window only)."""

    def check(self, where: str) -> None:
        if (
            not isinstance(self.intensity, int)
            or isinstance(self.intensity, bool)
            or self.intensity < 0
        ):
            raise SpecError(
                f"{where}: intensity={self.intensity!r} must be a whole number >= 0 "
                "(the most restarts allowed within period)"
            )
        _number(self.period, where, "period", positive=True, hint="the window in seconds")
        n = self.consecutive
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise SpecError(
                f"{where}: consecutive={n!r} must be a whole number >= 1 (the most failures "
                "in a row before the child is given up) or None (no such limit)"
            )


@dataclass(frozen=True)
class SupervisorFlags:
    """How a supervisor reacts to failures."""

    strategy: Strategy | str = Strategy.ONE_FOR_ONE
    """one_for_one, one_for_all or rest_for_one."""
    intensity: int = 3
    """At most this many restarts …"""
    period: float = 5.0
    """… within this many seconds; one more and the supervisor gives up and escalates."""
    backoff: Backoff = field(default_factory=Backoff)
    """Delay between restarts of the same child."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "strategy", _enum(Strategy, self.strategy, "supervisor flags", "strategy")
        )
        RestartLimit(self.intensity, self.period).check("supervisor flags")
        if not isinstance(self.backoff, Backoff):
            raise SpecError(f"supervisor flags: backoff={self.backoff!r} must be a Backoff")


@dataclass(frozen=True)
class ChildSpec:
    """One child of a supervisor."""

    id: str
    """Unique among its siblings."""
    start: Callable[[], ActorRef[Any]]
    """Starts the child and returns its ref (e.g. ``lambda: Worker.start(...)``)."""
    restart: RestartType | str = RestartType.PERMANENT
    """permanent, transient or temporary."""
    shutdown: float = 5.0
    """Seconds the child gets to stop before it is abandoned (and that is reported)."""
    ready_timeout: float = 10.0
    """Seconds the child gets to become ready after it was started."""
    limit: RestartLimit | None = None
    """Per-child intensity: past it the child is *given up* (stays down) instead of the
    supervisor escalating. None: only the supervisor's intensity applies."""
    meta: Any = None
    """Free data for the supervisor's owner (e.g. an agent's name)."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise SpecError(f"child spec: id={self.id!r} must be a non-empty string")
        where = f"child spec {self.id!r}"
        if not callable(self.start):
            raise SpecError(f"{where}: start={self.start!r} must be a callable returning a ref")
        object.__setattr__(self, "restart", _enum(RestartType, self.restart, where, "restart"))
        _number(self.shutdown, where, "shutdown", positive=True, hint="seconds to stop")
        _number(self.ready_timeout, where, "ready_timeout", positive=True, hint="seconds")
        if self.limit is not None:
            if not isinstance(self.limit, RestartLimit):
                raise SpecError(f"{where}: limit={self.limit!r} must be a RestartLimit or None")
            self.limit.check(where)


def check_unique(specs: list[ChildSpec]) -> None:
    """Refuse duplicate child ids."""
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise SpecError(f"supervisor children: {spec!r} is not a ChildSpec")
        if spec.id in seen:
            raise SpecError(
                f"supervisor children: duplicate child id {spec.id!r}; every id must be unique"
            )
        seen.add(spec.id)
