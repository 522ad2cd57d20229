# The NixOS side of one hive agent's container: `container@<name>.service`.
#
# Imported by the host's configuration for every agent the hive runs on the `nixos` backend:
#
#   imports = [ (import ./agent-container.nix { name = "alice"; stateDir = "/var/lib/hive/agents/alice/state"; }) ];
#
# - The hive's supervisor owns restarts (exponential backoff, a restart limit, "given up"), so
#   NixOS's own `Restart=on-failure` on container@.service is switched off: otherwise systemd
#   restarts the container behind the supervisor's back and the crash watcher has to report
#   `will_restart` instead of a plain crash.
# - The agent's persistent `/state` (notes.md, model override, claude session) is bind-mounted from
#   the host and survives rebuilds.
# - The container is unprivileged: uid 0 inside maps to an unprivileged uid range on the host.
{ name, stateDir, flake ? null }:
{ lib, ... }:
{
  systemd.services."container@${name}".serviceConfig.Restart = lib.mkForce "no";

  containers.${name} = {
    autoStart = false;
    privateNetwork = false;
    privateUsers = "pick";
    bindMounts."/state" = {
      hostPath = stateDir;
      isReadOnly = false;
    };
  } // lib.optionalAttrs (flake != null) { inherit flake; };
}
