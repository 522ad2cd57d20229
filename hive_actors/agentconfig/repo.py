"""An agent's config repository: ``config/proposed`` (git, edited by the manager) and
``config/applied`` (what runs: a checkout of an approved commit of proposed).

::

    <agent>/config/
        proposed/                  the manager's working tree (git, branch main)
        applied -> .applied-<sha>-<nonce>    a symlink, swapped atomically by apply()
        .applied-<sha>-<nonce>/    a clone of proposed checked out (detached) at the commit
        .lock                      serialises init/apply across ConfigRepo instances

**Atomic apply**: the approved commit is fetched into a fresh directory and checked out there,
then a new symlink is renamed over ``applied``: a crash leaves ``applied`` at the old commit or
the new one, never half. The old checkout is removed afterwards (and leftovers on the next apply).

**Git runs with an explicit environment** (no user or system config, C locale, no prompts) and a
deadline; the repository is written by an agent, so nothing in it may run code on the host:
hooks, fsmonitor, external diff drivers and textconv are off, symlinks are checked out as plain
files, and ``agent.toml`` is read as a blob (``git cat-file``), never through the working tree.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Literal

from hive_actors.agentconfig.schema import (
    AgentConfig,
    CommandResolver,
    parse_agent_toml,
    resolve_command,
)
from hive_actors.errors import ConfigError, Conflict, HiveError, NotFound
from hive_actors.paths import AgentPaths

__all__ = ["AGENT_TOML", "ConfigRepo"]

log = logging.getLogger(__name__)

AGENT_TOML = "agent.toml"
"""The hive settings file at the root of every agent's config repository."""

_BRANCH = "main"
_AUTHOR = re.compile(r"([^<>\n]*[^<>\s])\s*<([^<>\s]+)>")
_REF_BAD = re.compile(r"[\x00-\x20\x7f]")
_MAX_REF = 256
_LOCK_POLL_S = 0.05
# Settings passed with -c (protected configuration: the repository's own .git/config cannot
# override them), which also reach every git child process through GIT_CONFIG_PARAMETERS.
_SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.symlinks=false",
    "core.pager=cat",
    "commit.gpgSign=false",
    "gc.auto=0",
    "safe.directory=*",  # the manager's container may map the owner to another uid
    "init.defaultBranch=" + _BRANCH,
)


class ConfigRepo:
    """One agent's config repository (see the module docstring). Thread-safe."""

    def __init__(
        self,
        paths: AgentPaths,
        *,
        timeout_s: float = 60.0,
        git: str = "git",
        resolve: CommandResolver | None = resolve_command,
        host_env: Mapping[str, str] | None = None,
        max_diff_bytes: int = 1_000_000,
    ) -> None:
        """``resolve`` checks the MCP server commands when a config is validated (None: not
        checked, e.g. when the commands live inside a NixOS container); ``timeout_s`` bounds
        each git call; ``max_diff_bytes`` caps :meth:`diff`."""
        if not timeout_s > 0:
            raise ConfigError(f"config repo: timeout_s must be > 0, got {timeout_s}")
        self.paths = paths
        self.name = paths.root.name
        self.proposed = paths.config / "proposed"
        self.applied = paths.config / "applied"
        self._timeout_s = timeout_s
        self._git = git
        self._resolve = resolve
        self._max_diff = max_diff_bytes
        host = dict(os.environ if host_env is None else host_env)
        self._env = {
            "PATH": host.get("PATH", os.defpath),
            "LC_ALL": "C",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ATTR_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_PAGER": "cat",
        }
        self._lock = threading.RLock()

    # -- reading ---------------------------------------------------------------------------

    def applied_exists(self) -> bool:
        """Whether ``applied`` points at a checkout."""
        return (self.applied / ".git").is_dir()

    def head(self, which: Literal["proposed", "applied"]) -> str:
        """The commit ``proposed``'s HEAD (the manager's branch) or ``applied`` is at."""
        if which == "proposed":
            self._require_proposed()
            return self._rev_parse(self.proposed, "HEAD", "config/proposed has no commit")
        if which == "applied":
            with self._lock:  # not while this instance swaps and removes checkouts
                if not self.applied_exists():
                    raise NotFound(
                        f"agent {self.name}: no applied config at '{self.applied}': init the "
                        "repository or apply a commit"
                    )
                return self._rev_parse(self.applied, "HEAD", "config/applied has no commit")
        raise ConfigError(f"head({which!r}): use 'proposed' or 'applied'")

    def resolve(self, ref: str) -> str:
        """The full commit id ``ref`` names in proposed; NotFound for anything that is not a
        commit there (an unknown name, a tree or blob id, an option-looking string)."""
        self._require_proposed()
        if (
            not isinstance(ref, str)
            or not ref
            or len(ref) > _MAX_REF
            or ref.startswith("-")
            or _REF_BAD.search(ref)
        ):
            raise NotFound(
                f"agent {self.name}: {ref!r} is not a commit reference: give a commit id or a "
                "branch of config/proposed"
            )
        return self._rev_parse(
            self.proposed, ref, f"{ref!r} is not a commit of config/proposed ('{self.proposed}')"
        )

    def read_toml(self, ref: str) -> str:
        """``agent.toml`` as committed at ``ref`` (read from git, not the working tree)."""
        sha = self.resolve(ref)
        return self._blob(self.proposed, sha)

    def load(self, ref: str) -> AgentConfig:
        """``agent.toml`` at ``ref``, validated (ConfigError naming the commit, key, reason)."""
        sha = self.resolve(ref)
        return self._parse(self._blob(self.proposed, sha), sha)

    def applied_config(self) -> AgentConfig:
        """The validated ``agent.toml`` of the applied commit: what the agent runs with."""
        with self._lock:
            sha = self.head("applied")
            text = self._blob(self.applied, sha)
        return self._parse(text, sha)

    def diff(self, ref: str) -> str:
        """The change from the applied commit to ``ref``, as the operator reviews it (new,
        removed and renamed files included); capped at ``max_diff_bytes``."""
        sha = self.resolve(ref)
        base = self.head("applied")
        out = self._run(
            self.proposed,
            ["diff", "--no-ext-diff", "--no-textconv", "--no-color", "-M", base, sha, "--"],
            what=f"diff {base[:7]}..{sha[:7]}",
        )
        if len(out) > self._max_diff:
            cut = out[: self._max_diff]
            return cut + (
                f"\n[diff truncated at {self._max_diff} bytes: run 'git diff {base} {sha}' in "
                f"{self.proposed} for the rest]\n"
            )
        return out

    # -- writing ---------------------------------------------------------------------------

    def init(
        self,
        default_toml: str,
        author: str,
        *,
        files: Mapping[str, str] | None = None,
        message: str = "hive: initial configuration",
    ) -> str:
        """Create ``proposed`` with one commit (``agent.toml`` = ``default_toml``, plus
        ``files``, e.g. ``agent.nix`` and ``flake.nix``) by ``author`` ("Name <email>"), and
        check ``applied`` out at it. Returns the commit. Conflict if the repository exists."""
        author_env = _author_env(author)
        extra = dict(files or {})
        for rel in extra:
            _check_rel_path(rel)
        if AGENT_TOML in extra:
            raise ConfigError("init: give agent.toml as default_toml, not in files")
        # The default must itself be valid, or the agent could never start.
        parse_agent_toml(default_toml, source="agent.toml (default)", resolve=self._resolve)
        with self._exclusive():
            if self.proposed.exists() and any(self.proposed.iterdir()):
                raise Conflict(
                    f"agent {self.name}: config repository '{self.proposed}' already exists: "
                    "use it, or destroy the agent first"
                )
            self.proposed.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._run(self.proposed, ["init", "-q", "-b", _BRANCH], what="init")
            for rel, text in {AGENT_TOML: default_toml, **extra}.items():
                target = self.proposed / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            self._run(self.proposed, ["add", "-A"], what="add")
            self._run(
                self.proposed,
                ["commit", "-q", "--no-verify", "-m", message],
                what="commit",
                extra_env=author_env,
            )
            sha = self._rev_parse(self.proposed, "HEAD", "the initial commit is missing")
            self._checkout(sha)
        log.info("agent %s: config repository created at %s", self.name, sha[:7])
        return sha

    def apply(self, ref: str) -> str:
        """Validate ``agent.toml`` at ``ref`` and move ``applied`` there atomically; returns
        the commit. ConfigError (nothing changed) when the config is invalid."""
        sha = self.resolve(ref)
        self._parse(self._blob(self.proposed, sha), sha)
        with self._exclusive():
            if self.applied_exists() and self.head("applied") == sha:
                return sha
            self._checkout(sha)
        log.info("agent %s: applied config %s", self.name, sha[:7])
        return sha

    # -- internals -------------------------------------------------------------------------

    def _parse(self, text: str, sha: str) -> AgentConfig:
        return parse_agent_toml(text, source=f"{AGENT_TOML} at {sha[:7]}", resolve=self._resolve)

    def _require_proposed(self) -> None:
        git_dir = self.proposed / ".git"
        if git_dir.is_symlink() or not git_dir.is_dir():
            raise NotFound(
                f"agent {self.name}: no config repository at '{self.proposed}' (its .git must be "
                "a directory): create it with a spawn draft"
            )

    def _rev_parse(self, repo: Path, ref: str, missing: str) -> str:
        proc = self._call(
            repo, ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"]
        )
        sha = proc.stdout.decode("ascii", errors="replace").strip()
        if proc.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", sha):
            raise NotFound(f"agent {self.name}: {missing}")
        return sha

    def _blob(self, repo: Path, sha: str) -> str:
        proc = self._call(repo, ["cat-file", "blob", f"{sha}:{AGENT_TOML}"])
        if proc.returncode != 0:
            raise NotFound(
                f"{AGENT_TOML} at {sha[:7]}: no such file in the commit: commit one at the root "
                "of config/proposed"
            )
        try:
            return proc.stdout.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{AGENT_TOML} at {sha[:7]}: not UTF-8 text (byte {exc.start}): save it as UTF-8"
            ) from exc

    def _checkout(self, sha: str) -> None:
        """Fetch ``sha`` into a new directory, check it out, swap the ``applied`` link."""
        config = self.paths.config
        nonce = secrets.token_hex(4)
        fresh = config / f".applied-{sha[:12]}-{nonce}"
        try:
            fresh.mkdir(mode=0o700)
            self._run(fresh, ["init", "-q"], what="init applied")
            self._run(
                fresh,
                ["fetch", "-q", "--no-tags", str(self.proposed.resolve()), sha],
                what=f"fetch {sha[:7]}",
            )
            self._run(fresh, ["checkout", "-q", "--detach", sha], what=f"checkout {sha[:7]}")
            if self._rev_parse(fresh, "HEAD", "the checkout has no HEAD") != sha:
                raise HiveError(
                    f"agent {self.name}: the checkout of {sha[:7]} is at another commit"
                )
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        if self.applied.exists() and not self.applied.is_symlink():
            # A plain directory from elsewhere: move it aside once; from now on it is a link.
            self.applied.rename(config / f".applied-old-{nonce}")
        link = config / f".applied-link-{nonce}"
        os.symlink(fresh.name, link)
        os.replace(link, self.applied)  # the atomic step
        _fsync_dir(config)
        for stale in config.glob(".applied-*"):
            if stale != fresh:
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This instance's lock, then a file lock against other instances (other actors)."""
        with self._lock:
            self.paths.config.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_path = self.paths.config / ".lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # Bounded: the holder's git calls are bounded, so this wait can be too.
                deadline = time.monotonic() + 4 * self._timeout_s
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise HiveError(
                                f"agent {self.name}: '{lock_path}' stayed locked for "
                                f"{4 * self._timeout_s:g}s: another hive process is applying "
                                "a config; retry, or stop the other hive"
                            ) from None
                        time.sleep(_LOCK_POLL_S)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _run(
        self,
        repo: Path,
        args: list[str],
        *,
        what: str,
        extra_env: Mapping[str, str] | None = None,
    ) -> str:
        proc = self._call(repo, args, extra_env=extra_env)
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", errors="replace").strip()[-800:] or "no output"
            raise HiveError(
                f"agent {self.name}: git {what} in '{repo}' failed (exit {proc.returncode}): "
                f"{stderr}"
            )
        return proc.stdout.decode("utf-8", errors="replace")

    def _call(
        self,
        repo: Path,
        args: list[str],
        *,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [self._git, "-C", str(repo)]
        for setting in _SAFE_CONFIG:
            argv += ["-c", setting]
        argv += args
        env = {**self._env, **(extra_env or {})}
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a timeout kills git's children (upload-pack) too
            )
        except FileNotFoundError as exc:
            raise ConfigError(
                f"git is not on PATH ({env['PATH']}): install git (apt-get install git)"
            ) from exc
        except OSError as exc:
            raise HiveError(f"agent {self.name}: cannot run git in '{repo}': {exc}") from exc
        try:
            out, err = proc.communicate(timeout=self._timeout_s)
        except subprocess.TimeoutExpired as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate(timeout=self._timeout_s)
            raise HiveError(
                f"agent {self.name}: 'git {' '.join(args)}' in '{repo}' did not finish within "
                f"{self._timeout_s:g}s and was killed: is the disk or the repository stuck?"
            ) from exc
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _author_env(author: str) -> dict[str, str]:
    match = _AUTHOR.fullmatch(author.strip()) if isinstance(author, str) else None
    if match is None:
        raise ConfigError(
            f"commit author {author!r} is invalid: write it as 'Name <email>', e.g. "
            "'hive <hive@localhost>'"
        )
    name, email = match.group(1).strip(), match.group(2)
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def _check_rel_path(rel: str) -> None:
    path = PurePosixPath(rel)
    if (
        not rel
        or path.is_absolute()
        or any(part in ("", ".", "..", ".git") for part in rel.split("/"))
    ):
        raise ConfigError(
            f"init: file name {rel!r} is not a plain relative path inside the repository "
            "(no '..', no '.git', not absolute)"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
