# hive_actors as a Nix package: `buildPythonApplication` of this source tree (setup.cfg +
# setup.py, which copies web/ into the package), with its Python dependencies and the claude CLI
# of the pinned claude-agent-sdk wheel (not nixpkgs' unfree, unpinned claude-code).
#
#   pkgs.callPackage ./package.nix { }                 # pinned = true: setup.cfg's exact versions
#   pkgs.callPackage ./package.nix { pinned = false; } # nixpkgs' versions where it has them
#
# Dependencies (nix/pins.nix has every file and hash):
# - pykka, websockets, apsw, prometheus-client, starlette, uvicorn: nixpkgs' recipes, their
#   version and src overridden with the pinned PyPI sdist in the whole package set
#   (packageOverrides; pinned = true), or nixpkgs' own versions (pinned = false);
# - sdbus: nixpkgs' if it has it and pinned = false, else built from the pinned sdist;
# - mcp 2.3.0 (+ mcp-types, httpx2, httpcore2): built from the pinned wheels (nixpkgs' mcp is
#   1.x, which has no mcp.server.MCPServer);
# - claude-agent-sdk: the pinned manylinux wheel, which carries claude_agent_sdk/_bundled/claude;
#   autoPatchelfHook points the CLI at Nix's glibc, and stripping is off (the Bun executable
#   keeps its JavaScript in ELF sections a strip would damage). hive_actors finds the CLI there
#   by default (hive_actors.harness.claude.bundled_claude_path), so no [model] claude_path.
{ lib
, stdenv
, python3
, fetchurl
, autoPatchelfHook
, pkg-config
, systemd
, pinned ? true
}:
let
  pins = import ./pins.nix;

  version =
    let m = builtins.match ''.*__version__ = "([^"]+)".*'' (builtins.readFile ../hive_actors/__init__.py);
    in if m == null then throw "nix/package.nix: no __version__ in hive_actors/__init__.py" else builtins.head m;

  fetchPin = name: fetchurl { inherit (pins.${name}) url hash; };

  claudeWheel = pins.claude-agent-sdk.wheels.${stdenv.hostPlatform.system}
    or (throw "nix/package.nix: claude-agent-sdk ${pins.claude-agent-sdk.version} has no wheel for ${stdenv.hostPlatform.system} in nix/pins.nix");

  # The whole Python package set with the pins in it (packageOverrides, not per-package
  # overrides: every package that depends on starlette, say, gets the same one, so the closure
  # has no duplicates for pythonCatchConflictsHook to refuse).
  python = python3.override {
    self = python;
    packageOverrides = self: super:
      let
        # nixpkgs' recipe at the pinned version (PyPI's sdist); tests off: their test
        # dependencies follow nixpkgs' version, not the pin.
        repin = name: super.${name}.overridePythonAttrs (_: {
          inherit (pins.${name}) version;
          src = fetchPin name;
          doCheck = false;
        });

        # A pure-Python wheel from PyPI.
        wheel = name: deps: self.buildPythonPackage {
          pname = name;
          inherit (pins.${name}) version;
          format = "wheel";
          src = fetchPin name;
          dependencies = deps;
          dontCheckRuntimeDeps = true;
        };
      in
      lib.optionalAttrs pinned (lib.genAttrs
        [ "pykka" "websockets" "apsw" "prometheus-client" "starlette" "uvicorn" ] repin)
      // lib.optionalAttrs (pinned || !(super ? sdbus)) {
        sdbus = self.buildPythonPackage {
          pname = "sdbus";
          inherit (pins.sdbus) version;
          pyproject = true;
          src = fetchPin "sdbus";
          build-system = [ self.setuptools ];
          nativeBuildInputs = [ pkg-config ];
          buildInputs = [ systemd ];
          doCheck = false; # its tests start a dbus-daemon
          pythonImportsCheck = [ "sdbus" ];
        };
      }
      // {
        httpcore2 = wheel "httpcore2" [ self.h11 self.truststore self.anyio ];
        httpx2 = wheel "httpx2" [ self.anyio self.httpcore2 self.idna self.truststore ];
        mcp-types = wheel "mcp-types" [ self.pydantic self.typing-extensions ];
        mcp = wheel "mcp" (with self; [
          anyio cryptography httpx2 jsonschema mcp-types opentelemetry-api pydantic pyjwt python-multipart
          sse-starlette starlette typing-extensions typing-inspection uvicorn
        ]);

        claude-agent-sdk = self.buildPythonPackage {
          pname = "claude-agent-sdk";
          inherit (pins.claude-agent-sdk) version;
          format = "wheel";
          src = fetchurl { inherit (claudeWheel) url hash; };
          nativeBuildInputs = [ autoPatchelfHook ];
          buildInputs = [ stdenv.cc.cc.lib ];
          dontStrip = true;
          dependencies = with self; [ anyio jsonschema mcp sniffio ];
          dontCheckRuntimeDeps = true;
          pythonImportsCheck = [ "claude_agent_sdk" ];
          # The CLI must be there and executable (hive_actors checks its version at start).
          postFixup = ''
            cli=$out/${python3.sitePackages}/claude_agent_sdk/_bundled/claude
            test -x "$cli" || { echo "claude-agent-sdk: no bundled CLI at $cli" >&2; exit 1; }
          '';
        };
      };
  };
  py = python.pkgs;

  # The source tree, without what is not part of a build (tests, caches, node_modules, the Nix
  # files themselves, a previous build's web copy).
  src = lib.cleanSourceWith {
    name = "hive_actors-source";
    src = ../.;
    filter = path: type:
      let
        base = baseNameOf path;
        rel = lib.removePrefix (toString ../. + "/") (toString path);
      in
      !(builtins.elem base [
        ".git" "__pycache__" "node_modules" ".venv" "build" "dist" ".pytest_cache"
        ".mypy_cache" ".hypothesis" "result" "hive-state"
      ])
      && !(lib.hasSuffix ".egg-info" base)
      && !(lib.hasSuffix ".db" base)
      && !(builtins.elem rel [ "tests" "test-artifacts" "benchmarks" "nix" "hive_actors/webroot" ]);
  };
in
py.buildPythonApplication {
  pname = "hive_actors";
  inherit version src;
  pyproject = true;
  build-system = [ py.setuptools py.wheel ];

  dependencies = with py; [
    pykka
    websockets
    apsw
    prometheus-client
    sdbus
    claude-agent-sdk
    mcp
    starlette
    uvicorn
  ];

  # setup.cfg pins exact versions; with pinned = false nixpkgs' versions stand in.
  pythonRelaxDeps = true;

  # The suite drives Chromium, dbus-daemon, systemd-nspawn and the real claude CLI: it runs in
  # CI (scripts/test.sh), not in the sandbox.
  doCheck = false;
  pythonImportsCheck = [ "hive_actors" "hive_actors.cli" ];

  postInstall = ''
    test -f $out/${python3.sitePackages}/hive_actors/webroot/index.html \
      || { echo "hive_actors: the package has no webroot/index.html (setup.py copies web/)" >&2; exit 1; }
  '';

  passthru = {
    inherit python;
    claude = "${py.claude-agent-sdk}/${python3.sitePackages}/claude_agent_sdk/_bundled/claude";
  };

  meta = {
    description = "A host daemon that runs a hive of Claude Code agents as supervised actors";
    license = lib.licenses.mit;
    platforms = [ "x86_64-linux" "aarch64-linux" ];
    mainProgram = "hive";
  };
}
