"""What one observation of a ``container@<name>.service`` unit means: the verdicts, pure data.

:func:`hive_actors.watcher.classify.classify` answers one of these for every state it is shown.
Only :class:`Crash` asks the supervisor to act; the others are notices the caller may log or use
to complete its own bookkeeping (a stop it asked for, systemd giving up on its own restarts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Crash",
    "FailedStop",
    "GaveUp",
    "NoEvent",
    "Rebooted",
    "RestartScheduled",
    "RestartedUnseen",
    "StopBy",
    "Stopped",
    "Unreadable",
    "Verdict",
]

StopBy = Literal["hive", "operator-or-guest"]
"""Who ended a unit: the hive asked for it, or someone else did (an operator's ``systemctl
stop``, a poweroff inside the container) — the two look the same on the bus."""


@dataclass(frozen=True, slots=True)
class Crash:
    """The container failed on its own: report it to the supervisor, once."""

    result: str
    """systemd's ``Result``: ``exit-code``, ``signal``, ``core-dump``, ``timeout``, ``oom-kill``…"""
    exec_main_code: int
    """``ExecMainCode``: 1 exited, 2 killed, 3 dumped, 0 when no main process ran."""
    exit_code: int | None
    """The main process's exit code when it exited (``exec_main_code == 1``), else None."""
    signal: int | None
    """The signal that killed the main process (``exec_main_code`` 2 or 3), else None."""
    invocation_id: str
    """The run that crashed (``InvocationID`` as hex); empty when systemd gave none."""
    n_restarts: int
    """``NRestarts`` when the crash was seen: systemd's own automatic restarts so far."""
    will_restart: bool
    """systemd restarts the unit by itself (``auto-restart`` seen, or the unit's ``Restart=``
    policy asks for it): the supervisor must not start it a second time."""


@dataclass(frozen=True, slots=True)
class FailedStop:
    """A stop that ended in ``failed`` (a stop job was pending, or the hive asked for the stop):
    not a crash."""

    by: StopBy
    result: str
    """systemd's ``Result`` after the failed stop (often ``timeout``)."""
    invocation_id: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The unit went down cleanly (``inactive``, ``Result=success``): not a crash."""

    by: StopBy
    invocation_id: str


@dataclass(frozen=True, slots=True)
class Rebooted:
    """A reboot inside the container: the run ended with ``Result=success`` and systemd starts it
    again (NixOS: ``systemd-nspawn`` exits 133, which ``container@.service`` forces to restart)."""

    invocation_id: str
    exit_status: int
    """``ExecMainStatus`` of the run that ended (133 for a NixOS reboot)."""


@dataclass(frozen=True, slots=True)
class GaveUp:
    """systemd stopped restarting the unit by itself (its start limit): the unit stays ``failed``
    until someone starts it. ``result`` keeps the first failure's reason."""

    result: str
    invocation_id: str
    n_restarts: int


@dataclass(frozen=True, slots=True)
class RestartScheduled:
    """systemd scheduled an automatic restart of a run whose end was already reported without
    saying so (systemd 252 shows ``failed`` before ``auto-restart``)."""

    invocation_id: str
    n_restarts: int


@dataclass(frozen=True, slots=True)
class RestartedUnseen:
    """systemd restarted the unit by itself while the watcher was not looking (a new run, and
    ``NRestarts`` went up): the earlier run ended, but how (crash or reboot) is unknown."""

    previous_invocation_id: str
    invocation_id: str
    restarts: int
    """How many automatic restarts happened unseen."""


@dataclass(frozen=True, slots=True)
class NoEvent:
    """Nothing the hive needs to act on; ``reason`` says why, for a debug log."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The observation could not be understood (bad types, missing properties, an odd unit
    name): nothing is concluded from it, and no crash is reported on a guess."""

    problems: tuple[str, ...]
    """What was wrong, one line each, with the bad value."""


Verdict = (
    Crash | FailedStop | Stopped | Rebooted | GaveUp | RestartScheduled | RestartedUnseen
    | NoEvent | Unreadable
)
"""Every answer :func:`~hive_actors.watcher.classify.classify` can give."""
