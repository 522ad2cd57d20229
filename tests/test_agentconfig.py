"""The per-agent config repository on real git repositories, agent.toml validation, and the
tool surface it renders."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_actors.agentconfig import (
    HIVE_TOOLS,
    AgentConfig,
    ConfigRepo,
    McpServer,
    allowed_tools,
    bash_pattern_problem,
    extra_servers,
    failed_required,
    mcp_config,
    parse_agent_toml,
)
from hive_actors.errors import ConfigError, NotFound
from hive_actors.harness.events import McpServerStatus
from hive_actors.paths import AgentPaths

AUTHOR = "hive <hive@localhost>"
DEFAULT = 'model = "sonnet"\n[bash]\nallow = ["git *"]\n'
MANAGER_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "manager",
    "GIT_AUTHOR_EMAIL": "manager@hive",
    "GIT_COMMITTER_NAME": "manager",
    "GIT_COMMITTER_EMAIL": "manager@hive",
}


def git(repo: Path, *args: str) -> str:
    """Run git as the manager would, in its repository."""
    env = {"PATH": os.environ["PATH"], **MANAGER_ENV}
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def commit(repo: ConfigRepo, files: dict[str, str], message: str = "manager edit") -> str:
    for rel, text in files.items():
        (repo.proposed / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo.proposed / rel).write_text(text)
    git(repo.proposed, "add", "-A")
    git(repo.proposed, "commit", "-q", "-m", message)
    return git(repo.proposed, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> ConfigRepo:
    r = ConfigRepo(AgentPaths.of(tmp_path, "alice").create())
    r.init(DEFAULT, AUTHOR, files={"agent.nix": "{ ... }: { }\n"})
    return r


# -- the repository ------------------------------------------------------------------------


def test_init_makes_proposed_and_applied_at_one_commit(repo: ConfigRepo) -> None:
    sha = repo.head("proposed")
    assert repo.head("applied") == sha
    assert repo.applied_exists()
    assert repo.applied.is_symlink()
    assert (repo.applied / "agent.toml").read_text() == DEFAULT
    assert (repo.applied / "agent.nix").exists()
    assert (
        git(repo.proposed, "log", "--format=%an <%ae>|%s")
        == "hive <hive@localhost>|hive: initial configuration"
    )
    assert git(repo.proposed, "branch", "--show-current") == "main"
    assert repo.applied_config().bash_allow == ("git *",)
    # A complete repository of the same agent is accepted as it is (init is idempotent).
    assert repo.init(DEFAULT, AUTHOR) == sha
    assert repo.head("proposed") == repo.head("applied") == sha


def test_init_refuses_bad_input(tmp_path: Path) -> None:
    r = ConfigRepo(AgentPaths.of(tmp_path, "bob").create())
    with pytest.raises(ConfigError, match="write it as 'Name <email>'"):
        r.init(DEFAULT, "nobody")
    with pytest.raises(ConfigError, match=r"agent.toml \(default\): \[bash\] allow\[0\]"):
        r.init('[bash]\nallow = ["*"]\n', AUTHOR)
    with pytest.raises(ConfigError, match="not a plain relative path"):
        r.init(DEFAULT, AUTHOR, files={"../escape": "x"})
    assert not r.applied_exists()
    with pytest.raises(NotFound, match="no config repository"):
        r.head("proposed")


def test_manager_commit_shows_in_the_diff(repo: ConfigRepo) -> None:
    before = repo.head("applied")
    sha = commit(
        repo,
        {"agent.toml": DEFAULT.replace("sonnet", "opus"), "prompts/extra.md": "be brief\n"},
    )
    text = repo.diff(sha)
    assert '-model = "sonnet"' in text and '+model = "opus"' in text
    assert "new file mode" in text and "+be brief" in text  # new files are part of the review
    assert repo.diff("HEAD") == text
    assert repo.head("applied") == before  # a diff changes nothing
    assert repo.read_toml(sha) == DEFAULT.replace("sonnet", "opus")


def test_an_invalid_config_is_refused_before_apply(repo: ConfigRepo) -> None:
    before = repo.head("applied")
    sha = commit(repo, {"agent.toml": '[bash]\nallow = ["git *", "ls *", "git ("]\n'})
    with pytest.raises(ConfigError) as info:
        repo.apply(sha)
    assert str(info.value) == (
        f'agent.toml at {sha[:7]}: [bash] allow[2] = "git (" is not a pattern: '
        "unbalanced parenthesis"
    )
    assert repo.head("applied") == before
    assert (repo.applied / "agent.toml").read_text() == DEFAULT


def test_apply_moves_applied(repo: ConfigRepo) -> None:
    old_target = os.readlink(repo.applied)
    sha = commit(repo, {"agent.toml": 'model = "opus"\n', "agent.nix": "{ ... }: { x = 1; }\n"})
    assert repo.apply(sha) == sha
    assert repo.head("applied") == sha
    assert (repo.applied / "agent.toml").read_text() == 'model = "opus"\n'
    assert repo.applied_config().model == "opus"
    assert os.readlink(repo.applied) != old_target
    # The previous checkout is gone; only the current one and the link remain.
    leftovers = sorted(p.name for p in repo.paths.config.iterdir() if p.name.startswith(".applied"))
    assert leftovers == [os.readlink(repo.applied)]
    assert repo.apply(sha) == sha  # idempotent
    assert repo.diff(sha) == ""


def test_refs_that_are_not_commits_of_proposed_are_refused(
    repo: ConfigRepo, tmp_path: Path
) -> None:
    before = repo.head("applied")
    other = ConfigRepo(AgentPaths.of(tmp_path, "other").create())
    foreign = other.init('model = "haiku"\n', AUTHOR)
    tree = git(repo.proposed, "rev-parse", "HEAD^{tree}")
    for ref in (foreign, "0" * 40, tree, "no-such-branch", "--output=/tmp/x", "HEAD\nx", ""):
        with pytest.raises(NotFound, match="is not a commit"):
            repo.apply(ref)
        with pytest.raises(NotFound):
            repo.diff(ref)
    assert repo.head("applied") == before
    # A commit on another branch of proposed is a commit of proposed.
    git(repo.proposed, "checkout", "-q", "-b", "idea")
    sha = commit(repo, {"agent.toml": 'model = "haiku"\n'})
    git(repo.proposed, "checkout", "-q", "main")
    assert repo.resolve("idea") == sha
    assert repo.apply("idea") == sha


def test_a_commit_without_agent_toml_is_refused(repo: ConfigRepo) -> None:
    git(repo.proposed, "rm", "-q", "agent.toml")
    git(repo.proposed, "commit", "-q", "-m", "oops")
    with pytest.raises(NotFound, match="agent.toml at [0-9a-f]{7}: no such file"):
        repo.apply("HEAD")


def test_nothing_in_the_repository_runs_on_the_host(repo: ConfigRepo, tmp_path: Path) -> None:
    """The manager writes the repository: its hooks and config must not run code here."""
    witness = tmp_path / "pwned"
    hook = f"#!/bin/sh\ntouch {witness}\n"
    hooks = repo.proposed / ".git" / "hooks"
    for name in ("post-checkout", "pre-commit", "reference-transaction", "fsmonitor-watchman"):
        (hooks / name).write_text(hook)
        (hooks / name).chmod(0o755)
    script = tmp_path / "evil.sh"
    script.write_text(hook)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    git(repo.proposed, "config", "diff.evil.command", str(script))
    git(repo.proposed, "config", "diff.evil.textconv", str(script))
    sha = commit(repo, {".gitattributes": "* diff=evil\n", "agent.toml": 'model = "opus"\n'})
    git(repo.proposed, "config", "core.fsmonitor", str(script))
    witness.unlink(missing_ok=True)  # the manager's own git ran its hooks: its business
    assert "+model" in repo.diff(sha)
    repo.apply(sha)
    repo.head("proposed")
    assert not witness.exists()


def test_symlinks_are_checked_out_as_plain_files(repo: ConfigRepo) -> None:
    os.symlink("/etc/passwd", repo.proposed / "agent.nix.link")
    sha = commit(repo, {})
    repo.apply(sha)
    applied = repo.applied / "agent.nix.link"
    assert not applied.is_symlink()
    assert applied.read_text() == "/etc/passwd"


def test_git_missing_is_a_clear_error(tmp_path: Path) -> None:
    r = ConfigRepo(AgentPaths.of(tmp_path, "alice").create(), git="git-not-installed-xyz")
    with pytest.raises(ConfigError, match="git is not on PATH"):
        r.init(DEFAULT, AUTHOR)


# -- agent.toml ----------------------------------------------------------------------------

FULL = f"""
model = "sonnet"
system_prompt = "You play bitburner."
[bash]
allow = ["git *", "nix build .*", "git *"]
[limits]
max_turns = 40
turn_deadline = 600
[mcp.bitburner]
command = "{sys.executable}"
args = ["--port", "0"]
env = {{ KEY = "value" }}
allow = ["*"]
required = true
[mcp.notes]
command = "sh"
allow = ["get_state", "put_state"]
[mcp.quiet]
command = "sh"
"""


def test_a_full_config_parses() -> None:
    config = parse_agent_toml(FULL)
    assert config.model == "sonnet"
    assert config.system_prompt == "You play bitburner."
    assert config.bash_allow == ("git *", "nix build .*")  # duplicates dropped
    assert (config.limits.max_turns, config.limits.turn_deadline) == (40, 600.0)
    names = [s.name for s in config.mcp]
    assert names == ["bitburner", "notes", "quiet"]
    bitburner = config.mcp[0]
    assert bitburner.args == ("--port", "0") and dict(bitburner.env) == {"KEY": "value"}
    assert bitburner.required and not config.mcp[1].required
    assert config.mcp[2].allow is None
    assert parse_agent_toml("") == AgentConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modle = 1", "modle is not a known key: use model, system_prompt, bash, limits, mcp"),
        ("[bash]\nallowed = []", "[bash] allowed is not a known key: use allow"),
        ("model = 3", "model must be a string, not an integer"),
        ('model = "two words"', 'model = "two words" is not a model name'),
        ("bash = 1", "[bash] must be a table, not an integer"),
        ('[bash]\nallow = "git *"', "[bash] allow must be an array of strings, not a string"),
        ("[bash]\nallow = [1]", "[bash] allow[0] = 1 is an integer: a pattern is a string"),
        ('[bash]\nallow = [""]', '[bash] allow[0] = "" is not a pattern: is empty'),
        ('[bash]\nallow = ["*"]', '[bash] allow[0] = "*" is not a pattern: allows any command'),
        ('[bash]\nallow = [":*"]', "allows any command"),
        ('[bash]\nallow = ["git *)"]', "unbalanced parenthesis"),
        ('[bash]\nallow = [")("]', "unbalanced parenthesis"),
        ('[bash]\nallow = ["git a,b"]', "contains ','"),
        ('[bash]\nallow = ["git\\nrm -rf /"]', "contains a control character"),
        ('[bash]\nallow = [" git *"]', "leading or trailing whitespace"),
        ("[limits]\nmax_turns = 0", "[limits] max_turns = 0 must be an integer in 1..10000"),
        ("[limits]\nmax_turns = true", "[limits] max_turns = true must be an integer"),
        ('[limits]\nturn_deadline = "600"', '[limits] turn_deadline = "600" must be a number'),
        ("[limits]\nturns = 1", "[limits] turns is not a known key"),
        ('[mcp.hive]\ncommand = "sh"', '[mcp.hive]: the name "hive" is the hive\'s own server'),
        ('[mcp.Big]\ncommand = "sh"', '[mcp.Big]: the server name "Big" is invalid'),
        ('[mcp.a__b]\ncommand = "sh"', 'contains "__"'),
        ("[mcp.x]\nargs = []", "[mcp.x] command is missing"),
        (
            '[mcp.x]\ncommand = "no-such-server-xyz"',
            '[mcp.x] command = "no-such-server-xyz" is not found on PATH',
        ),
        ('[mcp.x]\ncommand = "/no/such/server"', "is not an executable file"),
        ('[mcp.x]\ncommand = "./server"', "is a relative path"),
        (
            '[mcp.x]\ncommand = "sh"\nrequired = "yes"',
            '[mcp.x] required = "yes" must be true or false',
        ),
        ('[mcp.x]\ncommand = "sh"\nallow = "*"', '[mcp.x] allow = "*" must be an array'),
        (
            '[mcp.x]\ncommand = "sh"\nallow = ["get state"]',
            '[mcp.x] allow[0] = "get state" is not a tool',
        ),
        ('[mcp.x]\ncommand = "sh"\nenv = { "1X" = "v" }', 'the variable name "1X" is invalid'),
        ('[mcp.x]\ncommand = "sh"\nenv = { X = 1 }', "[mcp.x] env.X = 1 must be a string"),
        ('[mcp.x]\ncommand = "sh"\nargs = [1]', "[mcp.x] args[0] = 1 must be a string"),
        ('[mcp.x]\ncommand = "sh"\nport = 1', "[mcp.x] port is not a known key"),
        ("model = ", "not valid TOML"),
    ],
)
def test_bad_configs_are_refused_with_key_and_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_agent_toml(text, source="agent.toml at abc1234")
    assert str(info.value).startswith("agent.toml at abc1234: ")
    assert message in str(info.value)


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError, match=r"3 problems: .*modle.*allow\[0\].*max_turns"):
        parse_agent_toml('modle = 1\n[bash]\nallow = ["*"]\n[limits]\nmax_turns = -1\n')


def test_command_resolution_is_injectable() -> None:
    text = '[mcp.x]\ncommand = "inside-the-container-only"\n'
    assert parse_agent_toml(text, resolve=None).mcp[0].command == "inside-the-container-only"
    with pytest.raises(ConfigError, match="not found on PATH"):
        parse_agent_toml(text, resolve=lambda _command: None)


@given(st.text(max_size=40))
def test_an_accepted_pattern_is_one_well_formed_rule(pattern: str) -> None:
    if bash_pattern_problem(pattern) is not None:
        return
    rule = f"Bash({pattern})"
    assert "," not in rule and "\n" not in rule and pattern == pattern.strip()
    depth = 0
    for ch in rule:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert pattern.strip("*: \t") != ""  # never "anything"


# -- the tool surface ----------------------------------------------------------------------


def test_allowed_tools_and_servers() -> None:
    config = parse_agent_toml(FULL)
    assert allowed_tools(config) == [
        HIVE_TOOLS,
        "Bash(git *)",
        "Bash(nix build .*)",
        "mcp__bitburner__*",
        "mcp__notes__get_state",
        "mcp__notes__put_state",
    ]
    assert allowed_tools(AgentConfig()) == ["mcp__hive__*"]
    servers = extra_servers(config)
    assert servers["bitburner"] == {
        "command": sys.executable,
        "args": ["--port", "0"],
        "env": {"KEY": "value"},
    }
    assert list(servers) == ["bitburner", "notes", "quiet"]
    hive = {"type": "http", "url": "http://127.0.0.1:1/mcp", "headers": {"Authorization": "x"}}
    merged = mcp_config(hive, config)
    assert list(merged["mcpServers"]) == ["hive", "bitburner", "notes", "quiet"]
    assert merged["mcpServers"]["hive"] == hive


def test_mcp_config_never_shadows_the_hive() -> None:
    rogue = AgentConfig(mcp=(McpServer("hive", "sh"),))
    with pytest.raises(ConfigError, match="the hive's own"):
        mcp_config({"type": "http", "url": "u"}, rogue)


def test_failed_required_servers() -> None:
    config = parse_agent_toml(FULL)
    reported = [McpServerStatus("hive", "connected"), McpServerStatus("bitburner", "failed")]
    assert failed_required(config, reported) == ["bitburner"]
    assert failed_required(config, [McpServerStatus("bitburner", "connected")]) == []
    assert failed_required(config, []) == ["bitburner"]
