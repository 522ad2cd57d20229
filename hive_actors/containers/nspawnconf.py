"""The ``[nspawn]`` settings' one rule: an agent never runs as host root unless told loudly.

Pure (no backend is imported), so the configuration's check and the backend share it.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from hive_actors.containers.userns import HOST_ROOT_OVERRIDE, private_users
from hive_actors.errors import ConfigError

__all__ = [
    "HOST_ROOT_OVERRIDE",
    "MODES",
    "NETWORKS",
    "SYSTEMD_RUN_DIR",
    "UNIT_PREFIX",
    "check_mode",
    "check_network",
    "check_private_users",
    "loopback_endpoint",
    "resolve_mode",
]

MODES = ("auto", "unit", "child")
"""``[nspawn] mode``: ``unit`` (each container a transient systemd unit, asked for over D-Bus),
``child`` (the hive's child process), ``auto`` (``unit`` when systemd is PID 1)."""

NETWORKS = ("host", "private")
"""``[nspawn] network``: ``host`` (the host's network) or ``private`` (``--private-network``:
the container's own loopback, where the hive relays only its MCP endpoint and the model API)."""

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


def check_network(value: str, *, source: str) -> str:
    """``[nspawn] network`` checked: one of :data:`NETWORKS`."""
    if value not in NETWORKS:
        raise ConfigError(
            f"{source}: [nspawn] network = {value!r} is not a network: use \"host\" (the "
            'host\'s network, the default) or "private" (the container\'s own loopback, '
            "reaching only the hive's MCP endpoint and the model API)"
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

"""The ``[nspawn]`` key that lets ``private_users`` give an agent the host's root."""


def check_private_users(value: str, host_root_ok: bool, *, source: str) -> bool:
    """Check ``[nspawn] private_users`` (``systemd-nspawn --private-users=``) by the one rule
    (:func:`.userns.private_users`); return whether it makes a user namespace."""
    return private_users(value, host_root_ok, section="nspawn", source=source).userns


def loopback_endpoint(url: str, *, what: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http(s)://`` URL whose host is loopback (``127.x.y.z``,
    ``localhost``, ``[::1]``; the port defaults to the scheme's); ConfigError otherwise,
    naming ``what`` and why a private network needs a loopback URL."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if parts.scheme not in ("http", "https") or not loopback:
        raise ConfigError(
            f"{what} {url!r} is not a loopback http(s) URL, and a container with "
            '[nspawn] network = "private" reaches only loopback endpoints for now (127.0.0.1, '
            "localhost or [::1], relayed from the host): point it at a loopback server (a local "
            'proxy of the API), or use [nspawn] network = "host"'
        )
    return host, port or (443 if parts.scheme == "https" else 80)
