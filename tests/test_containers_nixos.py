"""The nixos backend against the recording ``nixos-container`` stand-in (NixOS cannot run
here): the exact command lines, their environment, the files it writes, and its errors."""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import select
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hive_actors.agentconfig import ConfigRepo
from hive_actors.agentconfig.schema import parse_agent_toml
from hive_actors.containers import ContainerExit, ContainerSpec, NixosBackend
from hive_actors.containers.nixconf import host_conf, render_flake_nix
from hive_actors.containers.nixrender import repo_files
from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound, StartFailure
from hive_actors.paths import AgentPaths

TIMEOUT = float(os.environ.get("HIVE_TEST_TIMEOUT", "10"))
STANDINS = Path(__file__).parent / "standins"


@dataclass
class World:
    backend: NixosBackend
    home: Path
    path: str
    state_dir: Path

    @property
    def log(self) -> list[dict[str, Any]]:
        log = self.home / "nixos-container-standin" / "log.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [entry["argv"] for entry in self.log]

    @property
    def conf_dir(self) -> Path:
        return self.home / "nixos-container-standin" / "conf"

    def paths(self, name: str = "alice") -> AgentPaths:
        return AgentPaths.of(self.state_dir, name)

    def repo(self, name: str = "alice") -> ConfigRepo:
        """The agent's config repository with the default flake, as a spawn draft makes it."""
        repo = ConfigRepo(self.paths(name).create(), resolve=None)
        repo.init(
            'model = "sonnet"\n',
            "hive <hive@localhost>",
            files=repo_files(name, "agent", parse_agent_toml("", resolve=None)),
        )
        return repo


@pytest.fixture
def world(tmp_path: Path) -> World:
    home = tmp_path / "host-home"
    home.mkdir()
    path = f"{STANDINS}:{os.environ['PATH']}"
    state_dir = tmp_path / "hive"
    backend = NixosBackend(
        state_dir,
        conf_dir=home / "nixos-container-standin" / "conf",
        # The host's environment, with a secret that must never reach nixos-container.
        host_env={"PATH": path, "HOME": str(home), "ANTHROPIC_API_KEY": "sk-secret", "LANG": "x"},
        command_timeout_s=TIMEOUT,
        build_timeout_s=TIMEOUT,
    )
    return World(backend, home, path, state_dir)


@pytest.fixture
def exits(world: World) -> Iterator[queue.Queue[ContainerExit]]:
    q: queue.Queue[ContainerExit] = queue.Queue()
    unsubscribe = world.backend.subscribe(q.put)
    yield q
    unsubscribe()


def test_create_runs_the_exact_command_and_writes_the_host_conf(world: World) -> None:
    repo = world.repo()
    world.backend.create("alice", ContainerSpec(env={"SPEC_VAR": "1"}))
    [entry] = world.log
    assert entry["argv"] == ["create", "alice", "--flake", f"{repo.applied}#alice"]
    assert "--ensure-unique-name" not in entry["argv"]
    # A fixed environment: the host's PATH and HOME, the C locale, nothing else.
    assert entry["env"] == {"PATH": world.path, "HOME": str(world.home), "LC_ALL": "C"}
    conf = (world.conf_dir / "alice.conf").read_text().splitlines()
    state = world.paths().state
    assert conf == [
        "HOST_BRIDGE=",
        "HOST_PORT=",
        "AUTO_START=0",
        f"FLAKE={repo.applied}",
        "# hive_actors: host network, unprivileged, /state from the host",
        "PRIVATE_NETWORK=0",
        "PRIVATE_USERS=pick",
        f'EXTRA_NSPAWN_FLAGS="--bind={state}:/state:idmap"',
    ]
    assert world.backend.status("alice").state == "stopped"
    with pytest.raises(Conflict, match="already exists"):
        world.backend.create("alice", ContainerSpec())


def test_lifecycle_commands(world: World, tmp_path: Path) -> None:
    world.repo()
    backend = world.backend
    backend.create("alice", ContainerSpec(env={"SPEC_VAR": "from-spec"}))
    backend.start("alice")
    assert world.argvs()[-1] == ["start", "alice"]
    assert backend.status("alice").state == "running"
    assert world.argvs()[-1] == ["status", "alice"]

    script = "import os; e = os.environ; print(e['SPEC_VAR'], e['CALL'], e['HOME'], os.getcwd())"
    proc = backend.exec("alice", [sys.executable, "-c", script], {"CALL": "c"}, cwd=str(tmp_path))
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out.decode().split() == ["from-spec", "c", "/root", str(tmp_path)]
    run = world.log[-1]
    # Names and paths only: the values travel in an environment file the launcher reads.
    assert_launcher(run["argv"])
    assert run["argv"][8:] == [str(tmp_path), sys.executable, "-c", script]
    assert "ANTHROPIC_API_KEY" not in run["env"]
    # Without a cwd, processes start in /state (the bind mount of the agent's state dir).
    proc = backend.exec("alice", ["true"])
    proc.communicate(timeout=TIMEOUT)
    assert_launcher(world.argvs()[-1])
    assert world.argvs()[-1][8:] == ["/state", "true"]

    assert backend.stop("alice") is None  # the exit comes from the D-Bus watcher
    assert world.argvs()[-1] == ["stop", "alice"]
    assert backend.status("alice").state == "stopped"
    # Exec in a stopped container fails the way the real CLI does; the launcher never ran,
    # so the host deletes the environment file once the process is reaped.
    proc = backend.exec("alice", ["true"])
    [env_file] = env_files(world)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0 and b"main PID" in err
    assert not env_file.exists() and env_files(world) == []

    (world.paths().state / "notes.md").write_text("kept")
    backend.destroy("alice", keep_state=True)
    assert world.argvs()[-2:] == [["status", "alice"], ["destroy", "alice"]]
    assert not (world.conf_dir / "alice.conf").exists()
    assert sorted(p.name for p in world.paths().root.iterdir()) == ["state"]
    assert backend.status("alice").state == "absent"
    backend.destroy("alice", keep_state=False)
    assert not world.paths().root.exists()


def assert_launcher(argv: list[str]) -> None:
    """``run NAME -- /bin/sh -c LAUNCHER hive-env /state/.hive-run/env-<random> DIR …``."""
    assert argv[:5] == ["run", "alice", "--", "/bin/sh", "-c"]
    assert argv[6] == "hive-env"
    assert re.fullmatch(r"/state/\.hive-run/env-[0-9a-f]{32}", argv[7]), argv[7]


def env_files(world: World, name: str = "alice") -> list[Path]:
    run_dir = world.paths(name).state / ".hive-run"
    return sorted(run_dir.glob("env-*")) if run_dir.exists() else []


def read_line(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert readable, f"no output within {TIMEOUT}s"
    return proc.stdout.readline()


def command_lines() -> dict[int, bytes]:
    """Every process's argv this user can read, as /proc shows it to any local user."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                pass  # gone meanwhile
    return found


def test_exec_keeps_secrets_out_of_every_command_line(world: World) -> None:
    world.repo()
    backend = world.backend
    backend.create("alice", ContainerSpec(env={"SPEC_TOKEN": "spec-" + secrets.token_hex(8)}))
    backend.start("alice")
    state = world.paths().state
    token = secrets.token_hex(16)
    # Whatever sh, the file's quoting or a line-based format could get wrong.
    secret = f"sk-{token} it's \"q\" $HOME `id` $(id) \\ '' \n line2\t'end'\n\n"
    env = {"ANTHROPIC_API_KEY": secret, "AWS_SECRET_ACCESS_KEY": "'", "EMPTY": ""}
    os.mkfifo(state / "go")
    script = (
        'printf %s "$ANTHROPIC_API_KEY" > key.out; printf %s "$AWS_SECRET_ACCESS_KEY" > aws.out; '
        'printf %s "${EMPTY-unset}" > empty.out; printf %s "$SPEC_TOKEN" > spec.out; '
        'pwd > cwd.out; echo ready; read x < go'
    )
    proc = backend.exec("alice", ["sh", "-c", script], env)
    try:
        assert read_line(proc) == b"ready\n"
        # The command runs: the launcher has deleted the environment file already.
        assert env_files(world) == []
        lines = command_lines()
        # The scan saw the command itself (the stand-in's exec chain ends in it) ...
        assert lines[proc.pid] == b"\0".join([b"sh", b"-c", script.encode()]) + b"\0"
        # ... and no process shows the secret (nor the spec's variable) in its argv.
        leaks = {pid: line for pid, line in lines.items() if token.encode() in line}
        assert leaks == {}
        spec_value = world.log[-1]["argv"]
        assert not any("spec-" in arg for arg in spec_value)
    finally:
        # Read-write: never blocks, and holds the line until the command opens the fifo.
        fd = os.open(state / "go", os.O_RDWR)
        try:
            os.write(fd, b"\n")
            _, err = proc.communicate(timeout=TIMEOUT)
        finally:
            os.close(fd)
    assert proc.returncode == 0, err
    assert (state / "key.out").read_text() == secret
    assert (state / "aws.out").read_text() == "'"
    assert (state / "empty.out").read_text() == ""
    assert (state / "spec.out").read_text().startswith("spec-")
    # Without a cwd: /state, which the stand-in maps to the agent's state dir.
    assert Path((state / "cwd.out").read_text().strip()).resolve() == state.resolve()
    assert env_files(world) == []
    # Nothing of it reached nixos-container's command line or environment either.
    log = (world.home / "nixos-container-standin" / "log.jsonl").read_text()
    assert token not in log


def test_exec_in_a_named_directory(world: World) -> None:
    world.repo()
    world.backend.create("alice", ContainerSpec())
    world.backend.start("alice")
    state = world.paths().state
    (state / "work dir").mkdir()
    proc = world.backend.exec("alice", ["sh", "-c", "pwd"], cwd="/state/work dir")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert Path(out.decode().strip()).resolve() == (state / "work dir").resolve()
    # A directory that is not there: the launcher refuses to run the command anywhere else.
    proc = world.backend.exec("alice", ["sh", "-c", "echo ran"], cwd="/state/missing")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 126 and out == b"" and b"missing" in err
    assert env_files(world) == []


def test_the_environment_file_is_private_and_cleaned_up(world: World) -> None:
    world.repo()
    world.backend.create("alice", ContainerSpec())
    argv, leftover = world.backend.run_argv("alice", ["true"], {"K": "it's"})
    [env_file] = env_files(world)
    assert argv[8] == f"/state/.hive-run/{env_file.name}"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    assert env_file.read_text().endswith("K='it'\\''s'\n")
    assert "it's" not in argv
    leftover()
    leftover()  # idempotent
    assert env_files(world) == []


def test_exec_refuses_bad_variable_names(world: World) -> None:
    world.repo()
    world.backend.create("alice", ContainerSpec())
    world.backend.start("alice")
    before = len(world.log)
    for bad in ("BAD-KEY", "1X", "A B", "X=Y", ""):
        with pytest.raises(ConfigError, match=r"variable name .* is invalid"):
            world.backend.exec("alice", ["true"], {bad: "v"})
    with pytest.raises(ConfigError, match="'UID' is reserved by the container's shell"):
        world.backend.exec("alice", ["true"], {"UID": "0"})
    with pytest.raises(ConfigError, match="without NUL"):
        world.backend.exec("alice", ["true"], {"K": "a\0b"})
    assert len(world.log) == before and env_files(world) == []


def test_exec_does_not_follow_a_link_in_the_state_dir(world: World, tmp_path: Path) -> None:
    """The agent owns its state dir: a .hive-run link must not send the file elsewhere."""
    world.repo()
    world.backend.create("alice", ContainerSpec())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (world.paths().state / ".hive-run").symlink_to(elsewhere)
    with pytest.raises(HiveError, match=r"\.hive-run must be a directory"):
        world.backend.exec("alice", ["true"], {"SECRET": "x"})
    assert list(elsewhere.iterdir()) == []


def test_destroy_refuses_a_running_container(world: World) -> None:
    world.repo()
    world.backend.create("alice", ContainerSpec())
    world.backend.start("alice")
    with pytest.raises(Conflict, match="stop it before destroying"):
        world.backend.destroy("alice", keep_state=False)
    assert ["destroy", "alice"] not in world.argvs()


def test_start_rebuilds_after_an_apply(world: World) -> None:
    repo = world.repo()
    world.backend.create("alice", ContainerSpec())
    world.backend.start("alice")
    assert ["update", "alice", "--flake", f"{repo.applied}#alice"] not in world.argvs()
    world.backend.stop("alice")
    # The manager commits a change, the operator approves: applied moves.
    (repo.proposed / "agent.nix").write_text("{ ... }: { }\n")
    env = {
        "PATH": os.environ["PATH"],
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "manager",
        "GIT_AUTHOR_EMAIL": "m@hive",
        "GIT_COMMITTER_NAME": "manager",
        "GIT_COMMITTER_EMAIL": "m@hive",
    }
    subprocess.run(
        ["git", "-C", str(repo.proposed), "commit", "-qam", "smaller"], env=env, check=True
    )
    repo.apply("HEAD")
    world.backend.start("alice")
    assert world.argvs()[-2:] == [
        ["update", "alice", "--flake", f"{repo.applied}#alice"],
        ["start", "alice"],
    ]
    world.backend.stop("alice")
    world.backend.start("alice")
    assert world.argvs()[-2:] == [["stop", "alice"], ["start", "alice"]]  # no second rebuild


def test_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    backend = NixosBackend(tmp_path / "hive", host_env={"PATH": str(empty)})
    with pytest.raises(ConfigError) as info:
        backend.status("alice")
    message = str(info.value)
    assert "nixos-container is not on PATH" in message
    assert 'set [hive] backend = "process"' in message
    with pytest.raises(ConfigError, match="not on PATH"):
        backend.exec("alice", ["true"])


def test_create_needs_a_flake(world: World) -> None:
    with pytest.raises(ConfigError, match="has no flake.nix"):
        world.backend.create("alice", ContainerSpec())
    assert world.log == []
    assert world.backend.status("alice").state == "absent"


def test_command_failures_carry_the_cli_message(world: World) -> None:
    with pytest.raises(NotFound, match="create it first"):
        world.backend.start("alice")
    world.repo()
    world.backend.create("alice", ContainerSpec())
    # The hive lost its record but the container is still there: the CLI's refusal surfaces.
    (world.paths().root / "container.json").unlink()
    with pytest.raises(Conflict, match="already exists.*journalctl -u container@alice"):
        world.backend.create("alice", ContainerSpec())


def test_report_marks_a_requested_stop_expected(
    world: World, exits: queue.Queue[ContainerExit]
) -> None:
    world.repo()
    backend = world.backend
    backend.create("alice", ContainerSpec())
    backend.start("alice")
    crash = ContainerExit("alice", "signal", None, 9, 1.0, expected=False)
    backend.report(crash)
    assert exits.get(timeout=TIMEOUT) == crash
    backend.stop("alice")
    backend.report(crash)
    assert exits.get(timeout=TIMEOUT).expected is True
    backend.start("alice")
    backend.report(crash)
    assert exits.get(timeout=TIMEOUT).expected is False


def test_a_hung_command_is_killed_at_its_deadline(tmp_path: Path) -> None:
    """An injected fault: a CLI that never answers. The whole command group goes."""
    pidfile = tmp_path / "child.pid"
    hung = tmp_path / "nixos-container"
    hung.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {pidfile}\nwait\n")
    hung.chmod(hung.stat().st_mode | stat.S_IXUSR)
    backend = NixosBackend(
        tmp_path / "hive",
        command=str(hung),
        host_env={"PATH": os.environ["PATH"]},
        command_timeout_s=1.0,
    )
    with pytest.raises(HiveError, match="did not finish within 1s"):
        backend.status("alice")
    # Its background child (not ours to reap: init's) was killed with it.
    assert_exits(int(pidfile.read_text()))


def assert_exits(pid: int) -> None:
    """Wait (bounded) until ``pid`` has exited, on a pidfd rather than a sleep loop."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # exited and reaped already
    try:
        readable, _, _ = select.select([pidfd], [], [], TIMEOUT)
        assert readable, f"process {pid} still runs {TIMEOUT}s after the deadline"
    finally:
        os.close(pidfd)


def test_start_failure(world: World) -> None:
    world.repo()
    world.backend.create("alice", ContainerSpec())
    (world.conf_dir / "alice.conf").unlink()  # the CLI no longer knows it
    with pytest.raises(StartFailure, match="does not exist"):
        world.backend.start("alice")


def test_host_conf_refuses_paths_nspawn_cannot_carry() -> None:
    created = "PRIVATE_NETWORK=1\nHOST_ADDRESS=10.233.1.1\nFLAKE=/x\n"
    assert (
        host_conf(created, state=Path("/var/lib/hive/agents/a/state")).splitlines()[0] == "FLAKE=/x"
    )
    for bad in ("/var/lib/my hive/state", "/a:b/state", "relative/state", '/a"b'):
        with pytest.raises(ConfigError, match="state directory"):
            host_conf(created, state=Path(bad))


def test_the_default_flake_names_the_agent() -> None:
    text = render_flake_nix("web-2")
    assert 'nixosConfigurations."web-2"' in text and "./agent.nix" in text
    assert "boot.isContainer = true;" in text


def test_pty_shell_goes_through_run(world: World) -> None:
    world.repo()
    world.backend.create("alice", ContainerSpec())
    world.backend.start("alice")
    state = world.paths().state
    pid, master = world.backend.pty_shell("alice")
    try:
        os.write(master, b'echo "$TERM" > term.out; pwd > cwd.out; exit 3\n')
        while True:  # until the shell hangs up (EIO), bounded
            readable, _, _ = select.select([master], [], [], TIMEOUT)
            assert readable, "the shell did not exit"
            try:
                if not os.read(master, 4096):
                    break
            except OSError:
                break
        world.backend.release_shell("alice", pid)
    finally:
        os.close(master)
    argv = world.argvs()[-1]
    assert_launcher(argv)
    assert argv[8:] == ["/state", "bash", "-l"]
    # The shell ran in /state (the stand-in's mapping of it) with its TERM, from the file.
    assert (state / "term.out").read_text() == "xterm-256color\n"
    assert Path((state / "cwd.out").read_text().strip()).resolve() == state.resolve()
    assert env_files(world) == []


def test_inside_names_state_paths_as_the_container_sees_them(world: World) -> None:
    state = world.paths().state
    assert world.backend.inside("alice", state) == "/state"
    inner = world.backend.inside("alice", state / ".hive-run" / "x.json")
    assert inner == "/state/.hive-run/x.json"
    with pytest.raises(ConfigError, match=r"outside the agent's state dir .*\(at /state\)"):
        world.backend.inside("alice", world.paths().config)
    with pytest.raises(ConfigError, match="outside"):
        world.backend.inside("alice", state.parent / "state-other")
