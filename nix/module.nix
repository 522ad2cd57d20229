# The NixOS module `services.hive-actors`: the hive daemon as a hardened systemd service.
#
# - Renders /etc/hive-actors/hive.toml from the options (nix/lib.nix `renderConfig`, TOML by
#   pkgs.formats.toml) and runs `hive serve --config` on it.
# - Secrets stay out of the Nix store: the operator token file is created (0600) by the hive in
#   its state dir, or read from tokenFile; the API key file is handed to the unit with systemd's
#   LoadCredential= and exported into [model] api_key_env by a small start script at run time.
# - Agents on the `nixos` backend are imperative NixOS containers (`nixos-container create NAME
#   --flake …`, host-side settings in /etc/nixos-containers/NAME.conf, written by the hive): this
#   module declares no `containers.<name>`; it sets `Restart=no` on the `container@` template
#   unit (the hive's supervisor owns restarts), allows the crash watcher's D-Bus calls, and
#   makes nixos-container usable (boot.enableContainers).
#
# Option values are checked twice: by their NixOS types (a wrong type names the option), and by
# nix/lib.nix `validate` as assertions (ranges, secrets outside the store, backoffMin <=
# backoffMax), with the same messages the pure tests check.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf mkForce optional optionals types;

  hiveLib = import ./lib.nix;
  d = hiveLib.defaults;
  cfg = config.services.hive-actors;
  toml = pkgs.formats.toml { };

  # The options lib.nix knows (the module's own: enable, package, openFirewall… left out).
  hiveOptions = builtins.intersectAttrs d cfg // {
    supervision = builtins.intersectAttrs d.supervision cfg.supervision;
  };
  problems = hiveLib.validate hiveOptions;

  configFile = toml.generate "hive.toml" (hiveLib.renderConfig hiveOptions);

  startScript = pkgs.writeShellScript "hive-actors-start" (hiveLib.startScript {
    hive = "${cfg.package}/bin/hive";
    configFile = "/etc/hive-actors/hive.toml";
    inherit (cfg) apiKeyFile apiKeyEnv;
  });

  dbusPolicy = pkgs.writeTextFile {
    name = "hive-actors-dbus-policy";
    destination = "/share/dbus-1/system.d/hive-actors.conf";
    text = hiveLib.dbusPolicy "root";
  };

  nixos = cfg.backend == "nixos";
  nspawn = cfg.backend == "nspawn";
  caps = hiveLib.capabilities cfg.backend cfg.port;

  number = types.either types.int types.float;
  secretPath = types.nullOr types.str;
in
{
  options.services.hive-actors = {
    enable = mkEnableOption "the hive_actors daemon (a hive of Claude Code agents)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The hive_actors package (with the pinned claude CLI bundled).";
    };

    stateDir = mkOption {
      type = types.str;
      default = d.stateDir;
      description = "Root of the hive's files: hive.db, the operator token, each agent's directories. `[hive] state_dir`.";
    };

    backend = mkOption {
      type = types.enum hiveLib.backends;
      default = d.backend;
      description = "Where agents run: `nixos` (imperative NixOS containers), `nspawn` or `process`. `[hive] backend`.";
    };

    listenAddress = mkOption {
      type = types.str;
      default = d.listenAddress;
      example = "0.0.0.0";
      description = ''
        Where the dashboard listens. `[web] host`. Loopback by default; the operator token is
        required on every bind. Prefer loopback plus an SSH tunnel or a TLS reverse proxy.
      '';
    };

    port = mkOption {
      type = types.ints.between 1 65535;
      default = d.port;
      description = "The dashboard's port. `[web] port`.";
    };

    metricsPort = mkOption {
      type = types.ints.between 0 65535;
      default = d.metricsPort;
      description = "A separate port for /metrics (0: only on the dashboard's port). `[web] metrics_port`.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall (only useful with a non-loopback listenAddress).";
    };

    tokenFile = mkOption {
      type = secretPath;
      default = d.tokenFile;
      example = "/run/keys/hive-operator-token";
      description = ''
        The operator token's file, as a string (never a Nix path: it would be copied into the
        store): relative to stateDir or absolute. null: `operator-token` in stateDir, created
        0600 at the first start (`hive token --config /etc/hive-actors/hive.toml` prints it).
        `[web] token_file`.
      '';
    };

    metricsTokenFile = mkOption {
      type = secretPath;
      default = d.metricsTokenFile;
      description = "The bearer token file GET /metrics requires (relative to stateDir or absolute; created 0600 on first use). `[web] metrics_token_file`.";
    };

    apiKeyFile = mkOption {
      type = secretPath;
      default = d.apiKeyFile;
      example = "/run/keys/anthropic-api-key";
      description = ''
        A file holding the model API key (one line), as an absolute path string. Read at run
        time through systemd's LoadCredential= and exported into `apiKeyEnv` for the daemon; a
        missing or empty file stops the start with an error naming it. null: the credentials
        come from `settings.credentials` (kind = "oauth_token", "bedrock" or "vertex", each
        with a `file` outside the store) — without either, `hive serve` refuses to start and
        names what is missing.
      '';
    };

    apiKeyEnv = mkOption {
      type = types.str;
      default = d.apiKeyEnv;
      description = "The environment variable the daemon reads the key from and hands to the CLI. `[model] api_key_env`.";
    };

    modelBaseUrl = mkOption {
      type = types.str;
      default = d.modelBaseUrl;
      description = "ANTHROPIC_BASE_URL for the agents' CLI (empty: the CLI's default). `[model] base_url`.";
    };

    defaultModel = mkOption {
      type = types.str;
      default = d.defaultModel;
      description = "The model an agent uses unless its config or the operator says otherwise. `[model] default`.";
    };

    claudePath = mkOption {
      type = types.nullOr types.str;
      default = d.claudePath;
      description = "The claude CLI (null: the one bundled with the package's pinned claude-agent-sdk). `[model] claude_path`.";
    };

    supervision = {
      agentRestarts = mkOption {
        type = types.ints.unsigned;
        default = d.supervision.agentRestarts;
        description = "An agent crashing more than this many times within agentPeriod is given up until the operator acts. `[supervision] agent_restarts`.";
      };
      agentPeriod = mkOption {
        type = number;
        default = d.supervision.agentPeriod;
        description = "The window of agentRestarts, in seconds. `[supervision] agent_period`.";
      };
      agentMaxConsecutiveFailures = mkOption {
        type = types.ints.positive;
        default = d.supervision.agentMaxConsecutiveFailures;
        description = "Failures in a row (never up for stableAfter between them) before an agent is given up. `[supervision] agent_max_consecutive_failures`.";
      };
      backoffMin = mkOption {
        type = number;
        default = d.supervision.backoffMin;
        description = "First restart delay, in seconds. `[supervision] backoff_min`.";
      };
      backoffMax = mkOption {
        type = number;
        default = d.supervision.backoffMax;
        description = "Largest restart delay, in seconds. `[supervision] backoff_max`.";
      };
      backoffFactor = mkOption {
        type = number;
        default = d.supervision.backoffFactor;
        description = "Each restart's delay is the previous one times this. `[supervision] backoff_factor`.";
      };
      backoffJitter = mkOption {
        type = number;
        default = d.supervision.backoffJitter;
        description = "Random spread of each delay, as a fraction (0 up to, not including, 1). `[supervision] backoff_jitter`.";
      };
      stableAfter = mkOption {
        type = number;
        default = d.supervision.stableAfter;
        description = "Seconds up after which an agent's backoff starts over. `[supervision] stable_after`.";
      };
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = lib.literalExpression ''{ store.retention_days = 14; watcher.rescan_interval = 120; }'';
      description = ''
        Any other hive.toml keys (see hive_actors/config.py), added to what the options above
        render; a key one of them renders is refused (set the option). The daemon refuses
        unknown sections and keys at start.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = map (message: { assertion = false; inherit message; }) problems;

    environment.etc."hive-actors/hive.toml".source = configFile;
    # `hive token --config /etc/hive-actors/hive.toml` prints the operator token.
    environment.systemPackages = [ cfg.package ];

    systemd.tmpfiles.rules = [
      "d ${cfg.stateDir} 0750 root root - -"
    ] ++ optionals nixos [
      "d /etc/nixos-containers 0755 root root - -"
      "d /var/lib/nixos-containers 0700 root root - -"
    ];

    # Imperative containers only (the hive creates them with nixos-container); their restarts
    # are the hive supervisor's, never systemd's: a crash stays a crash for the watcher.
    boot.enableContainers = mkIf nixos true;
    systemd.services."container@" = mkIf nixos {
      serviceConfig.Restart = mkForce "no";
    };

    services.dbus.packages = [ dbusPolicy ];

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.port ];

    systemd.services.hive-actors = {
      description = "hive_actors: a hive of Claude Code agents";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "dbus.service" "nix-daemon.socket" ];
      restartTriggers = [ configFile ];

      path = [ pkgs.coreutils pkgs.git pkgs.util-linux pkgs.systemd ]
        ++ optionals nixos [ config.nix.package pkgs.nixos-container ];

      environment = {
        HOME = cfg.stateDir;
        XDG_CACHE_HOME = "/var/cache/hive-actors";
        PYTHONUNBUFFERED = "1";
      } // lib.optionalAttrs nixos {
        # nixos-container's builds go through nix-daemon (the store stays read-only here), with
        # flakes on: agents' configs are flakes.
        NIX_REMOTE = "daemon";
        NIX_CONFIG = "experimental-features = nix-command flakes";
      };

      unitConfig = {
        StartLimitIntervalSec = 600;
        StartLimitBurst = 5;
      } // lib.optionalAttrs (cfg.apiKeyFile != null) {
        # Checked before the unit starts, so a missing or empty file is reported by name
        # ("Assertion failed … AssertFileNotEmpty=/run/keys/…") rather than as a bare
        # credentials error; the start script checks again.
        AssertFileNotEmpty = cfg.apiKeyFile;
      };

      serviceConfig = {
        Type = "simple";
        ExecStart = startScript;
        Restart = "on-failure";
        RestartSec = "5s";
        # 78 (EX_CONFIG): the API key file is missing or empty; restarting will not help.
        RestartPreventExitStatus = "78";
        # The hive stops its agents on SIGTERM before it exits.
        TimeoutStopSec = "120s";
        User = "root";
        Group = "root";
        UMask = "0077";
        CacheDirectory = "hive-actors";
        LoadCredential = optional (cfg.apiKeyFile != null) "api-key:${cfg.apiKeyFile}";

        # Hardening. What is left out, and why (see nix/README.md):
        # - RestrictNamespaces: nixos-container run enters containers with setns();
        # - SystemCallFilter, MemoryDenyWriteExecute: commands run in an agent's container
        #   (nsenter) inherit the filter; the claude CLI (Bun) JIT-compiles;
        # - PrivateDevices: the terminal (a PTY) and nspawn need the host's /dev;
        # - NoNewPrivileges stays on: builds run in nix-daemon, not here, and root needs no
        #   setuid bit.
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ReadWritePaths = [ cfg.stateDir ] ++ optionals nixos [
          "-/etc/nixos-containers"
          "-/var/lib/nixos-containers"
          "-/nix/var/nix/profiles/per-container"
          "-/nix/var/nix/gcroots/per-container"
        ];
        ProtectHome = true;
        PrivateTmp = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectKernelTunables = !nspawn;
        ProtectControlGroups = !nspawn;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
      } // lib.optionalAttrs (caps != null) {
        # Only what container management needs (nix/lib.nix `capabilities` says which and why).
        CapabilityBoundingSet = caps;
      };
    };
  };
}
