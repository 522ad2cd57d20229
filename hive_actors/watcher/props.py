"""Reading systemd's unit properties off the bus, pure: raw variants in, typed values or problems out.

sdbus hands ``PropertiesChanged`` and ``GetAll`` payloads over as ``{name: (signature, value)}``.
Nothing here trusts them: every property the watcher uses is checked against the signature
systemd documents and the Python type sdbus makes of it, and what does not fit is reported as a
problem naming the property and the bad value, never coerced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_UNIT_PREFIX",
    "SERVICE_INTERFACE",
    "UNIT_INTERFACE",
    "ServiceProps",
    "UnitProps",
    "agent_of_unit",
    "check_variants",
    "decode_service",
    "decode_unit",
    "unit_name_for",
]

UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"

# An instance name as it can appear in a unit name: systemd allows these bytes (plus its
# "\x2d"-style escapes, which the hive's agent names never need).
_INSTANCE = r"(?P<agent>[A-Za-z0-9:_.\\-]+)"
_UNIT_NAME = re.compile(rf"^container@{_INSTANCE}\.service$")

DEFAULT_UNIT_PREFIX = "container"
"""The template of the agents' units unless a backend names another: NixOS's
``container@<name>.service``. The nspawn backend in unit mode names ``hive-agent``."""


@dataclass(frozen=True, slots=True)
class ServiceProps:
    """The ``org.freedesktop.systemd1.Service`` properties a verdict depends on."""

    result: str
    """``Result``: ``success``, ``exit-code``, ``signal``, ``core-dump``, ``timeout``…"""
    exec_main_code: int
    """``ExecMainCode``: 1 exited, 2 killed, 3 dumped (0: no main process yet)."""
    exec_main_status: int
    """``ExecMainStatus``: the exit code, or the signal number."""
    n_restarts: int
    """``NRestarts``: systemd's automatic restarts of this unit."""
    main_pid: int
    """``MainPID`` (0 when not running)."""
    restart: str | None = None
    """``Restart=`` policy (a const property: only in ``GetAll``, never in a change signal)."""


@dataclass(frozen=True, slots=True)
class UnitProps:
    """The ``org.freedesktop.systemd1.Unit`` properties a verdict depends on."""

    active_state: str
    """``ActiveState``: ``active``, ``activating``, ``deactivating``, ``inactive``, ``failed``…"""
    sub_state: str
    """``SubState``: for a service ``running``, ``auto-restart``, ``failed``, ``dead``…"""
    job_id: int
    """Id of the job pending on the unit (``Job``), 0 when none."""
    job_path: str
    """Object path of that job, ``/`` when none."""
    invocation_id: str
    """``InvocationID`` as 32 hex digits; empty when the unit never ran."""

    @property
    def has_job(self) -> bool:
        """A job (start, stop, restart…) is pending on the unit."""
        return self.job_id != 0


# How each used property's value is checked (its Python type as sdbus makes it).
_STR, _INT32, _UINT32, _JOB, _BYTES = range(5)
_BOUNDS = {_INT32: (-(2**31), 2**31 - 1), _UINT32: (0, 2**32 - 1)}


def _is_int(value: Any, kind: int) -> bool:
    # bool is an int subclass; sdbus never makes one of an 'i' or 'u'.
    low, high = _BOUNDS[kind]
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_job(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and _is_int(value[0], _UINT32)
        and isinstance(value[1], str)
        and value[1].startswith("/")
    )


def _fits(kind: int, value: Any) -> bool:
    """Whether ``value`` is what sdbus makes of a well-formed property of ``kind``."""
    if kind == _STR:
        return isinstance(value, str)
    if kind == _JOB:
        return _is_job(value)
    if kind == _BYTES:
        return isinstance(value, (bytes, bytearray)) and len(value) in (0, 16)
    return _is_int(value, kind)


# D-Bus name, signature systemd documents, kind of value — per interface.
_EXPECTED: dict[str, tuple[tuple[str, str, int], ...]] = {
    SERVICE_INTERFACE: (
        ("Result", "s", _STR),
        ("ExecMainCode", "i", _INT32),
        ("ExecMainStatus", "i", _INT32),
        ("NRestarts", "u", _UINT32),
        ("MainPID", "u", _UINT32),
        ("Restart", "s", _STR),
    ),
    UNIT_INTERFACE: (
        ("ActiveState", "s", _STR),
        ("SubState", "s", _STR),
        ("Job", "(uo)", _JOB),
        ("InvocationID", "ay", _BYTES),
    ),
}

_ABSENT = object()

_REQUIRED = {
    SERVICE_INTERFACE: ("Result", "ExecMainCode", "ExecMainStatus", "NRestarts", "MainPID"),
    UNIT_INTERFACE: ("ActiveState", "SubState", "Job", "InvocationID"),
}
_REQUIRED_SETS = {interface: frozenset(names) for interface, names in _REQUIRED.items()}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_variants(interface: str, variants: Any) -> tuple[dict[str, Any], list[str]]:
    """Check a ``{name: (signature, value)}`` payload of ``interface``.

    Returns the properties the watcher uses that are well formed, as plain values (``Job`` as an
    ``(id, path)`` tuple, ``InvocationID`` as hex), and one problem line per property that is not.
    Properties the watcher does not use are skipped unchecked.
    """
    expected = _EXPECTED.get(interface)
    if expected is None:
        return {}, [f"properties of an unexpected interface {interface!r}"]
    if not isinstance(variants, Mapping):
        return {}, [f"{interface} properties are not a dict: {_short(variants)}"]
    good: dict[str, Any] = {}
    problems: list[str] = []
    # Looked up by the few names used: systemd's signals carry dozens of properties.
    for name, signature, kind in expected:
        variant = variants.get(name, _ABSENT)
        if variant is _ABSENT:
            continue
        if not (isinstance(variant, tuple) and len(variant) == 2):
            problems.append(f"{name}: not a (signature, value) variant: {_short(variant)}")
            continue
        got_signature, value = variant
        if got_signature != signature:
            problems.append(
                f"{name}: signature {got_signature!r} where systemd sends {signature!r} "
                f"(value {_short(value)})"
            )
            continue
        if not _fits(kind, value):
            problems.append(f"{name}: bad value {_short(value)} for signature {signature!r}")
            continue
        if name == "Job":
            value = (int(value[0]), str(value[1]))
        elif name == "InvocationID":
            value = bytes(value).hex()
        good[name] = value
    return good, problems


def _missing(interface: str, values: Mapping[str, Any]) -> list[str]:
    return [f"{interface}.{name}: missing" for name in _REQUIRED[interface] if name not in values]


def decode_service(values: Mapping[str, Any]) -> ServiceProps | list[str]:
    """Build :class:`ServiceProps` from checked values (see :func:`check_variants`), or say
    which required properties are missing."""
    if not values.keys() >= _REQUIRED_SETS[SERVICE_INTERFACE]:
        return _missing(SERVICE_INTERFACE, values)
    return ServiceProps(
        result=values["Result"],
        exec_main_code=values["ExecMainCode"],
        exec_main_status=values["ExecMainStatus"],
        n_restarts=values["NRestarts"],
        main_pid=values["MainPID"],
        restart=values.get("Restart"),
    )


def decode_unit(values: Mapping[str, Any]) -> UnitProps | list[str]:
    """Build :class:`UnitProps` from checked values, or say which required ones are missing."""
    if not values.keys() >= _REQUIRED_SETS[UNIT_INTERFACE]:
        return _missing(UNIT_INTERFACE, values)
    job_id, job_path = values["Job"]
    return UnitProps(
        active_state=values["ActiveState"],
        sub_state=values["SubState"],
        job_id=job_id,
        job_path=job_path,
        invocation_id=values["InvocationID"],
    )


def _unit_re(prefix: str) -> re.Pattern[str]:
    if prefix == DEFAULT_UNIT_PREFIX:
        return _UNIT_NAME
    return re.compile(rf"^{re.escape(prefix)}@{_INSTANCE}\.service$")


def agent_of_unit(unit: str, prefix: str = DEFAULT_UNIT_PREFIX) -> str | None:
    """The instance name of a ``<prefix>@<name>.service`` unit (``container@`` by default), or
    None for any other name."""
    match = _unit_re(prefix).match(unit)
    return match.group("agent") if match else None


def unit_name_for(agent: str, prefix: str = DEFAULT_UNIT_PREFIX) -> str:
    """The unit that runs ``agent``'s container (``<prefix>@<agent>.service``); ValueError for a
    name no unit can carry."""
    unit = f"{prefix}@{agent}.service"
    if agent_of_unit(unit, prefix) != agent:
        raise ValueError(
            f"agent name {agent!r} cannot be a container unit instance: "
            "use letters, digits and ':_.-' only"
        )
    return unit
