"""The ``[nspawn]`` settings' one rule: an agent never runs as host root unless told loudly.

Pure (no backend is imported), so the configuration's check and the backend share it.
"""

from __future__ import annotations

import os

from hive_actors.errors import ConfigError

__all__ = [
    "HOST_ROOT_OVERRIDE",
    "MODES",
    "SYSTEMD_RUN_DIR",
    "UNIT_PREFIX",
    "check_mode",
    "check_private_users",
    "resolve_mode",
]

MODES = ("auto", "unit", "child")
"""``[nspawn] mode``: ``unit`` (each container a transient systemd unit, asked for over D-Bus),
``child`` (the hive's child process), ``auto`` (``unit`` when systemd is PID 1)."""

SYSTEMD_RUN_DIR = "/run/systemd/system"
"""Exists exactly when systemd is PID 1 (``sd_booted(3)``'s test)."""

UNIT_PREFIX = "hive-agent"
"""The nspawn backend's transient units are ``hive-agent@<name>.service``."""


def check_mode(value: str, *, source: str) -> str:
    """``[nspawn] mode`` checked: one of :data:`MODES`."""
    if value not in MODES:
        raise ConfigError(
            f"{source}: [nspawn] mode = {value!r} is not a mode: use \"auto\" (a systemd unit "
            'when systemd is PID 1, else the hive\'s child), "unit" or "child"'
        )
    return value


def resolve_mode(value: str, *, source: str = "nspawn backend",
                 run_dir: str = SYSTEMD_RUN_DIR) -> str:
    """``unit`` or ``child``: what ``[nspawn] mode`` means on this host (``auto`` asks, as
    systemd's ``sd_booted`` does, whether ``/run/systemd/system`` exists)."""
    check_mode(value, source=source)
    if value == "auto":
        return "unit" if os.path.isdir(run_dir) else "child"
    return value

HOST_ROOT_OVERRIDE = "unsafe_agents_run_as_host_root"
"""The ``[nspawn]`` key that lets ``private_users`` give an agent the host's root."""


def check_private_users(value: str, host_root_ok: bool, *, source: str) -> bool:
    """Check ``[nspawn] private_users`` (``systemd-nspawn --private-users=``); return whether it
    makes a user namespace.

    ``pick`` (the default) or ``BASE[:SIZE]`` with BASE > 0 map the container's root to an
    unprivileged host range; ``no``, ``identity`` or a range from 0 leave it the host's root:
    refused unless :data:`HOST_ROOT_OVERRIDE` is true.
    """
    word = value.strip().lower()
    if word == "pick":
        return True
    if word in ("no", "false", "identity"):
        root, userns = True, word == "identity"
    else:
        base, _, size = word.partition(":")
        if not base.isdigit() or (size and not (size.isdigit() and int(size) > 0)):
            raise ConfigError(
                f"{source}: [nspawn] private_users = {value!r} is not a user range: use "
                '"pick" (an unprivileged range chosen per container) or "BASE[:SIZE]"'
            )
        root, userns = int(base) == 0, True
    if root and not host_root_ok:
        raise ConfigError(
            f"{source}: [nspawn] private_users = {value!r} would run every agent as the host's "
            'root: use "pick" (the default), or set [nspawn] '
            f"{HOST_ROOT_OVERRIDE} = true if that is really meant"
        )
    return userns
