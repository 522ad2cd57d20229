"""The runtime's own messages: why an actor ended, and the notices monitors receive.

Messages are frozen dataclasses dispatched with ``match``. Domain messages live beside the actor
that handles them (``supervisors/messages.py``, the bus, …); these are the ones every actor may
receive from the runtime itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:
    from pykka import ActorRef

__all__ = [
    "Crashed",
    "Down",
    "ExitReason",
    "Killed",
    "NoProc",
    "Normal",
    "Ready",
    "is_abnormal",
]

Phase = Literal["on_start", "receive", "on_stop", "ready", "start"]


@dataclass(frozen=True)
class Normal:
    """The actor was stopped, by itself or by anyone holding its ref."""

    def __str__(self) -> str:
        return "normal"


@dataclass(frozen=True)
class Crashed:
    """The actor died of an exception."""

    phase: Phase
    """Where it died: ``on_start``, a ``receive`` handler (tell or ask), or ``on_stop``."""
    error_type: str
    """The exception's class name, e.g. ``ValueError``."""
    message: str
    """``str()`` of the exception."""
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    """The exception itself (its traceback included), when the crash happened in this process."""

    @classmethod
    def from_exception(cls, phase: Phase, exc: BaseException) -> Crashed:
        # No formatted traceback here: formatting one (Python 3.11 re-reads the source for its
        # ^^^ markers) cost more than the rest of a crash report; the logs format it from
        # ``exception`` when they need it.
        return cls(phase=phase, error_type=type(exc).__name__, message=str(exc), exception=exc)

    def __str__(self) -> str:
        return self.text(self.phase, self.error_type, self.message)

    @staticmethod
    def text(phase: Phase, error_type: str, message: str) -> str:
        """``str`` of such a crash, without building one."""
        where = "in a handler" if phase == "receive" else f"in {phase}"
        return f"crashed {where}: {error_type}: {message}"


@dataclass(frozen=True)
class Killed:
    """The actor did not stop within its shutdown timeout and was abandoned."""

    why: str

    def __str__(self) -> str:
        return f"killed: {self.why}"


@dataclass(frozen=True)
class NoProc:
    """The actor was not alive when it was watched (and its end is too old to remember)."""

    def __str__(self) -> str:
        return "noproc"


ExitReason = Union[Normal, Crashed, Killed, NoProc]


def is_abnormal(reason: ExitReason) -> bool:
    """True for an exit a ``transient`` child is restarted after."""
    return not isinstance(reason, Normal)


@dataclass(frozen=True)
class Down:
    """Sent to every monitor when the watched actor stops or dies."""

    ref: ActorRef[Any]
    """The actor that ended."""
    name: str
    """Its name, for logs and errors."""
    reason: ExitReason
    """Why it ended."""
    tag: Any = None
    """Whatever the watcher passed to ``watch``, handed back untouched."""


@dataclass(frozen=True)
class Ready:
    """Sent to readiness watchers once the actor declared itself ready."""

    ref: ActorRef[Any]
    """The actor that is ready."""
    name: str
    """Its name."""
    tag: Any = None
    """Whatever the watcher passed, handed back untouched."""
