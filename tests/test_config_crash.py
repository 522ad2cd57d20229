"""Crash safety of agents' config repositories and of carrying approvals out (issue 14).

A kill at any instant of creating a config repository, of applying a commit or of carrying out
an approval leaves nothing a restart cannot finish, and doing the same thing twice is doing it
once. On real git, real files, a real sqlite store: kills are simulated by a fault hook that
raises a ``BaseException`` (no cleanup handler runs, as with a kill) after step k, for every k,
and for real by SIGKILLing a subprocess at seeded random instants.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hive_actors.agent.configs import HIVE_AUTHOR, ConfigDesk, default_agent_toml
from hive_actors.agentconfig import ConfigRepo
from hive_actors.errors import Conflict
from hive_actors.hive import Hive
from hive_actors.paths import AgentPaths
from hive_actors.protocol import DecisionMade
from hive_actors.store import AgentState, ApprovalKind, EventKind, Role, Store
from hive_actors.supervisors.messages import WhichChildren
from tests.support.hive import hive_config, running_hive

AUTHOR = "hive <hive@localhost>"
DEFAULT = 'model = "sonnet"\n[bash]\nallow = ["git *"]\n'
FILES = {"agent.nix": "{ ... }: { }\n"}
WANTED = {"agent.toml": DEFAULT, **FILES}
GIT_ENV = {
    "PATH": os.environ["PATH"],
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "manager",
    "GIT_AUTHOR_EMAIL": "manager@hive",
    "GIT_COMMITTER_NAME": "manager",
    "GIT_COMMITTER_EMAIL": "manager@hive",
}

BUILD_STEPS = [
    "build: mkdir",
    "build: git init",
    "build: write agent.toml",
    "build: write agent.nix",
    "build: git add",
    "build: git commit",
    "build: initial ref",
    "build: fsync",
    "build: rename into place",
    "build: fsync config dir",
]
"""Making ``proposed/``, step by step."""

CHECKOUT_STEPS = [
    "checkout: mkdir",
    "checkout: git init",
    "checkout: fetch",
    "checkout: checkout",
    "checkout: fsync",
    "checkout: symlink",
    "checkout: swap applied",
    "checkout: fsync config dir",
]
"""Checking a commit out as ``applied/``, step by step."""

INIT_STEPS = BUILD_STEPS + CHECKOUT_STEPS
"""What a first init does, step by step (a kill may come after any of them)."""

APPLY_STEPS = [*CHECKOUT_STEPS, "checkout: sweep"]
"""What applying a new commit does, step by step."""


class Killed(BaseException):
    """A simulated kill: not an ``Exception``, so no cleanup handler of the code runs."""


def killer(at: int, seen: list[str] | None = None) -> Callable[[str], None]:
    """A fault hook that records each step and "kills" after the ``at``-th (0-based)."""
    steps = [] if seen is None else seen

    def hook(step: str) -> None:
        steps.append(step)
        if len(steps) - 1 == at:
            raise Killed(step)

    return hook


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], env=GIT_ENV, capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def new_repo(root: Path, name: str = "alice",
             fault: Callable[[str], None] | None = None) -> ConfigRepo:
    paths = AgentPaths.of(root, name).create()
    return ConfigRepo(paths) if fault is None else ConfigRepo(paths, fault=fault)


def assert_complete(
    repo: ConfigRepo, sha: str, wanted: dict[str, str] = WANTED, *, swept: bool = True
) -> None:
    """``proposed`` is a whole repository of the agent at its initial commit ``sha`` with
    exactly ``wanted``, ``applied`` checks ``sha`` out, and (``swept``) no build is left."""
    assert repo.head("proposed") == sha
    assert git(repo.proposed, "rev-parse", "refs/hive/initial") == sha
    assert git(repo.proposed, "branch", "--show-current") == "main"
    assert git(repo.proposed, "status", "--porcelain") == ""
    assert git(repo.proposed, "rev-list", "--count", "HEAD") == "1"
    assert f"Hive-Agent: {repo.name}" in git(repo.proposed, "log", "-1", "--format=%B")
    git(repo.proposed, "fsck", "--no-dangling", "--no-progress")
    tracked = git(repo.proposed, "ls-files").splitlines()
    assert sorted(tracked) == sorted(wanted)
    for rel, text in wanted.items():
        assert (repo.proposed / rel).read_text() == text
        assert (repo.applied / rel).read_text() == text
    assert repo.head("applied") == sha
    assert repo.applied.is_symlink()
    assert repo.applied_config().model == "sonnet"
    if swept:
        leftovers = sorted(p.name for p in repo.paths.config.iterdir() if p.name.startswith(
            (".proposed-", ".applied-link-")))
        assert leftovers == []


def one_line_refusal(exc: pytest.ExceptionInfo[Conflict], *parts: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for part in ("agent alice", *parts):
        assert part in text, text
    return text


# -- creation --------------------------------------------------------------------------------


def test_the_steps_of_creation_are_the_ones_the_kill_tests_cover(tmp_path: Path) -> None:
    seen: list[str] = []
    repo = new_repo(tmp_path, fault=seen.append)
    sha = repo.init(DEFAULT, AUTHOR, files=FILES)
    assert seen == INIT_STEPS
    assert_complete(repo, sha)


@pytest.mark.parametrize("at", range(len(INIT_STEPS)), ids=INIT_STEPS)
def test_a_kill_at_any_step_of_creation_is_finished_by_the_next_init(
    tmp_path: Path, at: int
) -> None:
    with pytest.raises(Killed):
        new_repo(tmp_path, fault=killer(at)).init(DEFAULT, AUTHOR, files=FILES)
    repo = new_repo(tmp_path)  # the restarted hive
    sha = repo.init(DEFAULT, AUTHOR, files=FILES)
    assert_complete(repo, sha)
    if at >= INIT_STEPS.index("build: rename into place"):
        # The repository was whole before the kill: it is kept (its commit), not redone.
        assert sha == git(repo.proposed, "rev-parse", "refs/hive/initial")
    link = os.readlink(repo.applied)
    assert repo.init(DEFAULT, AUTHOR, files=FILES) == sha  # and once more: nothing changes
    assert os.readlink(repo.applied) == link


def test_kills_in_a_row_at_random_steps_still_end_in_a_whole_repository(
    tmp_path: Path,
) -> None:
    rng = random.Random(14)
    for round_ in range(12):
        root = tmp_path / f"round{round_}"
        for kill in range(rng.randint(1, 3)):
            try:
                new_repo(root, fault=killer(rng.randrange(len(INIT_STEPS)))).init(
                    DEFAULT, AUTHOR, files=FILES)
            except Killed:
                continue
            # A run that finishes what a kill left has fewer steps: it may end first.
            assert kill > 0, "the first run has every step"
        repo = new_repo(root)
        assert_complete(repo, repo.init(DEFAULT, AUTHOR, files=FILES))


def test_a_completed_repository_keeps_the_managers_work_and_its_applied_commit(
    tmp_path: Path,
) -> None:
    repo = new_repo(tmp_path)
    initial = repo.init(DEFAULT, AUTHOR, files=FILES)
    (repo.proposed / "agent.toml").write_text(DEFAULT.replace("sonnet", "opus"))
    git(repo.proposed, "commit", "-qam", "manager edit")
    edited = git(repo.proposed, "rev-parse", "HEAD")
    repo.apply(edited)
    # init again (e.g. a spawn carried out twice, or another default model since): accepted.
    assert new_repo(tmp_path).init('model = "haiku"\n', AUTHOR) == initial
    assert repo.head("proposed") == edited and repo.head("applied") == edited


def test_an_unreviewed_head_is_never_what_a_finished_creation_applies(tmp_path: Path) -> None:
    """Killed before ``applied`` was made, then the manager committed: the next init checks
    out the initial commit, never the manager's unreviewed one."""
    with pytest.raises(Killed):
        new_repo(tmp_path, fault=killer(INIT_STEPS.index("build: fsync config dir"))).init(
            DEFAULT, AUTHOR, files=FILES)
    repo = new_repo(tmp_path)
    initial = git(repo.proposed, "rev-parse", "HEAD")
    (repo.proposed / "agent.toml").write_text(DEFAULT.replace("sonnet", "opus"))
    git(repo.proposed, "commit", "-qam", "unreviewed")
    assert repo.init(DEFAULT, AUTHOR, files=FILES) == initial
    assert repo.head("applied") == initial
    assert repo.applied_config().model == "sonnet"


# -- half-made repositories an earlier version left (it built proposed/ in place) -------------


def old_init_until(proposed: Path, stage: str, wanted: dict[str, str] = WANTED) -> None:
    """What the earlier init had done in place when it was killed at ``stage`` (the last of
    ``wanted``'s files cut short)."""
    proposed.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stage == "mkdir":
        return
    git(proposed, "init", "-q", "-b", "main")
    if stage == "git init":
        return
    *whole, (last, text) = wanted.items()
    for rel in wanted:
        (proposed / rel).parent.mkdir(parents=True, exist_ok=True)
    for rel, body in whole:
        (proposed / rel).write_text(body)
    (proposed / last).write_text(text[: len(text) // 2])  # a write cut short
    if stage == "files written":
        return
    git(proposed, "add", "-A")
    if stage == "git add":
        return
    (proposed / last).write_text(text)
    git(proposed, "commit", "-qam", "hive: initial configuration")
    assert stage == "committed"


@pytest.mark.parametrize("stage", ["mkdir", "git init", "files written", "git add", "committed"])
def test_a_half_made_repository_of_an_earlier_version_is_finished(
    tmp_path: Path, stage: str
) -> None:
    repo = new_repo(tmp_path)
    old_init_until(repo.proposed, stage)
    sha = repo.init(DEFAULT, AUTHOR, files=FILES)
    assert repo.head("proposed") == repo.head("applied") == sha
    assert repo.applied_config().model == "sonnet"
    if stage == "committed":
        # Its commit is what init writes: adopted as the initial commit, not redone.
        assert git(repo.proposed, "log", "-1", "--format=%s") == "hive: initial configuration"
        assert repo.init(DEFAULT, AUTHOR, files=FILES) == sha
    else:
        assert_complete(repo, sha)


def test_a_kill_while_a_half_made_repository_is_redone_is_finished_too(tmp_path: Path) -> None:
    wanted = {**WANTED, "prompts/extra.md": "be brief\n"}  # a file in a directory, cut short
    files = {rel: text for rel, text in wanted.items() if rel != "agent.toml"}
    repo = new_repo(tmp_path)
    old_init_until(repo.proposed, "git add", wanted)
    with pytest.raises(Killed):
        new_repo(tmp_path, fault=killer(0)).init(DEFAULT, AUTHOR, files=files)
    assert not repo.proposed.exists()  # moved aside, not yet removed
    sha = repo.init(DEFAULT, AUTHOR, files=files)
    assert_complete(repo, sha, wanted)


def test_a_git_dir_without_head_is_no_repository_even_inside_another(tmp_path: Path) -> None:
    """git must not take the repository around the state dir for a half-made one."""
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "x").write_text("x")
    git(tmp_path, "add", "x")
    git(tmp_path, "commit", "-qm", "the enclosing repository")
    repo = new_repo(tmp_path / "hive")
    (repo.proposed / ".git" / "objects").mkdir(parents=True)  # git init killed early
    sha = repo.init(DEFAULT, AUTHOR, files=FILES)
    assert_complete(repo, sha)


# -- what is refused ---------------------------------------------------------------------------


def test_a_repository_of_another_agent_is_refused(tmp_path: Path) -> None:
    bob = new_repo(tmp_path, "bob")
    bob.init(DEFAULT, AUTHOR)
    alice = new_repo(tmp_path)
    bob.proposed.rename(alice.proposed)
    with pytest.raises(Conflict) as info:
        alice.init(DEFAULT, AUTHOR)
    one_line_refusal(info, "belongs to agent bob", "move it away")
    assert (alice.proposed / ".git").is_dir()  # nothing was removed


def test_foreign_files_in_a_repository_without_commit_are_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    old_init_until(repo.proposed, "git init")
    (repo.proposed / "notes.md").write_text("mine\n")
    (repo.proposed / "agent.toml").write_text('model = "opus"\n')  # not what init writes
    with pytest.raises(Conflict) as info:
        repo.init(DEFAULT, AUTHOR, files=FILES)
    one_line_refusal(info, "no commit", "'agent.toml', 'notes.md'", "move them away")
    assert (repo.proposed / "notes.md").read_text() == "mine\n"


def test_files_without_git_and_a_plain_file_are_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    repo.proposed.mkdir()
    (repo.proposed / "agent.toml").write_text(DEFAULT)
    with pytest.raises(Conflict) as info:
        repo.init(DEFAULT, AUTHOR)
    one_line_refusal(info, "no git repository", "'agent.toml'", "move it away")
    (repo.proposed / "agent.toml").unlink()
    repo.proposed.rmdir()
    repo.proposed.write_text("x")
    with pytest.raises(Conflict) as info:
        repo.init(DEFAULT, AUTHOR)
    one_line_refusal(info, "not a directory")


def test_an_unmarked_commit_with_other_content_is_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    repo.proposed.mkdir()
    git(repo.proposed, "init", "-q", "-b", "main")
    (repo.proposed / "agent.toml").write_text('model = "opus"\n')
    git(repo.proposed, "add", "-A")
    git(repo.proposed, "commit", "-qm", "someone's")
    with pytest.raises(Conflict) as info:
        repo.init(DEFAULT, AUTHOR)
    one_line_refusal(info, "has a commit", "move it away")


# -- apply -------------------------------------------------------------------------------------


def edited(repo: ConfigRepo, model: str) -> str:
    (repo.proposed / "agent.toml").write_text(DEFAULT.replace("sonnet", model))
    git(repo.proposed, "commit", "-qam", f"use {model}")
    return git(repo.proposed, "rev-parse", "HEAD")


def test_the_steps_of_apply_are_the_ones_the_kill_tests_cover(tmp_path: Path) -> None:
    seen: list[str] = []
    repo = new_repo(tmp_path, fault=seen.append)
    repo.init(DEFAULT, AUTHOR, files=FILES)
    sha = edited(repo, "opus")
    seen.clear()
    repo.apply(sha)
    assert seen == APPLY_STEPS


@pytest.mark.parametrize("at", range(len(APPLY_STEPS)), ids=APPLY_STEPS)
def test_a_kill_at_any_step_of_apply_leaves_old_or_new_and_apply_again_finishes(
    tmp_path: Path, at: int
) -> None:
    repo = new_repo(tmp_path)
    old = repo.init(DEFAULT, AUTHOR, files=FILES)
    new = edited(repo, "opus")
    with pytest.raises(Killed):
        new_repo(tmp_path, fault=killer(at)).apply(new)
    swapped = at >= APPLY_STEPS.index("checkout: swap applied")
    assert repo.head("applied") == (new if swapped else old)
    assert repo.applied_config().model == ("opus" if swapped else "sonnet")
    assert repo.apply(new) == new
    assert repo.head("applied") == new and repo.applied_config().model == "opus"
    assert repo.init(DEFAULT, AUTHOR, files=FILES) == old  # init after it changes nothing
    assert repo.head("applied") == new
    checkouts = [p for p in repo.paths.config.iterdir() if p.name.startswith(".applied-")]
    assert checkouts == [repo.applied.resolve()]  # every leftover swept


def test_applying_twice_is_applying_once(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    repo.init(DEFAULT, AUTHOR, files=FILES)
    sha = edited(repo, "opus")
    repo.apply(sha)
    link = os.readlink(repo.applied)
    seen: list[str] = []
    assert new_repo(tmp_path, fault=seen.append).apply(sha) == sha
    assert seen == [] and os.readlink(repo.applied) == link


# -- a real kill -------------------------------------------------------------------------------

CHILD = """
import sys
from hive_actors.agentconfig import ConfigRepo
from hive_actors.paths import AgentPaths
repo = ConfigRepo(AgentPaths.of(sys.argv[1], "alice").create())
print("go", flush=True)
repo.init(sys.argv[2], "hive <hive@localhost>", files={"agent.nix": sys.argv[3]})
print("done", flush=True)
"""


def wait_for_orphans(root: Path, timeout: float = 30.0) -> None:
    """Wait (on pidfds, not by polling) for the processes working under ``root`` to end: the
    git children a SIGKILLed creation left (each runs in a session of its own)."""
    prefix = str(root.resolve()) + os.sep
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if (cwd + os.sep).startswith(prefix):
                pids.append(int(entry.name))
    end = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            assert ready, f"process {pid} under {root} did not end within {timeout:g}s"
        finally:
            os.close(fd)


def test_sigkill_at_random_instants_of_creation_leaves_a_repository_init_finishes(
    tmp_path: Path,
) -> None:
    """A subprocess creates the repository and is SIGKILLed at a seeded random instant in
    its run; creation afterwards succeeds and is whole, every time."""
    probe = new_repo(tmp_path / "probe")
    began = time.monotonic()
    probe.init(DEFAULT, AUTHOR, files=FILES)
    span = (time.monotonic() - began) * 1.3  # a kill instant anywhere in a typical run
    rng = random.Random(1414)
    cwd = Path(__file__).resolve().parent.parent
    deadline = time.monotonic() + 60.0
    midway = 0
    runs = 0
    while runs < 20 and time.monotonic() < deadline:
        root = tmp_path / f"run{runs}"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), DEFAULT, FILES["agent.nix"]],
            cwd=cwd, stdout=subprocess.PIPE, text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "go\n"
        time.sleep(rng.uniform(0.0, span))  # the kill's instant, not a wait for a condition
        child.send_signal(signal.SIGKILL)
        out = child.stdout.read()
        child.wait(timeout=30)
        child.stdout.close()
        repo = new_repo(root)
        if "done" not in out and (repo.proposed.exists() or any(
            p.name.startswith((".proposed-", ".applied-")) for p in repo.paths.config.iterdir()
        )):
            midway += 1  # killed with something on disk and the creation not done
        # At once, as a restarted hive would (the killed run's git may still be running) …
        sha = repo.init(DEFAULT, AUTHOR, files=FILES)
        assert_complete(repo, sha, swept=False)
        # … and once its leftovers are done: init again changes nothing and sweeps them.
        wait_for_orphans(root)
        assert repo.init(DEFAULT, AUTHOR, files=FILES) == sha
        assert_complete(repo, sha)
        runs += 1
    assert runs >= 5, f"only {runs} runs in the time bound"
    assert midway >= 1, f"no kill of {runs} landed mid-creation: the test proved nothing"


# -- carrying approvals out (real store) -------------------------------------------------------


def test_carrying_an_approval_out_twice_is_carrying_it_out_once(tmp_path: Path) -> None:
    hive = Hive(hive_config(tmp_path, "http://127.0.0.1:9"))
    desk = ConfigDesk(hive)
    with hive.open_store() as store:
        store.registry.register("boss", role=Role.MANAGER)
        spawn = store.approvals.request(ApprovalKind.SPAWN, "dora", requested_by="boss")
        spawn = store.approvals.decide(spawn.id, True, "operator")
    # A kill during the first carrying-out left dora's repository half made (no commit).
    paths = hive.agent_paths("dora").create()
    old_init_until(paths.config / "proposed", "git init")
    desk.prepare(spawn)
    repo = desk.repo("dora")
    sha = repo.head("applied")
    link = os.readlink(repo.applied)
    desk.prepare(spawn)  # the hive went down before the outcome was recorded: again
    assert repo.head("proposed") == repo.head("applied") == sha
    assert os.readlink(repo.applied) == link
    assert repo.applied_config().model == hive.config.model.default
    # A config commit, approved, carried out twice.
    (repo.proposed / "agent.toml").write_text('model = "claude-haiku-test"\n')
    git(repo.proposed, "commit", "-qam", "a smaller model")
    ref = git(repo.proposed, "rev-parse", "HEAD")
    with hive.open_store() as store:
        apply = store.approvals.request(ApprovalKind.APPLY_COMMIT, "dora", ref=ref,
                                        requested_by="boss")
        apply = store.approvals.decide(apply.id, True, "operator")
    desk.prepare(apply)
    link = os.readlink(repo.applied)
    desk.prepare(apply)
    assert repo.head("applied") == ref and os.readlink(repo.applied) == link
    assert repo.applied_config().model == "claude-haiku-test"


def test_a_spawn_whose_creation_was_killed_starts_when_the_hive_starts_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator's report: a spawn approved just before a kill -9, killed while the
    repository was being created, never started (Conflict: already exists). Now it starts,
    and the approval is carried out once, even when its decision is told again."""
    config = hive_config(tmp_path, "http://127.0.0.1:9")
    Path(config.state_dir).mkdir(parents=True)
    with Store.open(config.db_path) as store:
        store.registry.register("boss", role=Role.MANAGER)
        spawn = store.approvals.request(ApprovalKind.SPAWN, "dora", requested_by="boss")
        store.approvals.decide(spawn.id, True, "operator")
    paths = AgentPaths.of(config.state_dir, "dora").create()
    wanted = {"agent.toml": default_agent_toml("dora", "claude-sonnet-test")}
    old_init_until(paths.config / "proposed", "files written", wanted)
    with running_hive(tmp_path, {}) as (daemon, _root, _model, events):
        done = events.wait_for(lambda e: e.kind == EventKind.APPROVAL_CARRIED_OUT)
        assert done.payload["outcome"] == "carried out when the hive started again"
        events.wait_for(lambda e: e.kind == EventKind.AGENT_STATE and e.agent == "dora"
                        and e.payload.get("to") == "idle")
        repo = ConfigRepo(daemon.hive.agent_paths("dora"))
        assert repo.applied_config().model == "claude-sonnet-test"
        assert repo.read_toml("HEAD") == default_agent_toml("dora", "claude-sonnet-test")
        assert HIVE_AUTHOR.split(" <")[0] == git(repo.proposed, "log", "-1", "--format=%an")
        with daemon.hive.open_store() as store:
            carried = store.approvals.get(spawn.id)
            assert carried.outcome == done.payload["outcome"]
            assert store.approvals.outstanding() == []
        # The decision told again (as when it is also found outstanding at start): nothing.
        agents = daemon.hive.directory.get("agents")
        agents.tell(DecisionMade(carried))
        agents.ask(WhichChildren(), timeout=30)  # handled after the DecisionMade
        assert "could not be carried out" not in caplog.text
        with daemon.hive.open_store() as store:
            assert store.approvals.get(spawn.id) == carried
            assert store.registry.get("dora").state is AgentState.IDLE
