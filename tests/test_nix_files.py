"""The Nix side (nix/): every ``.nix`` file parses, and the pure parts evaluate without nixpkgs.

What runs here, with Debian's ``nix-bin`` (``nix-instantiate``) and no nixpkgs:

- every ``*.nix`` file of the repository parses (``nix-instantiate --parse``, which also refuses
  an undefined variable);
- ``nix/lib.nix``: the hive.toml the module renders from sample options is accepted by the real
  config loader (:func:`hive_actors.config.load_config`); an option of the wrong type fails
  naming the option; its defaults are the config's;
- ``nix/pins.nix`` pins exactly setup.cfg's versions;
- the start script: a missing or empty API key file is a start-up error naming the file, a
  present one is exported into ``[model] api_key_env``;
- the D-Bus policy allows every systemd method the crash watcher declares;
- ``nix/module.nix`` evaluated against a stand-in of nixpkgs' ``lib``/``pkgs`` (what a real NixOS
  evaluation would add is type merging; that needs nixpkgs, see nix/README.md): the unit, the
  ``container@`` override, the credentials, the assertions.

A missing ``nix-instantiate`` skips these tests, except under ``CI`` (scripts/test.sh installs
``nix-bin``), where it fails them.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from hive_actors.config import (
    ModelConfig,
    SupervisionConfig,
    WebConfig,
    load_config,
)
from hive_actors.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
NIX = REPO / "nix"
LIB = NIX / "lib.nix"
PREFIX = "services.hive-actors"


@pytest.fixture(scope="module")
def nix_instantiate() -> str:
    exe = shutil.which("nix-instantiate")
    if exe is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("nix-instantiate is not installed (CI is set): apt-get install nix-bin")
        pytest.skip("nix-instantiate is not installed (Debian: apt-get install nix-bin)")
    return exe


def _env(tmp: Path) -> dict[str, str]:
    # A clean environment: no NIX_PATH (nothing may come from <nixpkgs>), a private HOME.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp),
            "XDG_CACHE_HOME": str(tmp / "cache")}


def _run(exe: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "--readonly-mode", *args], check=False, capture_output=True,
                          text=True, cwd=REPO, env=_env(tmp), timeout=120)


def _eval(exe: str, expr: str, tmp: Path) -> Any:
    proc = _run(exe, ["--eval", "--strict", "--json", "-E", expr], tmp)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _eval_error(exe: str, expr: str, tmp: Path) -> str:
    proc = _run(exe, ["--eval", "--strict", "--json", "-E", expr], tmp)
    assert proc.returncode != 0, f"evaluated although it should not: {proc.stdout}"
    return proc.stderr


def _lib(call: str) -> str:
    return f"let l = import {LIB}; in {call}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _to_toml(doc: dict[str, Any]) -> str:
    """The rendered attrset as pkgs.formats.toml would write it (tables of scalars)."""
    lines: list[str] = []
    for section, keys in doc.items():
        assert isinstance(keys, dict), f"[{section}] is not a table: {keys!r}"
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        lines.append("")
    return "\n".join(lines)


# --- every .nix file parses -------------------------------------------------------------------


def _nix_files() -> list[Path]:
    skip = {".git", "node_modules", ".venv", "build", "dist", "test-artifacts"}
    return sorted(p for p in REPO.rglob("*.nix") if not skip & set(p.relative_to(REPO).parts))


def test_the_nix_files_are_there() -> None:
    names = {p.name for p in NIX.glob("*.nix")}
    assert {"flake.nix", "module.nix", "lib.nix", "package.nix", "pins.nix"} <= names
    # Imperative containers only: the declarative fragment is gone, and nothing declares
    # `containers.<name>`.
    assert not (NIX / "agent-container.nix").exists()
    for path in _nix_files():
        assert not re.search(r"^\s*containers\.", path.read_text(), re.MULTILINE), path


@pytest.mark.parametrize("path", _nix_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_nix_file_parses(nix_instantiate: str, path: Path, tmp_path: Path) -> None:
    proc = _run(nix_instantiate, ["--parse", str(path)], tmp_path)
    assert proc.returncode == 0, f"{path.relative_to(REPO)}: {proc.stderr}"


# --- hive.toml rendering ------------------------------------------------------------------------

SAMPLES = {
    "defaults": "{ }",
    "everything": """{
      stateDir = "/var/lib/hive";
      backend = "nspawn";
      listenAddress = "0.0.0.0";
      port = 8443;
      metricsPort = 9464;
      tokenFile = "/run/keys/hive-operator-token";
      metricsTokenFile = "metrics-token";
      apiKeyFile = "/run/keys/anthropic-api-key";
      apiKeyEnv = "HIVE_API_KEY";
      modelBaseUrl = "http://127.0.0.1:4000";
      defaultModel = "opus";
      claudePath = "/opt/claude/bin/claude";
      supervision = { agentRestarts = 3; agentPeriod = 30; agentMaxConsecutiveFailures = 4;
        backoffMin = 0.5; backoffMax = 120; backoffFactor = 3; backoffJitter = 0; stableAfter = 300; };
      settings = { store.retention_days = 14; watcher.rescan_interval = 120;
        web.max_body_bytes = 2097152; };
    }""",
}


@pytest.mark.parametrize("sample", SAMPLES, ids=list(SAMPLES))
def test_rendered_config_is_accepted_by_the_config_loader(
    nix_instantiate: str, sample: str, tmp_path: Path
) -> None:
    rendered = _eval(nix_instantiate, _lib(f"l.renderConfig {SAMPLES[sample]}"), tmp_path)
    path = tmp_path / "hive.toml"
    path.write_text(_to_toml(rendered), encoding="utf-8")
    import tomllib

    assert tomllib.loads(path.read_text()) == rendered
    cfg = load_config(path)  # raises ConfigError on any key or value it refuses
    if sample == "defaults":
        assert (cfg.state_dir, cfg.backend) == ("/var/lib/hive-actors", "nixos")
        assert (cfg.web.host, cfg.web.port, cfg.web.token_file) == ("127.0.0.1", 8000, "")
        assert cfg.model == ModelConfig()
        assert cfg.supervision == SupervisionConfig()
    else:
        assert (cfg.state_dir, cfg.backend) == ("/var/lib/hive", "nspawn")
        assert (cfg.web.host, cfg.web.port, cfg.web.metrics_port) == ("0.0.0.0", 8443, 9464)
        assert cfg.web.max_body_bytes == 2097152
        assert cfg.web.token_file == "/run/keys/hive-operator-token"
        assert cfg.web.metrics_token_file == "metrics-token"
        assert cfg.model == ModelConfig(base_url="http://127.0.0.1:4000", api_key_env="HIVE_API_KEY",
                                        default="opus", claude_path="/opt/claude/bin/claude")
        assert cfg.supervision == SupervisionConfig(
            agent_restarts=3, agent_period=30.0, agent_max_consecutive_failures=4,
            backoff_min=0.5, backoff_max=120.0, backoff_factor=3.0, backoff_jitter=0.0,
            stable_after=300.0)
        assert cfg.store.retention_days == 14.0
        assert cfg.watcher.rescan_interval == 120.0
        # The API key file is never in hive.toml (the unit loads it as a credential).
        assert "anthropic-api-key" not in path.read_text()


def test_unknown_settings_reach_the_loader_and_are_refused_there(
    nix_instantiate: str, tmp_path: Path
) -> None:
    rendered = _eval(nix_instantiate, _lib("l.renderConfig { settings.web.colour = \"red\"; }"),
                     tmp_path)
    path = tmp_path / "hive.toml"
    path.write_text(_to_toml(rendered), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[web\] has no key 'colour'"):
        load_config(path)


def test_lib_defaults_are_the_config_defaults(nix_instantiate: str, tmp_path: Path) -> None:
    d = _eval(nix_instantiate, _lib("l.defaults"), tmp_path)
    web, model, sup = WebConfig(), ModelConfig(), SupervisionConfig()
    assert (d["listenAddress"], d["port"], d["metricsPort"]) == (web.host, web.port,
                                                                   web.metrics_port)
    assert (d["apiKeyEnv"], d["defaultModel"], d["modelBaseUrl"]) == (
        model.api_key_env, model.default, model.base_url)
    s = d["supervision"]
    assert (s["agentRestarts"], s["agentPeriod"], s["agentMaxConsecutiveFailures"]) == (
        sup.agent_restarts, sup.agent_period, sup.agent_max_consecutive_failures)
    assert (s["backoffMin"], s["backoffMax"], s["backoffFactor"], s["backoffJitter"],
            s["stableAfter"]) == (sup.backoff_min, sup.backoff_max, sup.backoff_factor,
                                  sup.backoff_jitter, sup.stable_after)


BAD = [
    ('port = "x";', f'{PREFIX}.port: expected an integer between 1 and 65535, got "x"'),
    ("port = 70000;", f"{PREFIX}.port: expected an integer between 1 and 65535, got 70000"),
    ("metricsPort = true;", f"{PREFIX}.metricsPort: expected an integer between 0 and 65535"),
    ('backend = "docker";', f'{PREFIX}.backend: expected one of "process", "nspawn", "nixos"'),
    ('stateDir = "hive-state";', f"{PREFIX}.stateDir: expected an absolute path"),
    ("listenAddress = 127;", f"{PREFIX}.listenAddress: expected a non-empty string, got 127"),
    ("apiKeyFile = ./nix/lib.nix;",
     f"{PREFIX}.apiKeyFile: expected null or an absolute path as a string"),
    ('apiKeyFile = "keys/anthropic";', f"{PREFIX}.apiKeyFile: expected null or an absolute path"),
    ('tokenFile = "/nix/store/abc-token";',
     f'{PREFIX}.tokenFile: "/nix/store/abc-token" is in the world-readable Nix store'),
    ("metricsTokenFile = 5;", f"{PREFIX}.metricsTokenFile: expected null or a file name"),
    ('apiKeyEnv = "1KEY";', f"{PREFIX}.apiKeyEnv: expected an environment variable name"),
    ('defaultModel = "";', f'{PREFIX}.defaultModel: expected a non-empty string, got ""'),
    ('claudePath = "claude";', f'{PREFIX}.claudePath: expected null or an absolute path'),
    ("supervision.agentRestarts = 1.5;",
     f"{PREFIX}.supervision.agentRestarts: expected an integer between 0 and 1000000, got 1.5"),
    ('supervision.agentPeriod = "60";',
     f'{PREFIX}.supervision.agentPeriod: expected a number greater than 0, got "60"'),
    ("supervision.backoffJitter = 1;",
     f"{PREFIX}.supervision.backoffJitter: expected a number from 0 up to (not including) 1,"
     + " got 1"),
    ("supervision = { backoffMin = 10; backoffMax = 5; };",
     f"{PREFIX}.supervision.backoffMax: expected a number at least backoffMin (10), got 5"),
    ("supervision.restarts = 3;", f"{PREFIX}.supervision.restarts: no such option"),
    ("settings = [ ];", f"{PREFIX}.settings: expected an attribute set"),
    ("settings.hive.state_dir = \"/srv/hive\";",
     f"{PREFIX}.settings.hive.state_dir: set by {PREFIX}.stateDir; set that option instead"),
    ("settings.supervision.backoff_max = 5;",
     f"{PREFIX}.settings.supervision.backoff_max: set by {PREFIX}.supervision.backoffMax"),
    ("colour = 1;", f"{PREFIX}.colour: no such option"),
]


@pytest.mark.parametrize(("options", "message"), BAD, ids=[b[0] for b in BAD])
def test_an_option_of_the_wrong_type_names_the_option(
    nix_instantiate: str, options: str, message: str, tmp_path: Path
) -> None:
    stderr = _eval_error(nix_instantiate, _lib(f"l.renderConfig {{ {options} }}"), tmp_path)
    assert message in stderr
    # validate (the module's assertions) says the same without throwing.
    problems = _eval(nix_instantiate, _lib(f"l.validate {{ {options} }}"), tmp_path)
    assert any(message in p for p in problems), problems


def test_every_problem_is_reported_at_once(nix_instantiate: str, tmp_path: Path) -> None:
    stderr = _eval_error(nix_instantiate,
                         _lib('l.checkOptions { port = "x"; backend = "docker"; }'), tmp_path)
    assert f"{PREFIX}.port:" in stderr and f"{PREFIX}.backend:" in stderr


# --- pins ---------------------------------------------------------------------------------------


def test_pins_are_setup_cfg_pins(nix_instantiate: str, tmp_path: Path) -> None:
    pins = _eval(nix_instantiate, f"import {NIX / 'pins.nix'}", tmp_path)
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    required = dict(
        line.strip().split("==") for line in parser["options"]["install_requires"].splitlines()
        if line.strip()
    )
    assert set(required) <= set(pins), f"not pinned in nix/pins.nix: {set(required) - set(pins)}"
    for name, version in required.items():
        assert pins[name]["version"] == version, name
    sri = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")
    for name, pin in pins.items():
        files = pin["wheels"].values() if "wheels" in pin else [pin]
        for f in files:
            assert sri.match(f["hash"]), (name, f["hash"])
            assert f["url"].startswith("https://files.pythonhosted.org/packages/"), name
            assert pin["version"] in f["url"].rsplit("/", 1)[1], name
    assert set(pins["claude-agent-sdk"]["wheels"]) == {"x86_64-linux", "aarch64-linux"}


# --- the start script (API key from a credential) -----------------------------------------------


@pytest.fixture()
def start_script(nix_instantiate: str, tmp_path: Path) -> Path:
    hive = tmp_path / "hive"
    hive.write_text('#!/bin/sh\necho "args: $*"\necho "key: ${HIVE_KEY:-unset}"\n')
    hive.chmod(0o755)
    text = _eval(nix_instantiate, _lib(
        f'l.startScript {{ hive = "{hive}"; configFile = "/etc/hive-actors/hive.toml"; '
        'apiKeyFile = "/run/keys/anthropic key"; apiKeyEnv = "HIVE_KEY"; }'), tmp_path)
    script = tmp_path / "start"
    script.write_text(text)
    return script


def _start(script: Path, creds: Path | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if creds is not None:
        env["CREDENTIALS_DIRECTORY"] = str(creds)
    return subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True,
                          env=env, timeout=30)


def test_a_missing_api_key_file_is_a_start_error_naming_it(start_script: Path,
                                                           tmp_path: Path) -> None:
    for creds in (None, tmp_path / "empty-creds"):
        if creds is not None:
            creds.mkdir()
        proc = _start(start_script, creds)
        assert proc.returncode == 78, proc
        assert "the API key file /run/keys/anthropic key (services.hive-actors.apiKeyFile)" \
            in proc.stderr
        assert "does not exist" in proc.stderr
        assert proc.stdout == ""


def test_an_empty_api_key_file_is_a_start_error_naming_it(start_script: Path,
                                                          tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-key").write_text("\n")
    proc = _start(start_script, creds)
    assert proc.returncode == 78
    assert "/run/keys/anthropic key (services.hive-actors.apiKeyFile) is empty" in proc.stderr


def test_the_api_key_is_exported_and_hive_serve_runs(start_script: Path, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-key").write_text("sk-test-123\n")
    proc = _start(start_script, creds)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["args: serve --config /etc/hive-actors/hive.toml",
                                        "key: sk-test-123"]


def test_without_an_api_key_file_the_script_only_runs_hive(nix_instantiate: str,
                                                           tmp_path: Path) -> None:
    text = _eval(nix_instantiate, _lib(
        'l.startScript { hive = "/bin/echo"; configFile = "/etc/hive-actors/hive.toml"; }'),
        tmp_path)
    assert "CREDENTIALS_DIRECTORY" not in text
    proc = subprocess.run(["bash", "-c", text], check=False, capture_output=True, text=True,
                          timeout=30)
    assert proc.stdout == "serve --config /etc/hive-actors/hive.toml\n"


# --- the D-Bus policy ---------------------------------------------------------------------------


def test_dbus_policy_allows_what_the_watcher_calls(nix_instantiate: str, tmp_path: Path) -> None:
    xml = _eval(nix_instantiate, _lib('l.dbusPolicy "root"'), tmp_path)
    root = ET.fromstring(xml)
    (policy,) = root.findall("policy")
    assert policy.get("user") == "root"
    allowed = {(a.get("send_interface"), a.get("send_member"))
               for a in policy.findall("allow") if a.get("send_member")}
    assert all(a.get("send_destination") == "org.freedesktop.systemd1"
               for a in policy.findall("allow") if a.get("send_member"))
    iface = (REPO / "hive_actors/watcher/systemd_iface.py").read_text()
    manager = iface.split('interface_name="org.freedesktop.systemd1.Manager"')[1].split(
        "\nclass ")[0]
    methods = set(re.findall(r'method_name="(\w+)"', manager))
    assert methods, "no Manager methods found in systemd_iface.py"
    assert {("org.freedesktop.systemd1.Manager", m) for m in methods} <= allowed
    assert {("org.freedesktop.DBus.Properties", "Get"),
            ("org.freedesktop.DBus.Properties", "GetAll")} <= allowed
    assert any(a.get("receive_sender") == "org.freedesktop.systemd1"
               and a.get("receive_type") == "signal" for a in policy.findall("allow"))


# --- the module, against a stand-in of nixpkgs' lib and pkgs -------------------------------------

STUB = r"""
let
  hiveLib = import @LIB@;
  lib = rec {
    mkOption = o: o;
    mkEnableOption = d: { type = "bool"; default = false; description = d; };
    mkIf = c: v: if c then v else { };
    mkForce = v: { _force = v; };
    mkDefault = v: v;
    optional = c: v: if c then [ v ] else [ ];
    optionals = c: l: if c then l else [ ];
    optionalAttrs = c: s: if c then s else { };
    literalExpression = s: s;
    genAttrs = ns: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) ns);
    types = {
      str = "str"; package = "package"; bool = "bool"; int = "int"; float = "float";
      enum = l: "enum"; nullOr = t: "nullOr"; either = a: b: "either";
      ints = { between = a: b: "between"; unsigned = "unsigned"; positive = "positive"; };
    };
  };
  pkgs = {
    formats.toml = { }: { type = "toml"; generate = name: value: { inherit name value; }; };
    writeShellScript = name: text: { inherit name text; };
    writeTextFile = a: a;
    callPackage = f: a: "hive-actors-package";
    coreutils = "coreutils"; git = "git"; util-linux = "util-linux"; systemd = "systemd";
    nixos-container = "nixos-container";
  };
  cfg = hiveLib.checkOptions @OPTIONS@ // {
    enable = true; package = "/nix/store/hive-actors"; openFirewall = true;
  };
  module = import @MODULE@ {
    config = { services.hive-actors = cfg; nix.package = "nix"; };
    inherit lib pkgs;
  };
in {
  options = builtins.attrNames module.options.services.hive-actors;
  supervisionOptions = builtins.attrNames module.options.services.hive-actors.supervision;
  config = module.config;
}
"""


def _module(exe: str, options: str, tmp: Path) -> Any:
    expr = (STUB.replace("@LIB@", str(LIB)).replace("@MODULE@", str(NIX / "module.nix"))
            .replace("@OPTIONS@", options))
    return _eval(exe, expr, tmp)


def test_module_declares_every_lib_option(nix_instantiate: str, tmp_path: Path) -> None:
    got = _module(nix_instantiate, "{ }", tmp_path)
    d = _eval(nix_instantiate, _lib("l.defaults"), tmp_path)
    assert set(d) | {"enable", "package", "openFirewall"} == set(got["options"])
    assert set(d["supervision"]) == set(got["supervisionOptions"])


def test_module_unit_for_the_nixos_backend(nix_instantiate: str, tmp_path: Path) -> None:
    got = _module(nix_instantiate, '{ apiKeyFile = "/run/keys/anthropic"; port = 8080; }',
                  tmp_path)
    c = got["config"]
    assert c["assertions"] == []
    # hive.toml in /etc, rendered by lib.nix.
    toml = c["environment"]["etc"]["hive-actors/hive.toml"]["source"]
    assert toml["value"]["web"]["port"] == 8080
    assert "apiKeyFile" not in json.dumps(toml) and "/run/keys" not in json.dumps(toml)
    # Restart=no on the container@ template, and no declarative containers.
    assert c["systemd"]["services"]["container@"] == {"serviceConfig": {"Restart": {"_force": "no"}}}
    assert "containers" not in c
    assert c["boot"]["enableContainers"] is True
    unit = c["systemd"]["services"]["hive-actors"]
    sc = unit["serviceConfig"]
    assert sc["Restart"] == "on-failure"
    assert sc["User"] == "root"
    assert sc["LoadCredential"] == ["api-key:/run/keys/anthropic"]
    assert unit["unitConfig"]["AssertFileNotEmpty"] == "/run/keys/anthropic"
    assert "serve --config '/etc/hive-actors/hive.toml'" in sc["ExecStart"]["text"]
    assert "'/nix/store/hive-actors/bin/hive'" in sc["ExecStart"]["text"]
    assert sorted(sc["RestrictAddressFamilies"]) == ["AF_INET", "AF_INET6", "AF_NETLINK",
                                                     "AF_UNIX"]
    assert {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_CHROOT"} <= set(sc["CapabilityBoundingSet"])
    assert "CAP_NET_ADMIN" not in sc["CapabilityBoundingSet"]
    assert sc["NoNewPrivileges"] is True and sc["ProtectSystem"] == "strict"
    assert sc["ProtectHome"] is True and sc["ProtectKernelModules"] is True
    assert "/var/lib/hive-actors" in sc["ReadWritePaths"]
    assert "-/etc/nixos-containers" in sc["ReadWritePaths"]
    assert "nixos-container" in unit["path"]
    assert unit["environment"]["NIX_REMOTE"] == "daemon"
    # The D-Bus policy is installed; the port opened only because openFirewall is set.
    (policy,) = c["services"]["dbus"]["packages"]
    assert policy["destination"] == "/share/dbus-1/system.d/hive-actors.conf"
    assert c["networking"]["firewall"]["allowedTCPPorts"] == [8080]


def test_module_without_api_key_file_and_other_backends(nix_instantiate: str,
                                                        tmp_path: Path) -> None:
    c = _module(nix_instantiate, '{ backend = "process"; port = 80; }', tmp_path)["config"]
    sc = c["systemd"]["services"]["hive-actors"]["serviceConfig"]
    assert sc["LoadCredential"] == []
    assert "AssertFileNotEmpty" not in c["systemd"]["services"]["hive-actors"]["unitConfig"]
    assert "CAP_NET_BIND_SERVICE" in sc["CapabilityBoundingSet"]  # port 80
    assert "CAP_SYS_ADMIN" not in sc["CapabilityBoundingSet"]
    assert c["systemd"]["services"]["container@"] == {}  # other containers left alone
    nspawn = _module(nix_instantiate, '{ backend = "nspawn"; }', tmp_path)["config"]
    assert "CapabilityBoundingSet" not in nspawn["systemd"]["services"]["hive-actors"][
        "serviceConfig"]


def test_module_assertions_name_the_option(nix_instantiate: str, tmp_path: Path) -> None:
    # checkOptions throws before the module sees it; the module's own assertions (validate)
    # catch what the NixOS types let through, e.g. a secret in the store.
    expr = (STUB.replace("@LIB@", str(LIB)).replace("@MODULE@", str(NIX / "module.nix"))
            .replace("hiveLib.checkOptions @OPTIONS@", 'hiveLib.defaults // { tokenFile = '
                     '"/nix/store/x-token"; }'))
    (assertion,) = _eval(nix_instantiate, f"({expr}).config.assertions", tmp_path)
    assert assertion["assertion"] is False
    assert assertion["message"].startswith(f"{PREFIX}.tokenFile:")
    # Forcing the whole configuration (hive.toml) fails with the same message.
    assert f"{PREFIX}.tokenFile:" in _eval_error(nix_instantiate, expr, tmp_path)


# --- the package, against a stand-in of nixpkgs ------------------------------------------------

PACKAGE_STUB = r"""
let
  fix = f: let x = f x; in x;
  drv = a: a // { outPath = "/nix/store/stub-${a.pname or a.name or "x"}"; };
  lib = {
    genAttrs = ns: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) ns);
    optionalAttrs = c: s: if c then s else { };
    hasSuffix = x: s: let ls = builtins.stringLength s; lx = builtins.stringLength x; in
      ls >= lx && builtins.substring (ls - lx) lx s == x;
    removePrefix = p: s: let lp = builtins.stringLength p; in
      if builtins.substring 0 lp s == p then builtins.substring lp (builtins.stringLength s) s else s;
    cleanSourceWith = a: a;
    licenses.mit = "mit";
  };
  nixpkgsOwn = name: drv { pname = name; version = "nixpkgs"; overridePythonAttrs = f: drv ({ pname = name; } // f { }); };
  base = lib.genAttrs [
    "pykka" "websockets" "apsw" "prometheus-client" "starlette" "uvicorn" "setuptools" "wheel"
    "h11" "truststore" "anyio" "idna" "pydantic" "typing-extensions" "jsonschema" "cryptography"
    "opentelemetry-api" "pyjwt" "python-multipart" "sse-starlette" "typing-inspection" "sniffio"
  ] nixpkgsOwn // { buildPythonPackage = drv; buildPythonApplication = drv; };
  python3 = {
    sitePackages = "lib/python3.11/site-packages";
    override = { self, packageOverrides }: {
      pkgs = fix (s: base // packageOverrides s base);
      sitePackages = "lib/python3.11/site-packages";
    };
  };
  app = import @PACKAGE@ {
    inherit lib python3;
    stdenv = { hostPlatform.system = "x86_64-linux"; cc.cc.lib = "cc-lib"; };
    fetchurl = a: "fetched:" + a.url;
    autoPatchelfHook = "autoPatchelfHook"; pkg-config = "pkg-config"; systemd = "systemd";
  };
  root = toString @REPO@;
in {
  inherit (app) pname version;
  deps = map (d: { inherit (d) pname version; src = d.src or null; }) app.dependencies;
  claude = app.passthru.claude;
  claudeSrc = app.passthru.python.pkgs.claude-agent-sdk.src;
  keep = map (rel: app.src.filter (root + "/" + rel.p) rel.t) @PATHS@;
}
"""

FILTERED = [
    ("hive_actors", "directory", True), ("hive_actors/cli.py", "regular", True),
    ("setup.cfg", "regular", True), ("setup.py", "regular", True),
    ("web", "directory", True), ("web/index.html", "regular", True),
    ("web/node_modules", "directory", False), ("tests", "directory", False),
    ("nix", "directory", False), ("hive_actors/webroot", "directory", False),
    ("hive_actors.egg-info", "directory", False), (".git", "directory", False),
    ("hive_actors/__pycache__", "directory", False), ("test-artifacts", "directory", False),
]


def test_package_against_a_nixpkgs_stand_in(nix_instantiate: str, tmp_path: Path) -> None:
    paths = "[ " + " ".join(f'{{ p = "{p}"; t = "{t}"; }}' for p, t, _ in FILTERED) + " ]"
    expr = (PACKAGE_STUB.replace("@PACKAGE@", str(NIX / "package.nix"))
            .replace("@REPO@", str(REPO)).replace("@PATHS@", paths))
    got = _eval(nix_instantiate, expr, tmp_path)
    from hive_actors import __version__

    assert (got["pname"], got["version"]) == ("hive_actors", __version__)
    pins = _eval(nix_instantiate, f"import {NIX / 'pins.nix'}", tmp_path)
    deps = {d["pname"]: d for d in got["deps"]}
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    required = dict(
        line.strip().split("==") for line in parser["options"]["install_requires"].splitlines()
        if line.strip()
    )
    assert set(deps) == set(required)
    for name, version in required.items():
        assert deps[name]["version"] == version, name  # pinned = true: every one at the pin
        if name != "claude-agent-sdk":
            assert deps[name]["src"] == "fetched:" + pins[name]["url"], name
    assert got["claudeSrc"] == "fetched:" + pins["claude-agent-sdk"]["wheels"]["x86_64-linux"]["url"]
    assert got["claude"].endswith(
        "/lib/python3.11/site-packages/claude_agent_sdk/_bundled/claude")
    assert got["keep"] == [keep for _, _, keep in FILTERED]


# --- CI installs nix-bin ------------------------------------------------------------------------


def test_test_script_installs_nix_bin() -> None:
    script = (REPO / "scripts" / "test.sh").read_text()
    assert "command -v nix-instantiate >/dev/null 2>&1 || need+=(nix-bin)" in script
