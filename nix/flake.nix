# hive_actors on Nix: the package, the NixOS module `services.hive-actors`, a dev shell.
#
# The flake lives in nix/ but builds the whole repository (package.nix uses `../.`), so refer to
# it as a git flake with `?dir=nix` (the whole repository is fetched), e.g.
#
#   inputs.hive-actors.url = "git+https://example.org/hive_actors.git?dir=nix";
#   nix build 'git+file:///path/to/hive_actors?dir=nix'
#   nix develop 'git+file:///path/to/hive_actors?dir=nix'
#
# nix/README.md ("Deploy on NixOS") has the module snippet and every option.
{
  description = "hive_actors: a hive of Claude Code agents run as supervised actors";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        hive-actors = pkgs.callPackage ./package.nix { };
        default = hive-actors;
      });

      # The module, with this flake's package as the default `services.hive-actors.package`.
      nixosModules.hive-actors = { lib, pkgs, ... }: {
        imports = [ ./module.nix ];
        services.hive-actors.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
      nixosModules.default = self.nixosModules.hive-actors;

      # The pure option checks and hive.toml rendering (no nixpkgs needed).
      lib = import ./lib.nix;

      devShells = forAllSystems (pkgs:
        let
          python = self.packages.${pkgs.stdenv.hostPlatform.system}.default.passthru.python;
        in
        {
          default = pkgs.mkShell {
            packages = [
              (python.withPackages (ps: with ps; [
                pykka websockets apsw prometheus-client sdbus claude-agent-sdk mcp starlette uvicorn
                setuptools wheel pytest pytest-timeout hypothesis httpx pyyaml
              ]))
              pkgs.git
              pkgs.dbus
              pkgs.prometheus
              pkgs.nix
            ];
            shellHook = ''
              export PYTHONPATH="$PWD''${PYTHONPATH:+:$PYTHONPATH}"
              echo "hive_actors dev shell: python -m pytest tests/test_config.py (Chromium/Playwright tests need scripts/test.sh on Debian)"
            '';
          };
        });

      # `nix flake check`: the package builds, and a NixOS system with the module evaluates
      # (the unit and the container@ override are forced, nothing is built for the system).
      checks = forAllSystems (pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          eval = lib.nixosSystem {
            inherit system;
            modules = [
              self.nixosModules.default
              {
                boot.isContainer = true;
                system.stateVersion = "25.05";
                services.hive-actors = {
                  enable = true;
                  apiKeyFile = "/run/keys/anthropic-api-key";
                };
              }
            ];
          };
          c = eval.config;
        in
        {
          package = self.packages.${system}.default;
          module = pkgs.writeText "hive-actors-module-eval.json" (builtins.toJSON {
            unit = c.systemd.services.hive-actors.serviceConfig;
            containerRestart = c.systemd.services."container@".serviceConfig.Restart;
            assertions = builtins.filter (a: !a.assertion) c.assertions;
          });
        });
    };
}
