"""Agent-name validation: a name becomes a container name, a unit name and a directory.

``nixos-container`` refuses names longer than 11 characters (the host-side interface is
``ve-<name>`` and Linux caps interface names at 15 bytes), systemd unit names and directory
names must stay plain, so the rule is the strictest of the three: lower-case ASCII letters,
digits and ``-``, starting with a letter, at most 11 characters.
"""

from __future__ import annotations

from hive_actors.errors import ConfigError

__all__ = ["MAX_NAME_LENGTH", "NAME_RULE", "is_valid_name", "validate_name"]

MAX_NAME_LENGTH = 11
"""nixos-container's limit on a container name."""

NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} characters of lower-case letters a-z, digits 0-9 and '-', "
    "starting with a letter (it becomes a container name, a systemd unit name and a directory)"
)
"""The rule, worded for error messages."""

_ALLOWED_REST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def is_valid_name(name: object) -> bool:
    """Return whether ``name`` is a usable agent name (see :data:`NAME_RULE`)."""
    # Written without a regex on purpose: the tests check this against a regex model, and
    # ``re``'s ``$`` would accept a trailing newline, exactly the kind of slip a model catches.
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
        return False
    if not ("a" <= name[0] <= "z"):
        return False
    return all(ch in _ALLOWED_REST for ch in name[1:])


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid agent name, else raise :class:`ConfigError`.

    The error states the rule and the bad value, e.g.
    ``agent name 'Web_1' is invalid: use 1 to 11 characters of lower-case letters …``.
    """
    if is_valid_name(name):
        assert isinstance(name, str)
        return name
    raise ConfigError(f"agent name {name!r} is invalid: use {NAME_RULE}, e.g. 'alice' or 'web-2'")
