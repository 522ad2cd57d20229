"""The nixos backend's agents, end to end on disk: the rendered Nix files (checked against
``nix-instantiate`` without nixpkgs), every path that makes or changes a config repository
(one-shot spawn, two-step spawn, apply_commit) leaving a flake the stand-in
``nixos-container`` builds, the manager's view of the other agents, the paths its tools
answer with, and the refusal of a container mapped to the host's root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hive_actors.agent.configs import HIVE_AUTHOR, ConfigDesk
from hive_actors.agent.ops import ActorHiveOps
from hive_actors.agent.turnbook import TurnBook
from hive_actors.agentconfig import AgentConfig, ConfigRepo, parse_agent_toml
from hive_actors.config import HiveConfig, load_config
from hive_actors.containers import ContainerSpec, NixosBackend
from hive_actors.containers.nixconf import DEFAULT_AGENT_NIX, host_conf, render_flake_nix
from hive_actors.containers.nixrender import (
    agent_data,
    managed_settings,
    render_hive_nix,
    repo_files,
)
from hive_actors.errors import ConfigError, HiveError
from hive_actors.hive import Hive
from hive_actors.mcp import render
from hive_actors.services.directory import Directory
from hive_actors.store import AgentState, Approval, ApprovalKind, ApprovalStatus, Role

TIMEOUT = float(os.environ.get("HIVE_TEST_TIMEOUT", "10"))
STANDINS = Path(__file__).parent / "standins"
NIX = shutil.which("nix-instantiate")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def nix() -> str:
    """nix-instantiate; skipped where it is missing, except in CI (which installs nix-bin)."""
    if NIX is None:
        if IN_CI:
            pytest.fail("nix-instantiate is not on PATH in CI: install nix-bin")
        pytest.skip("nix-instantiate is not installed (apt-get install nix-bin)")
    return NIX


def instantiate(nix: str, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "NIX_PATH": ""}
    proc = subprocess.run(
        [nix, *args], capture_output=True, text=True, timeout=TIMEOUT * 3, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- the rendering, against nix-instantiate ----------------------------------------------------

TRICKY = r'''model = "sonnet"
system_prompt = "be \"careful\""
[bash]
allow = ["git *", "echo \"${HOME}\" \\ $$ $${a} ''${b}'' é 🐝 日本", "printf %s\\n \\\\x"]
[mcp.game]
command = "/opt/game-mcp"
args = ["--label", "a\nb\tc\rd", "$${", "\u0001ctl", "$", "\\$", "''", "${x}"]
env = { TOKEN = "v$\"\\", "EMPTY" = "" }
allow = ["get_state", "act"]
required = true
[mcp.files]
command = "files-mcp"
allow = ["*"]
'''

SAMPLES: dict[str, tuple[str, str, str]] = {
    "no servers": ("alice", "agent", 'model = "sonnet"\n'),
    "manager": ("boss", "manager", '[bash]\nallow = ["git *", "nix build .*"]\n'),
    "tricky strings, several servers": ("web-2", "agent", TRICKY),
    "empty": ("x", "agent", ""),
}


def sample(key: str) -> tuple[str, str, AgentConfig]:
    name, role, toml = SAMPLES[key]
    return name, role, parse_agent_toml(toml, resolve=None)


@pytest.mark.parametrize("key", list(SAMPLES))
def test_hive_nix_evaluates_to_the_python_data(nix: str, key: str, tmp_path: Path) -> None:
    name, role, config = sample(key)
    data = agent_data(name, role, config)
    (tmp_path / "hive.nix").write_text(render_hive_nix(name, role, config))
    evaluated = json.loads(instantiate(nix, "--eval", "--strict", "--json", str(tmp_path / "hive.nix")))
    assert evaluated == data
    assert data["role"] == role and data["name"] == name


def test_the_tricky_sample_keeps_its_strings() -> None:
    _name, _role, config = sample("tricky strings, several servers")
    data = agent_data("web-2", "agent", config)
    assert "Bash(echo \"${HOME}\" \\ $$ $${a} ''${b}'' é 🐝 日本)" in data["allow"]
    assert data["mcpServers"]["game"]["env"] == {"TOKEN": 'v$"\\', "EMPTY": ""}
    assert data["mcpServers"]["game"]["args"][1] == "a\nb\tc\rd"
    assert set(data["mcpServers"]) == {"game", "files"}
    assert "mcp__game__get_state" in data["allow"] and "mcp__files__*" in data["allow"]


@pytest.mark.parametrize("key", list(SAMPLES))
def test_agent_nix_turns_hive_nix_into_config(nix: str, key: str, tmp_path: Path) -> None:
    """agent.nix evaluated as a module with stand-in lib and pkgs (no nixpkgs here): the
    managed settings and /etc/hive/agent.json are what Python renders."""
    name, role, config = sample(key)
    for rel, text in repo_files(name, role, config).items():
        (tmp_path / rel).write_text(text)
    expr = (
        "let m = import ./agent.nix { config = { }; pkgs = { git = \"git\"; };"
        " lib = { getName = p: p; }; }; etc = m.environment.etc; in {"
        " settings = builtins.fromJSON etc.\"claude-code/managed-settings.json\".text;"
        " agent = builtins.fromJSON etc.\"hive/agent.json\".text;"
        " packages = m.environment.systemPackages;"
        " unfree = m ? nixpkgs; }"
    )
    (tmp_path / "check.nix").write_text(expr)
    out = json.loads(instantiate(nix, "--eval", "--strict", "--json", str(tmp_path / "check.nix")))
    data = agent_data(name, role, config)
    assert out == {
        "settings": managed_settings(data),
        "agent": data,
        # Not nixpkgs' unfree, unpinned claude-code: the hive's pinned CLI is used.
        "packages": ["git"],
        "unfree": False,
    }


@pytest.mark.parametrize("name", ["alice", "web-2"])
def test_agent_nix_and_flake_nix_parse(nix: str, name: str, tmp_path: Path) -> None:
    files = repo_files(name, "agent", parse_agent_toml("", resolve=None))
    assert files["agent.nix"] == DEFAULT_AGENT_NIX
    assert files["flake.nix"] == render_flake_nix(name)
    for rel in ("agent.nix", "flake.nix", "hive.nix"):
        (tmp_path / rel).write_text(files[rel])
        instantiate(nix, "--parse", str(tmp_path / rel))
    # The flake's outputs as a function: nixosConfigurations.<name> from ./agent.nix.
    expr = (
        "let f = import ./flake.nix; out = f.outputs { self = { }; nixpkgs = { lib = {"
        " nixosSystem = a: a; }; }; }; s = out.nixosConfigurations.\"" + name + "\"; in"
        " { inherit (f.inputs.nixpkgs) url; system = s.system; n = builtins.length s.modules;"
        " agent = builtins.elemAt s.modules 1 == ./agent.nix; }"
    )
    (tmp_path / "check.nix").write_text(expr)
    out = json.loads(instantiate(nix, "--eval", "--strict", "--json", str(tmp_path / "check.nix")))
    assert out == {"url": "nixpkgs", "system": "x86_64-linux", "n": 2, "agent": True}


# -- the desk and the backend ------------------------------------------------------------------


@dataclass
class World:
    hive: Hive
    desk: ConfigDesk
    backend: NixosBackend
    home: Path

    @property
    def conf_dir(self) -> Path:
        return self.home / "nixos-container-standin" / "conf"

    def argvs(self) -> list[list[str]]:
        log = self.home / "nixos-container-standin" / "log.jsonl"
        if not log.exists():
            return []
        return [json.loads(line)["argv"] for line in log.read_text().splitlines()]

    def register(self, name: str, role: Role = Role.AGENT,
                 state: AgentState = AgentState.PENDING) -> None:
        with self.hive.open_store() as store:
            store.registry.register(name, role=role, state=state)

    def repo(self, name: str) -> ConfigRepo:
        return ConfigRepo(self.hive.agent_paths(name), resolve=None)

    def conf_flags(self, name: str) -> list[str]:
        for line in (self.conf_dir / f"{name}.conf").read_text().splitlines():
            if line.startswith("EXTRA_NSPAWN_FLAGS="):
                return line.partition("=")[2].strip('"').split()
        raise AssertionError(f"{name}.conf has no EXTRA_NSPAWN_FLAGS")


def make_world(tmp_path: Path, backend: str = "nixos") -> World:
    home = tmp_path / "host-home"
    home.mkdir(exist_ok=True)
    config = HiveConfig(state_dir=str(tmp_path / "hive"), backend=backend)
    hive = Hive(config)
    nixos = NixosBackend(
        config.state_dir,
        conf_dir=home / "nixos-container-standin" / "conf",
        host_env={"PATH": f"{STANDINS}:{os.environ['PATH']}", "HOME": str(home)},
        command_timeout_s=TIMEOUT,
        build_timeout_s=TIMEOUT,
    )
    return World(hive, ConfigDesk(hive), nixos, home)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield make_world(tmp_path)


def approval(kind: ApprovalKind, agent: str, ref: str | None = None) -> Approval:
    return Approval(1, kind, agent, ref, "", "boss", 0.0, ApprovalStatus.APPROVED, "operator",
                    0.0, None)


GIT_ENV = {
    "PATH": os.environ["PATH"],
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "boss",
    "GIT_AUTHOR_EMAIL": "boss@hive",
    "GIT_COMMITTER_NAME": "boss",
    "GIT_COMMITTER_EMAIL": "boss@hive",
}


def commit(proposed: Path, files: dict[str, str], message: str) -> str:
    """The manager edits and commits in config/proposed."""
    for rel, text in files.items():
        (proposed / rel).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=proposed, env=GIT_ENV, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=proposed, env=GIT_ENV, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=proposed, env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


def applied_file(world: World, name: str, rel: str) -> str:
    return (world.hive.agent_paths(name).config / "applied" / rel).read_text()


def test_the_stand_in_refuses_a_repository_without_the_nix_files(world: World) -> None:
    """What the desk made before: agent.toml alone. nixos-container cannot create from it."""
    repo = world.repo("old")
    repo.init('model = "sonnet"\n', HIVE_AUTHOR)
    with pytest.raises(ConfigError, match="has no flake.nix"):
        world.backend.create("old", ContainerSpec())
    # The stand-in itself refuses it too, as the real CLI does.
    proc = subprocess.run(
        [str(STANDINS / "nixos-container"), "create", "old", "--flake", f"{repo.applied}#old"],
        env={"HOME": str(world.home), "PATH": os.environ["PATH"]},
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode != 0 and "nixosConfigurations.old" in proc.stderr
    # A flake whose agent.nix imports a hive.nix that is not there fails as nix would.
    half = world.repo("half")
    half.init('model = "sonnet"\n', HIVE_AUTHOR,
              files={"flake.nix": render_flake_nix("half"), "agent.nix": DEFAULT_AGENT_NIX})
    with pytest.raises(HiveError, match=r"hive.nix' does not exist"):
        world.backend.create("half", ContainerSpec())
    # The desk brings such a repository up to date at the agent's next start.
    world.register("old")
    world.desk.settings("old")
    assert applied_file(world, "old", "flake.nix") == render_flake_nix("old")
    world.backend.create("old", ContainerSpec())


def test_one_shot_spawn_makes_a_repository_the_backend_creates_from(world: World) -> None:
    diff = world.desk.spawn_diff("carol")
    for rel in ("agent.toml", "hive.nix", "agent.nix", "flake.nix"):
        assert f"+++ b/{rel}\n" in diff
    assert '+    "mcp__hive__*"' in diff
    world.desk.prepare(approval(ApprovalKind.SPAWN, "carol"))
    world.register("carol")
    settings = world.desk.settings("carol")
    assert settings.allowed_tools == ("mcp__hive__*",)
    config = world.repo("carol").applied_config()
    assert applied_file(world, "carol", "hive.nix") == render_hive_nix("carol", "agent", config)
    assert applied_file(world, "carol", "agent.nix") == DEFAULT_AGENT_NIX
    world.backend.create("carol", ContainerSpec())
    assert world.argvs()[-1][:2] == ["create", "carol"]
    assert (world.hive.agent_paths("carol").root / "role").read_text() == "agent\n"


def test_two_step_spawn_and_apply_commit_render_hive_nix(world: World) -> None:
    world.desk.stage("dora", by="boss")
    proposed = world.hive.agent_paths("dora").config / "proposed"
    assert sorted(p.name for p in proposed.iterdir() if p.name != ".git") == [
        "agent.nix", "agent.toml", "flake.nix", "hive.nix"]
    # The manager changes the allow-list and adds a server; its hive.nix is now stale.
    toml = ('model = "sonnet"\n[bash]\nallow = ["git *", "make test"]\n'
            '[mcp.game]\ncommand = "game-mcp"\nargs = ["--x"]\nallow = ["*"]\n')
    sha = commit(proposed, {"agent.toml": toml}, "dora: tools")
    reviewed, diff = world.desk.review("dora", sha)
    assert reviewed != sha  # the hive's rendering on top of it
    assert world.desk.review("dora", sha)[0] == reviewed  # the same ref, the same commit
    assert '+    "Bash(make test)"' in diff and "+++ b/hive.nix" in diff
    assert '+    game = {' in diff
    # The manager's branch is untouched.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proposed, env=GIT_ENV,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert head == sha
    world.desk.prepare(approval(ApprovalKind.SPAWN_COMMIT, "dora", reviewed))
    repo = world.repo("dora")
    assert repo.head("applied") == reviewed
    expected = render_hive_nix("dora", "agent", parse_agent_toml(toml, resolve=None))
    assert applied_file(world, "dora", "hive.nix") == expected
    world.backend.create("dora", ContainerSpec())
    world.backend.start("dora")
    world.backend.stop("dora")

    # apply_commit: the manager hand-edits agent.nix (its own) and hive.nix (the hive's).
    edited_agent_nix = DEFAULT_AGENT_NIX.replace("[ pkgs.git ]", "[ pkgs.git pkgs.jq ]")
    sha2 = commit(proposed, {
        "agent.toml": toml.replace('"make test"', '"make check"'),
        "agent.nix": edited_agent_nix,
        "hive.nix": "{ role = \"manager\"; }\n",
    }, "dora: check, jq")
    reviewed2, diff2 = world.desk.review("dora", sha2)
    assert '-    "Bash(make test)"' in diff2 and '+    "Bash(make check)"' in diff2
    assert "+  environment.systemPackages = [ pkgs.git pkgs.jq ];" in diff2
    assert 'role = "manager"' not in diff2
    world.desk.prepare(approval(ApprovalKind.APPLY_COMMIT, "dora", reviewed2))
    assert applied_file(world, "dora", "agent.nix") == edited_agent_nix
    assert '"Bash(make check)"' in applied_file(world, "dora", "hive.nix")
    assert 'role = "agent";' in applied_file(world, "dora", "hive.nix")
    world.backend.start("dora")
    assert world.argvs()[-2:] == [
        ["update", "dora", "--flake", f"{repo.applied}#dora"], ["start", "dora"]]

    # An approval of a ref the desk did not render (e.g. queued before): rendered when applied.
    world.backend.stop("dora")
    sha3 = commit(proposed, {"agent.toml": toml}, "dora: back")
    world.desk.prepare(approval(ApprovalKind.APPLY_COMMIT, "dora", sha3))
    assert repo.head("applied") != sha3
    assert applied_file(world, "dora", "hive.nix") == expected
    world.backend.start("dora")


def test_the_managers_container_sees_the_agents_repositories(world: World) -> None:
    world.register("boss", role=Role.MANAGER)
    world.register("alice")
    world.desk.settings("alice")
    world.backend.create("alice", ContainerSpec())
    world.desk.settings("boss")
    hive_nix = applied_file(world, "boss", "hive.nix")
    assert 'role = "manager";' in hive_nix
    ops = ActorHiveOps(Directory(), TurnBook(), world.hive.open_store, world.desk)
    draft = ops.request_spawn_draft("boss", "dora")
    assert (draft.config_path, draft.state_path) == (
        "/hive/agents/dora/proposed", "/hive/agents/dora/state")
    assert "config repository: /hive/agents/dora/proposed" in render.draft_staged(draft)

    world.backend.create("boss", ContainerSpec())
    paths = {n: world.hive.agent_paths(n) for n in ("boss", "alice", "dora")}
    flags = world.conf_flags("boss")
    assert flags == [
        f"--bind={paths['boss'].state}:/state:idmap",
        f"--bind-ro={paths['alice'].config}:/hive/agents/alice/config:idmap",
        f"--bind={paths['alice'].config / 'proposed'}:/hive/agents/alice/proposed:idmap",
        f"--bind-ro={paths['dora'].config}:/hive/agents/dora/config:idmap",
        f"--bind={paths['dora'].config / 'proposed'}:/hive/agents/dora/proposed:idmap",
        # A draft (no container yet): its state, for the initial notes.
        f"--bind={paths['dora'].state}:/hive/agents/dora/state:idmap",
    ]
    assert "PRIVATE_USERS=pick" in (world.conf_dir / "boss.conf").read_text()
    # Another agent's container sees only its own /state.
    assert world.conf_flags("alice") == [f"--bind={paths['alice'].state}:/state:idmap"]

    inside = world.backend.inside
    assert inside("boss", paths["dora"].config / "proposed" / "agent.toml") == (
        "/hive/agents/dora/proposed/agent.toml")
    assert inside("boss", paths["alice"].config / "applied") == "/hive/agents/alice/config/applied"
    assert inside("boss", paths["boss"].state / "notes.md") == "/state/notes.md"
    with pytest.raises(ConfigError, match="outside"):
        inside("boss", paths["alice"].root / "claude")
    with pytest.raises(ConfigError, match="outside"):
        inside("alice", paths["dora"].config / "proposed")

    # A draft staged while the manager's container runs appears at its next start.
    world.backend.start("boss")
    world.desk.stage("erin", by="boss")
    assert not any("/hive/agents/erin/" in f for f in world.conf_flags("boss"))
    world.backend.stop("boss")
    world.backend.start("boss")
    assert f"--bind={world.hive.agent_paths('erin').config / 'proposed'}:" \
        "/hive/agents/erin/proposed:idmap" in world.conf_flags("boss")


def test_other_backends_keep_their_repositories_and_answers(tmp_path: Path) -> None:
    world = make_world(tmp_path, backend="process")
    ops = ActorHiveOps(Directory(), TurnBook(), world.hive.open_store, world.desk)
    draft = ops.request_spawn_draft("boss", "dora")
    paths = world.hive.agent_paths("dora")
    assert (draft.config_path, draft.state_path) == (
        str(paths.config / "proposed"), str(paths.state))
    assert sorted(p.name for p in (paths.config / "proposed").iterdir()) == [".git", "agent.toml"]
    assert "+++ b/hive.nix" not in world.desk.spawn_diff("carol")
    assert not (paths.root / "role").exists()


# -- the host's root, refused ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["no", "identity", "0", "0:65536", "false"])
def test_a_container_mapped_to_the_host_root_is_refused(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsafe_agents_run_as_host_root = true"):
        NixosBackend(tmp_path / "hive", private_users=value)
    toml = tmp_path / "hive.toml"
    toml.write_text(f'[hive]\nbackend = "nixos"\n[nixos]\nprivate_users = "{value}"\n')
    with pytest.raises(ConfigError, match=r"\[nixos\] private_users .* host's root"):
        load_config(toml)
    toml.write_text(f'[nixos]\nprivate_users = "{value}"\nunsafe_agents_run_as_host_root = true\n')
    assert load_config(toml).nixos.unsafe_agents_run_as_host_root is True
    with pytest.raises(ConfigError, match="host's root"):
        host_conf("", state=tmp_path / "state", private_users=value)


def test_the_override_is_loud_and_explicit(world: World, tmp_path: Path) -> None:
    backend = NixosBackend(
        tmp_path / "hive",
        conf_dir=world.conf_dir,
        host_env={"PATH": f"{STANDINS}:{os.environ['PATH']}", "HOME": str(world.home)},
        private_users="identity",
        unsafe_agents_run_as_host_root=True,
    )
    world.register("alice")
    world.desk.settings("alice")
    backend.create("alice", ContainerSpec())
    text = (world.conf_dir / "alice.conf").read_text()
    assert "PRIVATE_USERS=identity" in text
    # "no" makes no user namespace: nothing to id-map.
    conf = host_conf("", state=tmp_path / "s", private_users="no", host_root_ok=True)
    assert 'EXTRA_NSPAWN_FLAGS="--bind=' + str(tmp_path / "s") + ':/state"' in conf
    for ok in ("pick", "524288:65536", "65536"):
        load_config(None, state_dir=str(tmp_path), backend="nixos")
        NixosBackend(tmp_path / "hive", private_users=ok)


def test_nixos_section_reaches_the_backend(tmp_path: Path) -> None:
    from hive_actors.daemon import make_backend

    toml = tmp_path / "hive.toml"
    toml.write_text(f'[hive]\nbackend = "nixos"\nstate_dir = "{tmp_path / "h"}"\n'
                    '[nixos]\nprivate_users = "524288:65536"\n')
    backend: Any = make_backend(load_config(toml))
    assert isinstance(backend, NixosBackend)
    assert backend._private_users == "524288:65536"
