# The pure half of the NixOS module: option defaults, validation and the hive.toml they render.
#
# Nothing here needs nixpkgs (only builtins), so it is evaluated and tested on any machine with
# `nix-instantiate` (tests/test_nix_files.py):
#
#   nix-instantiate --eval --strict --json -E \
#     'let l = import ./nix/lib.nix; in l.renderConfig (l.checkOptions { port = 8080; })'
#
# - `defaults`: every option of `services.hive-actors` that ends up in hive.toml, with its default;
# - `validate opts`: the list of problems (each names the option: `services.hive-actors.port: ...`);
# - `checkOptions opts`: `opts` over the defaults, or a `throw` with every problem;
# - `renderConfig opts`: the hive.toml attrset (sections and keys of hive_actors/config.py), for
#   `pkgs.formats.toml`;
# - `startScript`: the unit's ExecStart (the API key from a systemd credential, then `hive serve`);
# - `dbusPolicy user`: the system bus policy the crash watcher needs;
# - `capabilities backend port`: the unit's CapabilityBoundingSet.
#
# Secrets are never values here: the token files and the API key file are *paths* read at run
# time; a Nix path literal (which Nix would copy into the world-readable store) or a /nix/store
# path is refused.
let
  prefix = "services.hive-actors";

  defaults = {
    stateDir = "/var/lib/hive-actors";
    backend = "nixos";
    listenAddress = "127.0.0.1";
    port = 8000;
    metricsPort = 0;
    tokenFile = null;
    metricsTokenFile = null;
    apiKeyFile = null;
    apiKeyEnv = "ANTHROPIC_API_KEY";
    modelBaseUrl = "";
    defaultModel = "sonnet";
    claudePath = null;
    supervision = {
      agentRestarts = 5;
      agentPeriod = 60.0;
      agentMaxConsecutiveFailures = 10;
      backoffMin = 1.0;
      backoffMax = 60.0;
      backoffFactor = 2.0;
      backoffJitter = 0.2;
      stableAfter = 120.0;
    };
    settings = { };
  };

  backends = [ "process" "nspawn" "nixos" ];

  # A value as the operator wrote it, for error messages.
  show = v:
    let t = builtins.typeOf v; in
    if t == "lambda" then "a function"
    else if t == "path" then "the Nix path ${toString v}"
    else if t == "set" && v ? outPath then "a derivation (${v.name or "?"})"
    else builtins.toJSON v;

  isNumber = v: builtins.isInt v || builtins.isFloat v;
  isStorePath = s: builtins.substring 0 11 s == "/nix/store/";
  isAbsolute = s: builtins.substring 0 1 s == "/";
  hasNewline = s: builtins.match ".*[\n\r].*" s != null;

  # One check: `ok` decides, `want` says what was expected.
  check = name: value: ok: want:
    if ok then [ ] else [ "${prefix}.${name}: expected ${want}, got ${show value}" ];

  # A file holding a secret: a string path, absolute unless `relativeOk`, not in the store.
  secretFile = name: value: relativeOk:
    let
      want = "null or ${if relativeOk then "a file name (relative to stateDir) or an absolute path"
                        else "an absolute path"} as a string (\"/run/keys/...\"; the file is read at run time)";
    in
    if value == null then [ ]
    else if builtins.isPath value then [
      "${prefix}.${name}: expected ${want}, got ${show value}: a Nix path would be copied into the world-readable Nix store; quote it"
    ]
    else if !builtins.isString value || value == "" || hasNewline value then
      check name value false want
    else if isStorePath value then [
      "${prefix}.${name}: ${show value} is in the world-readable Nix store; keep secrets outside it (e.g. /run/keys or /var/lib/secrets)"
    ]
    else check name value (relativeOk || isAbsolute value) want;

  intBetween = name: value: lo: hi:
    check name value (builtins.isInt value && value >= lo && value <= hi)
      "an integer between ${toString lo} and ${toString hi}";

  numberAtLeast = name: value: lo: strict:
    check name value (isNumber value && (if strict then value > lo else value >= lo))
      "a number ${if strict then "greater than" else "at least"} ${toString lo}";

  string = name: value: nonEmpty:
    check name value (builtins.isString value && !(nonEmpty && value == "") && !hasNewline value)
      "a ${if nonEmpty then "non-empty " else ""}string";

  # `defaults` with `opts` over them (one level down for `supervision`); unknown names refused.
  merge = opts:
    let
      unknown = builtins.filter (n: !(defaults ? ${n})) (builtins.attrNames opts);
      sup = opts.supervision or { };
      unknownSup =
        if builtins.isAttrs sup
        then builtins.filter (n: !(defaults.supervision ? ${n})) (builtins.attrNames sup)
        else [ ];
    in {
      problems =
        map (n: "${prefix}.${n}: no such option (known: ${builtins.concatStringsSep ", " (builtins.attrNames defaults)})") unknown
        ++ map (n: "${prefix}.supervision.${n}: no such option (known: ${builtins.concatStringsSep ", " (builtins.attrNames defaults.supervision)})") unknownSup
        ++ check "supervision" sup (builtins.isAttrs sup) "an attribute set"
        ++ check "settings" (opts.settings or { }) (builtins.isAttrs (opts.settings or { })) "an attribute set of hive.toml sections";
      value = defaults // opts // {
        supervision = defaults.supervision // (if builtins.isAttrs sup then sup else { });
      };
    };

  validate = opts:
    let
      m = merge opts;
      o = m.value;
      s = o.supervision;
      sup = n: "supervision.${n}";
    in
    if m.problems != [ ] then m.problems
    else
      check "stateDir" o.stateDir
        (builtins.isString o.stateDir && isAbsolute o.stateDir && !isStorePath o.stateDir && !hasNewline o.stateDir)
        "an absolute path as a string, outside /nix/store"
      ++ check "backend" o.backend (builtins.elem o.backend backends)
        "one of ${builtins.concatStringsSep ", " (map builtins.toJSON backends)}"
      ++ string "listenAddress" o.listenAddress true
      ++ intBetween "port" o.port 1 65535
      ++ intBetween "metricsPort" o.metricsPort 0 65535
      ++ secretFile "tokenFile" o.tokenFile true
      ++ secretFile "metricsTokenFile" o.metricsTokenFile true
      ++ secretFile "apiKeyFile" o.apiKeyFile false
      ++ check "apiKeyEnv" o.apiKeyEnv
        (builtins.isString o.apiKeyEnv && builtins.match "[A-Za-z_][A-Za-z0-9_]*" o.apiKeyEnv != null)
        "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
      ++ string "modelBaseUrl" o.modelBaseUrl false
      ++ string "defaultModel" o.defaultModel true
      ++ check "claudePath" o.claudePath
        (o.claudePath == null || (builtins.isString o.claudePath && isAbsolute o.claudePath && !hasNewline o.claudePath))
        "null or an absolute path as a string"
      ++ intBetween (sup "agentRestarts") s.agentRestarts 0 1000000
      ++ numberAtLeast (sup "agentPeriod") s.agentPeriod 0 true
      ++ intBetween (sup "agentMaxConsecutiveFailures") s.agentMaxConsecutiveFailures 1 1000000
      ++ numberAtLeast (sup "backoffMin") s.backoffMin 0 false
      ++ numberAtLeast (sup "backoffMax") s.backoffMax 0 false
      ++ numberAtLeast (sup "backoffFactor") s.backoffFactor 1 false
      ++ check (sup "backoffJitter") s.backoffJitter (isNumber s.backoffJitter && s.backoffJitter >= 0 && s.backoffJitter < 1)
        "a number from 0 up to (not including) 1"
      ++ numberAtLeast (sup "stableAfter") s.stableAfter 0 true
      ++ settingsClashes o.settings
      ++ (if isNumber s.backoffMin && isNumber s.backoffMax && s.backoffMin > s.backoffMax
          then [ "${prefix}.supervision.backoffMax: expected a number at least backoffMin (${show s.backoffMin}), got ${show s.backoffMax}" ]
          else [ ]);

  # The hive.toml keys the options above own: `settings` may not set them too (the unit's
  # ReadWritePaths, the firewall and the credential follow the options, not `settings`).
  owned = {
    hive = { state_dir = "stateDir"; backend = "backend"; };
    web = {
      host = "listenAddress"; port = "port"; metrics_port = "metricsPort";
      token_file = "tokenFile"; metrics_token_file = "metricsTokenFile";
    };
    model = {
      api_key_env = "apiKeyEnv"; default = "defaultModel"; base_url = "modelBaseUrl";
      claude_path = "claudePath";
    };
    supervision = {
      agent_restarts = "supervision.agentRestarts"; agent_period = "supervision.agentPeriod";
      agent_max_consecutive_failures = "supervision.agentMaxConsecutiveFailures";
      backoff_min = "supervision.backoffMin"; backoff_max = "supervision.backoffMax";
      backoff_factor = "supervision.backoffFactor"; backoff_jitter = "supervision.backoffJitter";
      stable_after = "supervision.stableAfter";
    };
  };

  settingsClashes = settings:
    builtins.concatLists (map
      (section:
        let keys = settings.${section}; in
        if !(owned ? ${section}) || !builtins.isAttrs keys then [ ]
        else map
          (key: "${prefix}.settings.${section}.${key}: set by ${prefix}.${owned.${section}.${key}}; set that option instead")
          (builtins.filter (key: owned.${section} ? ${key}) (builtins.attrNames keys)))
      (builtins.attrNames settings));

  checkOptions = opts:
    let problems = validate opts; in
    if problems == [ ] then (merge opts).value
    else throw (builtins.concatStringsSep "\n" problems);

  # lib.recursiveUpdate, without nixpkgs.
  recursiveUpdate = lhs: rhs:
    lhs // builtins.mapAttrs
      (n: v: if builtins.isAttrs v && builtins.isAttrs (lhs.${n} or null) then recursiveUpdate lhs.${n} v else v)
      rhs;

  optionalAttrs = cond: set: if cond then set else { };

  renderConfig = opts:
    let
      o = checkOptions opts;
      s = o.supervision;
      rendered = {
        hive = {
          state_dir = o.stateDir;
          backend = o.backend;
        };
        web = {
          host = o.listenAddress;
          port = o.port;
          metrics_port = o.metricsPort;
        }
        // optionalAttrs (o.tokenFile != null) { token_file = o.tokenFile; }
        // optionalAttrs (o.metricsTokenFile != null) { metrics_token_file = o.metricsTokenFile; };
        model = {
          api_key_env = o.apiKeyEnv;
          default = o.defaultModel;
        }
        // optionalAttrs (o.modelBaseUrl != "") { base_url = o.modelBaseUrl; }
        // optionalAttrs (o.claudePath != null) { claude_path = o.claudePath; };
        supervision = {
          agent_restarts = s.agentRestarts;
          agent_period = s.agentPeriod;
          agent_max_consecutive_failures = s.agentMaxConsecutiveFailures;
          backoff_min = s.backoffMin;
          backoff_max = s.backoffMax;
          backoff_factor = s.backoffFactor;
          backoff_jitter = s.backoffJitter;
          stable_after = s.stableAfter;
        };
      };
    in
    recursiveUpdate rendered o.settings;
  # A string as one POSIX shell word.
  shellQuote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  # The unit's ExecStart: exports the API key from the systemd credential `api-key` (LoadCredential=
  # of apiKeyFile) into the variable [model] api_key_env names, then execs `hive serve`. A
  # missing, unreadable or empty key file is a start-up error naming the file (exit 78,
  # EX_CONFIG, which the unit does not restart on).
  startScript = { hive, configFile, apiKeyFile ? null, apiKeyEnv ? defaults.apiKeyEnv }:
    let
      file = shellQuote (toString apiKeyFile);
      option = "services.hive-actors.apiKeyFile";
    in
    ''
      set -eu
    '' + (if apiKeyFile == null then "" else ''
      cred="''${CREDENTIALS_DIRECTORY:-}/api-key"
      if [ -z "''${CREDENTIALS_DIRECTORY:-}" ] || [ ! -r "$cred" ]; then
        echo "hive-actors: the API key file "${file}" (${option}) was not loaded: it does not exist or cannot be read; write the key there (one line, mode 0400) and restart hive-actors" >&2
        exit 78
      fi
      key=""
      IFS= read -r key < "$cred" || true
      if [ -z "$key" ]; then
        echo "hive-actors: the API key file "${file}" (${option}) is empty; write the key there (one line) and restart hive-actors" >&2
        exit 78
      fi
      export ${apiKeyEnv}="$key"
      unset key cred
    '') + ''
      exec ${shellQuote (toString hive)} serve --config ${shellQuote (toString configFile)}
    '';

  # What the crash watcher asks of systemd on the system bus (hive_actors/watcher: Subscribe,
  # ListUnitsByPatterns, GetUnit, Properties.Get/GetAll of container@*.service and its jobs, the
  # Manager's and the units' signals), plus what the nspawn backend's unit mode asks
  # (StartUnit, StopUnit, StartTransientUnit, ResetFailedUnit).
  dbusMethods = {
    "org.freedesktop.systemd1.Manager" = [
      "Subscribe" "Unsubscribe" "ListUnitsByPatterns" "GetUnit"
      "StartUnit" "StopUnit" "StartTransientUnit" "ResetFailedUnit"
    ];
    "org.freedesktop.DBus.Properties" = [ "Get" "GetAll" ];
  };

  dbusPolicy = user:
    let
      allow = iface: member:
        "    <allow send_destination=\"org.freedesktop.systemd1\" send_interface=\"${iface}\" send_member=\"${member}\"/>";
      lines = builtins.concatLists
        (builtins.map (iface: map (allow iface) dbusMethods.${iface}) (builtins.attrNames dbusMethods));
    in
    ''
      <?xml version="1.0"?>
      <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
       "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
      <!-- hive-actors: what its crash watcher (and the nspawn backend's unit mode) calls on
           systemd, and the signals it subscribes to. -->
      <busconfig>
        <policy user="${user}">
      ${builtins.concatStringsSep "\n" lines}
          <allow receive_sender="org.freedesktop.systemd1" receive_type="signal"/>
        </policy>
      </busconfig>
    '';

  # The capabilities the daemon keeps (CapabilityBoundingSet=), per backend. It runs as root:
  # nixos-container writes /etc/nixos-containers and /var/lib/nixos-containers and its `run`
  # enters a container's namespaces (nsenter: CAP_SYS_ADMIN for setns, CAP_SYS_PTRACE for another
  # uid's /proc/PID/ns, CAP_SYS_CHROOT for its root); `su -l` inside needs CAP_SETUID/SETGID and
  # CAP_AUDIT_WRITE; agents' files belong to other (mapped) uids (CHOWN, FOWNER, FSETID,
  # DAC_OVERRIDE, DAC_READ_SEARCH); stopping an agent signals processes of another uid (KILL).
  # The process backend runs each agent under a uid of its own (SETUID/SETGID, CHOWN, KILL).
  # nspawn: systemd-nspawn as the hive's child sets up the container itself (mounts, devices,
  # its network namespace, its own bounding set), so that backend keeps the full set (null).
  capabilities = backend: port:
    let
      base = [
        "CAP_CHOWN" "CAP_DAC_OVERRIDE" "CAP_DAC_READ_SEARCH" "CAP_FOWNER" "CAP_FSETID"
        "CAP_KILL" "CAP_SETUID" "CAP_SETGID"
      ]
      ++ (if port < 1024 then [ "CAP_NET_BIND_SERVICE" ] else [ ]);
    in
    if backend == "nixos" then base ++ [ "CAP_SYS_ADMIN" "CAP_SYS_PTRACE" "CAP_SYS_CHROOT" "CAP_AUDIT_WRITE" ]
    else if backend == "process" then base
    else null;
in
{
  inherit defaults backends validate checkOptions renderConfig recursiveUpdate shellQuote
    startScript dbusMethods dbusPolicy capabilities;
}
