"""The crash reflex, pure: a crash of a unit's unreported run, told from the raw signals alone.

Every observation of a unit goes through :func:`~hive_actors.watcher.classify.classify`, which
needs the signals' properties checked, merged and decoded first. The observation the hive must
act on at once has a single shape, though: systemd's ``Service`` ``PropertiesChanged`` with a
``Result`` other than ``success``, then the ``Unit`` one saying that the run not reported yet
failed, with no job pending, and the hive did not ask for the stop. So:

- :func:`read_service` reads a raw ``Service`` payload that is whole and well formed into a
  :class:`ServiceSignal`; the watcher holds it, unmerged, until the ``Unit`` signal that
  follows (merging it then, after the crash was told, costs the crash nothing);
- :func:`arm` prepares, after each classification of a unit, what that unit's next crash is
  recognised by: the raw ``InvocationID`` of its run, while nothing about that run was
  reported (a :class:`Reflex`);
- :func:`crash` compares a raw ``Unit`` payload against the reflex and the held ``Service``
  signal in a few steps, and answers the :class:`~hive_actors.watcher.verdicts.Crash`, or None:
  "not this shape, ask the classification".

An early answer, never another one: what :func:`read_service` accepts, the checks of
:mod:`~hive_actors.watcher.props` accept too, to the same values; when :func:`crash` answers a
crash, ``classify`` answers the same crash for the same observation (property tests hold them
together), and the watcher still classifies the observation afterwards, for its bookkeeping,
reporting nothing twice. Where being as lenient as the checks would cost a step, the reflex is
stricter (exact types): anything unusual goes the general way.
"""

from __future__ import annotations

from typing import Any

from hive_actors.watcher.classify import (
    ACTIVE_STATES,
    FAILED_RESTARTING,
    SERVICE_SUB_STATES,
    UnitSnapshot,
    restart_expected,
)
from hive_actors.watcher.props import UNIT_INTERFACE
from hive_actors.watcher.verdicts import Crash

__all__ = ["Reflex", "ServiceSignal", "arm", "crash", "read_service"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT32_MAX = 2**32 - 1


class ServiceSignal:
    """A ``Service`` ``PropertiesChanged`` payload read by :func:`read_service`: whole, well
    formed, not merged yet."""

    __slots__ = ("changed", "exec_main_code", "exec_main_status", "n_restarts", "restart",
                 "restarts", "result")

    def __init__(self, changed: dict[str, Any], result: str, exec_main_code: int,
                 exec_main_status: int, n_restarts: int, restart: str | None) -> None:
        self.changed = changed
        """The payload as sdbus made it (merged later through the general checks)."""
        self.result = result
        self.exec_main_code = exec_main_code
        self.exec_main_status = exec_main_status
        self.n_restarts = n_restarts
        self.restart = restart
        """``Restart=``: the payload's if it carries one, else the unit's as read before (it is
        a const property, in ``GetAll`` only)."""
        self.restarts = restart_expected(restart, result)
        """Whether that policy has systemd restart a run that ended with this ``Result``
        (worked out now, before the ``Unit`` signal arrives)."""


def read_service(changed: Any, restart: str | None) -> ServiceSignal | None:
    """The values of a raw ``Service`` payload (``{name: (signature, value)}``) that carries every
    property a verdict needs, each of the documented signature and an exact type in range; None
    for anything else. ``restart``: the unit's ``Restart=`` as known, used unless the payload
    has its own."""
    # Tested in a few expressions, not a call per property: this runs as the Service signal
    # arrives, while the Unit signal that may tell a crash waits behind it.
    if changed.__class__ is not dict:
        return None
    try:
        r, c, s, n, p = (changed["Result"], changed["ExecMainCode"], changed["ExecMainStatus"],
                         changed["NRestarts"], changed["MainPID"])
    except KeyError:
        return None
    if not (r.__class__ is c.__class__ is s.__class__ is n.__class__ is p.__class__ is tuple
            and len(r) == len(c) == len(s) == len(n) == len(p) == 2):
        return None
    (r_sig, result), (c_sig, code), (s_sig, status), (n_sig, restarts), (p_sig, pid) = (
        r, c, s, n, p)
    if not (r_sig == "s" and c_sig == s_sig == "i" and n_sig == p_sig == "u"
            and result.__class__ is str
            and code.__class__ is status.__class__ is restarts.__class__ is pid.__class__ is int
            and _INT32_MIN <= code <= _INT32_MAX and _INT32_MIN <= status <= _INT32_MAX
            and 0 <= restarts <= _UINT32_MAX and 0 <= pid <= _UINT32_MAX):
        return None
    own = changed.get("Restart")
    if own is not None:
        if not (own.__class__ is tuple and len(own) == 2 and own[0] == "s"
                and own[1].__class__ is str):
            return None
        restart = own[1]
    return ServiceSignal(changed, result, code, status, restarts, restart)


class Reflex:
    """What a unit's next crash is recognised by: its run not reported yet."""

    __slots__ = ("invocation", "invocation_id")

    def __init__(self, invocation_id: str) -> None:
        self.invocation_id = invocation_id
        """The run's ``InvocationID`` as hex (as the verdicts carry it)."""
        self.invocation = bytes.fromhex(invocation_id)
        """The same as systemd sends it (``ay``): compared, not decoded, on each signal."""

    def __repr__(self) -> str:
        return f"Reflex({self.invocation_id!r})"


def arm(snapshot: UnitSnapshot | None, armed: Reflex | None = None) -> Reflex | None:
    """The reflex for a unit after an observation classified into ``snapshot``: for the run it
    shows, when that run has an ``InvocationID`` and nothing was reported about it yet (None
    otherwise). ``armed``, the reflex so far, is kept when it is still the one."""
    if snapshot is None:
        return None
    invocation_id = snapshot.invocation_id
    if len(invocation_id) != 32 or snapshot.record_for(invocation_id, snapshot.n_restarts):
        return None
    if armed is not None and armed.invocation_id == invocation_id:
        return armed
    try:
        return Reflex(invocation_id)
    except ValueError:  # not hex: checked values always are, but nothing is assumed here
        return None


def crash(
    reflex: Reflex, service: ServiceSignal | None, contents: Any, hive_stop: bool
) -> Crash | None:
    """The crash a raw ``PropertiesChanged`` payload (``contents``: interface, changed,
    invalidated) reports for the armed run, given the ``Service`` signal held since the last
    observation and whether the hive asked for a stop; None when it is anything else, or
    anything unusual (the classification then decides)."""
    if hive_stop or service is None or service.result == "success":
        return None
    if contents.__class__ is not tuple or len(contents) != 3 or contents[0] != UNIT_INTERFACE:
        return None
    changed = contents[1]
    if changed.__class__ is not dict:
        return None
    try:
        a, s, j, i = (changed["ActiveState"], changed["SubState"], changed["Job"],
                      changed["InvocationID"])
    except KeyError:
        return None
    if not (a.__class__ is s.__class__ is j.__class__ is i.__class__ is tuple
            and len(a) == len(s) == len(j) == len(i) == 2):
        return None
    (a_sig, active), (s_sig, sub), (j_sig, job), (i_sig, invocation) = a, s, j, i
    if not (a_sig == s_sig == "s" and j_sig == "(uo)" and i_sig == "ay"
            and active.__class__ is sub.__class__ is str):
        return None
    if active not in ACTIVE_STATES or sub not in SERVICE_SUB_STATES:
        return None
    if active != "failed" and sub not in FAILED_RESTARTING:
        return None
    if not (job.__class__ is tuple and len(job) == 2 and job[0].__class__ is int and job[0] == 0
            and job[1].__class__ is str and job[1].startswith("/")):
        return None  # a job pends (or an odd one): a stop's failure, or not for the reflex
    if invocation.__class__ is not bytes or invocation != reflex.invocation:
        return None
    code, status, result = service.exec_main_code, service.exec_main_status, service.result
    return Crash(
        result=result,
        exec_main_code=code,
        exit_code=status if code == 1 else None,
        signal=status if code in (2, 3) else None,
        invocation_id=reflex.invocation_id,
        n_restarts=service.n_restarts,
        will_restart=sub in FAILED_RESTARTING or service.restarts,
    )
