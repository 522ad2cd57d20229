"""The one rule for a container's user namespace setting (``[nspawn] private_users`` and
``[nixos] private_users``, both ``systemd-nspawn --private-users=`` underneath).

``pick`` (the default) or ``BASE[:SIZE]`` with BASE > 0 map the container's root to an
unprivileged host range; ``no``, ``identity`` or a range from 0 leave it the host's root:
refused unless the section's :data:`HOST_ROOT_OVERRIDE` is true.
"""

from __future__ import annotations

from dataclasses import dataclass

from hive_actors.errors import ConfigError

__all__ = ["HOST_ROOT_OVERRIDE", "UserRange", "private_users"]

HOST_ROOT_OVERRIDE = "unsafe_agents_run_as_host_root"
"""The loudly named key that allows a container whose root is the host's."""


@dataclass(frozen=True)
class UserRange:
    """A checked ``private_users`` value."""

    word: str
    """Normalised: ``pick``, ``no``, ``identity`` or ``BASE[:SIZE]``."""
    host_root: bool
    """The container's root is the host's root."""
    userns: bool
    """The container has a user namespace (``no`` has none)."""


def private_users(value: str, host_root_ok: bool, *, section: str, source: str) -> UserRange:
    """Check ``[<section>] private_users``; ConfigError naming ``source``, the key and the fix
    for a malformed value, or one that maps to the host's root without the override."""
    word = str(value).strip().lower()
    if word == "pick":
        return UserRange(word, host_root=False, userns=True)
    if word in ("no", "false", "identity"):
        word = "no" if word == "false" else word
        root, userns = True, word == "identity"
    else:
        base, _, size = word.partition(":")
        if not base.isdigit() or (size and not (size.isdigit() and int(size) > 0)):
            raise ConfigError(
                f"{source}: [{section}] private_users = {value!r} is not a user range: use "
                '"pick" (an unprivileged range chosen per container) or "BASE[:SIZE]"'
            )
        root, userns = int(base) == 0, True
    if root and not host_root_ok:
        raise ConfigError(
            f"{source}: [{section}] private_users = {value!r} would run every agent as the "
            f'host\'s root: use "pick" (the default), or set [{section}] '
            f"{HOST_ROOT_OVERRIDE} = true if that is really meant"
        )
    return UserRange(word, host_root=root, userns=userns)
