"""What the nixos backend writes, as pure text: the agent's default flake and the host-side
settings of its container.

``nixos-container create NAME --flake DIR#NAME`` builds ``nixosConfigurations."NAME"`` of the
flake in DIR, the agent's applied config (``config/applied``): that is the system *inside* the
container. What the host decides about the container (see ``nix/agent-container.nix``) cannot
live in that flake; for an imperative container it lives in the container's conf file
(``/etc/nixos-containers/NAME.conf``, the ``EnvironmentFile`` of ``container@NAME.service``),
which ``create`` writes and :func:`host_conf` rewrites:

- ``PRIVATE_NETWORK=0`` and no veth addresses: the agent shares the host's network, so its
  claude reaches the hive's MCP endpoint and model server on 127.0.0.1 (as
  ``privateNetwork = false`` in ``agent-container.nix``);
- ``PRIVATE_USERS=pick``: unprivileged, uid 0 inside maps to a free uid range on the host;
- ``EXTRA_NSPAWN_FLAGS=--bind=<state>:/state:idmap``: the agent's persistent ``/state``, with an
  id-mapped mount so the host's files appear owned by the container's root.

``Restart=no`` on ``container@NAME.service`` (the hive's supervisor owns restarts) is host
configuration: import ``nix/agent-container.nix`` or set it for ``container@`` once.
"""

from __future__ import annotations

import re
from pathlib import Path

from hive_actors.errors import ConfigError

__all__ = ["DEFAULT_AGENT_NIX", "check_bind_source", "host_conf", "render_flake_nix"]

DEFAULT_AGENT_NIX = """\
# The NixOS configuration inside this agent's container. The manager edits it in
# config/proposed and commits; the operator approves; the hive rebuilds the container.
{ lib, pkgs, ... }:
{
  # claude-code is unfree in nixpkgs; allow that one package only.
  nixpkgs.config.allowUnfreePredicate = pkg: builtins.elem (lib.getName pkg) [ "claude-code" ];
  environment.systemPackages = [ pkgs.git pkgs.claude-code ];
}
"""
"""``agent.nix`` of a new agent's config repository (nixos backend)."""

_FLAKE_TEMPLATE = """\
{
  description = "hive agent @NAME@: the NixOS system inside its container";

  inputs.nixpkgs.url = "nixpkgs";

  outputs = { self, nixpkgs }: {
    nixosConfigurations."@NAME@" = nixpkgs.lib.nixosSystem {
      system = "@SYSTEM@";
      modules = [
        ({ lib, ... }: {
          boot.isContainer = true;
          networking.hostName = lib.mkDefault "@NAME@";
          networking.useDHCP = false;
          system.stateVersion = lib.mkDefault "@STATE_VERSION@";
        })
        ./agent.nix
      ];
    };
  };
}
"""

# The keys the hive owns in a container's conf file; create writes some of them its own way.
_OWNED = frozenset(
    {
        "PRIVATE_NETWORK",
        "HOST_ADDRESS",
        "LOCAL_ADDRESS",
        "HOST_ADDRESS6",
        "LOCAL_ADDRESS6",
        "PRIVATE_USERS",
        "EXTRA_NSPAWN_FLAGS",
    }
)
# container@.service expands EXTRA_NSPAWN_FLAGS unquoted (word splitting) and nspawn splits
# --bind on ':': a path with any of these would be cut or reinterpreted.
_UNSAFE_PATH = re.compile(r"[\s:\"'\\$`#;&|<>(){}*?\[\]!]|[\x00-\x1f\x7f]")


def render_flake_nix(
    name: str, *, system: str = "x86_64-linux", state_version: str = "24.11"
) -> str:
    """The default ``flake.nix`` of an agent's config repository: ``nixosConfigurations.<name>``
    from ``./agent.nix`` plus what every container needs."""
    return (
        _FLAKE_TEMPLATE.replace("@NAME@", name)
        .replace("@SYSTEM@", system)
        .replace("@STATE_VERSION@", state_version)
    )


def check_bind_source(path: Path) -> str:
    """``path`` as a bind-mount source the conf file can carry; ConfigError otherwise."""
    text = str(path)
    if not path.is_absolute():
        raise ConfigError(f"state directory '{text}' must be absolute: set [hive] state_dir")
    bad = _UNSAFE_PATH.search(text)
    if bad:
        raise ConfigError(
            f"state directory '{text}' contains {bad.group()!r}, which the container's nspawn "
            "flags cannot carry: set [hive] state_dir to a plain path"
        )
    return text


def host_conf(created: str, *, state: Path) -> str:
    """The conf file ``create`` wrote (``created``), with the hive's host-side settings."""
    source = check_bind_source(state)
    kept = [
        line
        for line in created.splitlines()
        if line.partition("=")[0].strip() not in _OWNED and not line.startswith("# hive_actors")
    ]
    return "\n".join(
        [
            *kept,
            "# hive_actors: host network, unprivileged, /state from the host",
            "PRIVATE_NETWORK=0",
            "PRIVATE_USERS=pick",
            f'EXTRA_NSPAWN_FLAGS="--bind={source}:/state:idmap"',
            "",
        ]
    )
