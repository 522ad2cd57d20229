"""An agent's config repository: ``config/proposed`` (git, edited by the manager) and
``config/applied`` (what runs: a checkout of an approved commit of proposed).

::

    <agent>/config/
        proposed/                  the manager's working tree (git, branch main)
        applied -> .applied-<sha>-<nonce>    a symlink, swapped atomically by apply()
        .applied-<sha>-<nonce>/    a clone of proposed checked out (detached) at the commit
        .lock                      serialises init/apply across ConfigRepo instances

**Crash-safe, idempotent creation**: ``proposed`` is built complete in a temporary sibling
(``.proposed-new-<nonce>``: ``git init``, the files, the initial commit, the ref
``refs/hive/initial`` at it), fsynced, and renamed into place: a kill at any instant leaves no
``proposed`` or a complete one, never half. The initial commit names its agent (a
``Hive-Agent: <name>`` trailer), so :meth:`ConfigRepo.init` run again accepts a complete
repository of the same agent (and checks ``applied`` out at the initial commit if the kill came
before that), finishes what a kill left, and refuses a repository of another agent or with
foreign content in one line that says what was found and what to do. A half-made ``proposed``
left by earlier versions (no commit, only the files init writes, possibly truncated) is redone.

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
from collections.abc import Callable, Iterator, Mapping
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
_INITIAL_REF = "refs/hive/initial"
"""In ``proposed``: the initial commit init made (what ``applied`` starts at)."""
_TRAILER = "Hive-Agent"
"""The trailer of the initial commit that names the agent the repository belongs to."""
_TRAILER_LINE = re.compile(r"^" + _TRAILER + r":[ \t]*(\S+)[ \t]*$", re.MULTILINE)
_BUILD = ".proposed-new-"
"""Prefix of the temporary sibling ``proposed`` is built in (swept under the lock)."""
_ASIDE = ".proposed-old-"
"""Prefix a half-made ``proposed`` is renamed to before it is removed (swept under the lock)."""
_SHOWN = 5
"""How many foreign names a refusal lists."""
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
        fault: Callable[[str], None] | None = None,
    ) -> None:
        """``resolve`` checks the MCP server commands when a config is validated (None: not
        checked, e.g. when the commands live inside a NixOS container); ``timeout_s`` bounds
        each git call; ``max_diff_bytes`` caps :meth:`diff`. ``fault`` (tests) is called with
        the name of each step of :meth:`init` and :meth:`apply` that changes the disk, after
        it; raising there (a ``BaseException`` that is not an ``Exception``, which no cleanup
        handler catches) leaves the disk as a kill at that instant would."""
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
        self._fault = fault

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

    def read_file(self, ref: str, rel: str) -> str | None:
        """The text of ``rel`` as committed at ``ref`` (from git; None: no such file)."""
        _check_rel_path(rel)
        sha = self.resolve(ref)
        proc = self._call(self.proposed, ["cat-file", "blob", f"{sha}:{rel}"])
        if proc.returncode != 0:
            return None
        return proc.stdout.decode("utf-8", errors="replace")

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
        check ``applied`` out at it. Returns the initial commit.

        Crash-safe and idempotent (see the module docstring): a complete repository of this
        agent is accepted as it is (its initial commit is returned, and ``applied`` checked
        out there if it is missing); a half-made one a kill left is finished or redone.
        Conflict, in one line, for a repository of another agent or with foreign content.
        """
        author_env = _author_env(author)
        extra = dict(files or {})
        for rel in extra:
            _check_rel_path(rel)
        if AGENT_TOML in extra:
            raise ConfigError("init: give agent.toml as default_toml, not in files")
        # The default must itself be valid, or the agent could never start.
        parse_agent_toml(default_toml, source="agent.toml (default)", resolve=self._resolve)
        wanted = {AGENT_TOML: default_toml, **extra}
        with self._exclusive():
            self._sweep()
            sha = self._existing(wanted)
            if sha is None:
                sha = self._build(wanted, message, author_env)
                log.info("agent %s: config repository created at %s", self.name, sha[:7])
            if not self.applied_exists():
                self._checkout(sha)
                log.info("agent %s: applied config %s (initial)", self.name, sha[:7])
        return sha

    def apply(self, ref: str) -> str:
        """Validate ``agent.toml`` at ``ref`` and move ``applied`` there atomically; returns
        the commit. ConfigError (nothing changed) when the config is invalid. Idempotent:
        applying the applied commit again changes nothing; a kill at any instant leaves
        ``applied`` at the old commit or the new one (the next apply sweeps the leftovers)."""
        sha = self.resolve(ref)
        self._parse(self._blob(self.proposed, sha), sha)
        with self._exclusive():
            if self._applied_head() == sha:
                # Applied already (e.g. carried out again after a kill after the swap).
                self._sweep_checkouts()
                return sha
            self._checkout(sha)
        log.info("agent %s: applied config %s", self.name, sha[:7])
        return sha

    def commit_files(
        self, ref: str, files: Mapping[str, str], author: str, *, message: str
    ) -> str:
        """A new commit of ``proposed`` on top of ``ref`` whose tree is ``ref``'s with
        ``files`` (path → text) written; returns it. The manager's branch and working tree are
        not touched: the commit is kept by the ref ``refs/hive/rendered/<commit>``. It is dated
        as ``ref``'s commit, so the same ``ref`` and ``files`` always give the same commit."""
        author_env = _author_env(author)
        for rel in files:
            _check_rel_path(rel)
        base = self.resolve(ref)
        # Dated as its parent: the same ref and files always give the same commit.
        when = self._run(self.proposed, ["log", "-1", "--format=%ct", base], what="log").strip()
        author_env = {**author_env, "GIT_AUTHOR_DATE": f"{when} +0000",
                      "GIT_COMMITTER_DATE": f"{when} +0000"}
        with self._exclusive():
            index = self.paths.config / f".index-{secrets.token_hex(4)}"
            env = {**author_env, "GIT_INDEX_FILE": str(index)}
            try:
                self._run(self.proposed, ["read-tree", base], what="read-tree", extra_env=env)
                for rel, text in files.items():
                    blob = self._hash(text)
                    self._run(
                        self.proposed,
                        ["update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}"],
                        what=f"update-index {rel}",
                        extra_env=env,
                    )
                tree = self._run(
                    self.proposed, ["write-tree"], what="write-tree", extra_env=env
                ).strip()
            finally:
                index.unlink(missing_ok=True)
            sha = self._run(
                self.proposed,
                ["commit-tree", tree, "-p", base, "-m", message],
                what="commit-tree",
                extra_env=author_env,
            ).strip()
            self._run(
                self.proposed, ["update-ref", f"refs/hive/rendered/{sha}", sha], what="update-ref"
            )
        log.info("agent %s: commit %s on %s (%s)", self.name, sha[:7], base[:7],
                 ", ".join(sorted(files)))
        return sha

    # -- internals -------------------------------------------------------------------------

    def _hash(self, text: str) -> str:
        """Write ``text`` as a blob of ``proposed``; its id."""
        argv = [self._git, "-C", str(self.proposed)]
        for setting in _SAFE_CONFIG:
            argv += ["-c", setting]
        argv += ["hash-object", "-w", "--stdin"]
        ceiling = os.path.dirname(os.path.realpath(self.proposed))
        try:
            proc = subprocess.run(
                argv,
                input=text.encode("utf-8"),
                env={**self._env, "GIT_CEILING_DIRECTORIES": ceiling},
                capture_output=True,
                timeout=self._timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HiveError(f"agent {self.name}: git hash-object failed: {exc}") from exc
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", errors="replace").strip()[-800:]
            raise HiveError(f"agent {self.name}: git hash-object failed: {stderr}")
        return proc.stdout.decode("ascii").strip()

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

    def _step(self, name: str) -> None:
        """A step that changed the disk is done: the tests' fault hook may "kill" us here."""
        if self._fault is not None:
            self._fault(name)

    def _applied_head(self) -> str | None:
        """The applied commit, or None when there is no (readable) applied checkout."""
        if not self.applied_exists():
            return None
        try:
            return self.head("applied")
        except NotFound:
            return None

    def _try_rev_parse(self, repo: Path, ref: str) -> str | None:
        try:
            return self._rev_parse(repo, ref, "")
        except NotFound:
            return None

    def _sweep(self) -> None:
        """Remove what killed builds left (under the lock: no build of ours is running)."""
        for prefix in (_BUILD, _ASIDE):
            for stale in self.paths.config.glob(prefix + "*"):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)

    def _refuse(self, found: str, fix: str) -> Conflict:
        return Conflict(
            f"agent {self.name}: config repository '{self.proposed}' {found}: {fix}"
        )

    def _existing(self, wanted: Mapping[str, str]) -> str | None:
        """What is at ``proposed``: the initial commit of a complete repository of this agent,
        or None when there is nothing there (a half-made repository is removed); Conflict for
        anything else."""
        proposed = self.proposed
        move_away = "move it away (or destroy the agent), then retry"
        if proposed.is_symlink() or (proposed.exists() and not proposed.is_dir()):
            raise self._refuse("is not a directory", move_away)
        if not proposed.exists() or not any(proposed.iterdir()):
            return None
        git_dir = proposed / ".git"
        if git_dir.is_symlink() or not git_dir.is_dir():
            names = sorted(entry.name for entry in proposed.iterdir())
            raise self._refuse(
                f"holds files but no git repository ({_names(names)})", move_away
            )
        if self._try_rev_parse(proposed, "HEAD") is None:
            # No commit: a creation killed half-way (by an earlier version, which built it in
            # place). Nothing was ever committed there; redo it unless it holds foreign files.
            foreign = _foreign(proposed, wanted)
            if foreign:
                raise self._refuse(
                    f"has no commit and holds files init does not write ({_names(foreign)})",
                    "commit or move them away, then retry",
                )
            aside = self.paths.config / f"{_ASIDE}{secrets.token_hex(4)}"
            proposed.rename(aside)
            _fsync_dir(self.paths.config)
            self._step("half-made moved aside")
            shutil.rmtree(aside, ignore_errors=True)
            log.warning("agent %s: a half-made config repository (no commit) was redone",
                        self.name)
            return None
        initial = self._try_rev_parse(proposed, _INITIAL_REF)
        if initial is not None:
            owner = self._owner(initial)
            if owner != self.name:
                raise self._refuse(
                    f"belongs to {'agent ' + owner if owner else 'no hive agent'} (its initial "
                    f"commit {initial[:7]} says so)",
                    move_away,
                )
            return initial
        return self._legacy(wanted)

    def _legacy(self, wanted: Mapping[str, str]) -> str:
        """The initial commit of a repository made before init marked it: its one root
        commit, accepted when its files are what init writes, or when ``applied`` runs a
        commit of it."""
        proposed = self.proposed
        roots = self._run(
            proposed, ["rev-list", "--max-parents=0", "HEAD", "--"], what="rev-list"
        ).split()
        move_away = "move it away (or destroy the agent), then retry"
        if len(roots) != 1:
            raise self._refuse(
                f"has {len(roots)} root commits and no {_INITIAL_REF}", move_away
            )
        (root,) = roots
        owner = self._owner(root)
        if owner is not None and owner != self.name:
            raise self._refuse(
                f"belongs to agent {owner} (its initial commit {root[:7]} says so)", move_away
            )
        applied = self._applied_head()
        if applied is not None and self._try_rev_parse(proposed, applied) is not None:
            return root  # the agent runs on a commit of it: it is this agent's
        if owner == self.name or self._tree_is(root, wanted):
            return root
        raise self._refuse(
            f"has a commit ({root[:7]}) this agent's initial configuration is not at, and "
            "nothing is applied from it",
            move_away,
        )

    def _owner(self, sha: str) -> str | None:
        """The agent the commit's ``Hive-Agent`` trailer names (None: none)."""
        proc = self._call(self.proposed, ["cat-file", "commit", sha])
        if proc.returncode != 0:
            return None
        text = proc.stdout.decode("utf-8", errors="replace")
        _headers, _, body = text.partition("\n\n")
        found = _TRAILER_LINE.findall(body)
        return found[-1] if found else None

    def _tree_is(self, sha: str, wanted: Mapping[str, str]) -> bool:
        """Whether the commit holds exactly ``wanted`` (path → text)."""
        listing = self._run(
            self.proposed, ["ls-tree", "-r", "-z", "--name-only", sha], what="ls-tree"
        )
        if sorted(name for name in listing.split("\0") if name) != sorted(wanted):
            return False
        for rel, text in wanted.items():
            proc = self._call(self.proposed, ["cat-file", "blob", f"{sha}:{rel}"])
            if proc.returncode != 0 or proc.stdout != text.encode("utf-8"):
                return False
        return True

    def _build(
        self, wanted: Mapping[str, str], message: str, author_env: Mapping[str, str]
    ) -> str:
        """Build ``proposed`` in a temporary sibling, make it durable, rename it into place."""
        config = self.paths.config
        build = config / f"{_BUILD}{secrets.token_hex(4)}"
        try:
            build.mkdir(mode=0o700)
            self._step("build: mkdir")
            self._run(build, ["init", "-q", "-b", _BRANCH], what="init")
            self._step("build: git init")
            for rel, text in wanted.items():
                target = build / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                self._step(f"build: write {rel}")
            self._run(build, ["add", "-A"], what="add")
            self._step("build: git add")
            self._run(
                build,
                ["commit", "-q", "--no-verify", "-m", f"{message}\n\n{_TRAILER}: {self.name}"],
                what="commit",
                extra_env=author_env,
            )
            self._step("build: git commit")
            sha = self._rev_parse(build, "HEAD", "the initial commit is missing")
            self._run(build, ["update-ref", _INITIAL_REF, sha], what="update-ref")
            self._step("build: initial ref")
            _fsync_tree(build)
            self._step("build: fsync")
        except Exception:
            shutil.rmtree(build, ignore_errors=True)
            raise
        # The atomic step: ``proposed`` is absent or an empty directory (rename replaces it).
        try:
            os.rename(build, self.proposed)
        except OSError as exc:
            shutil.rmtree(build, ignore_errors=True)
            raise HiveError(
                f"agent {self.name}: cannot move the new config repository into "
                f"'{self.proposed}': {exc.strerror}: check that nothing else writes there, "
                "then retry"
            ) from exc
        self._step("build: rename into place")
        _fsync_dir(config)
        self._step("build: fsync config dir")
        return sha

    def _checkout(self, sha: str) -> None:
        """Fetch ``sha`` into a new directory, check it out, make it durable, swap the
        ``applied`` link (the one atomic step), then sweep the older checkouts."""
        config = self.paths.config
        nonce = secrets.token_hex(4)
        fresh = config / f".applied-{sha[:12]}-{nonce}"
        try:
            fresh.mkdir(mode=0o700)
            self._step("checkout: mkdir")
            self._run(fresh, ["init", "-q", "--template="], what="init applied")
            self._step("checkout: git init")
            self._run(
                fresh,
                ["fetch", "-q", "--no-tags", str(self.proposed.resolve()), sha],
                what=f"fetch {sha[:7]}",
            )
            self._step("checkout: fetch")
            self._run(fresh, ["checkout", "-q", "--detach", sha], what=f"checkout {sha[:7]}")
            self._step("checkout: checkout")
            if self._rev_parse(fresh, "HEAD", "the checkout has no HEAD") != sha:
                raise HiveError(
                    f"agent {self.name}: the checkout of {sha[:7]} is at another commit"
                )
            _fsync_tree(fresh)  # durable before the link points at it
            self._step("checkout: fsync")
        except Exception:  # a kill runs no handler: its leftovers go with the next checkout
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        if self.applied.exists() and not self.applied.is_symlink():
            # A plain directory from elsewhere: move it aside once; from now on it is a link.
            self.applied.rename(config / f".applied-old-{nonce}")
            self._step("checkout: plain applied moved aside")
        link = config / f".applied-link-{nonce}"
        os.symlink(fresh.name, link)
        self._step("checkout: symlink")
        os.replace(link, self.applied)  # the atomic step
        self._step("checkout: swap applied")
        _fsync_dir(config)
        self._step("checkout: fsync config dir")
        self._sweep_checkouts()

    def _sweep_checkouts(self) -> None:
        """Remove every ``.applied-*`` but the checkout ``applied`` links to: older ones, and
        what killed checkouts left."""
        if not self.applied.is_symlink():
            return
        current = os.readlink(self.applied)
        for stale in self.paths.config.glob(".applied-*"):
            if stale.name != current:
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
                self._step("checkout: sweep")

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
        # Never look for a repository above ``repo``: a half-made one (a .git without HEAD)
        # must read as "no repository", not as whatever repository encloses the state dir.
        ceiling = os.path.dirname(os.path.realpath(repo))
        env = {**self._env, "GIT_CEILING_DIRECTORIES": ceiling, **(extra_env or {})}
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


def _names(names: list[str]) -> str:
    """Up to :data:`_SHOWN` names for a one-line message."""
    shown = ", ".join(repr(name) for name in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _foreign(root: Path, wanted: Mapping[str, str]) -> list[str]:
    """Paths under ``root`` (``.git`` aside) that init would not have written: files it does
    not write, or whose content is not a prefix of what it writes (a kill may cut a write)."""
    dirs = {str(parent) for rel in wanted for parent in PurePosixPath(rel).parents}
    foreign: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in sorted(dirnames):
            rel = (here / name).relative_to(root).as_posix()
            if rel not in dirs or (here / name).is_symlink():
                foreign.append(rel + "/")
        dirnames[:] = [d for d in dirnames if (here / d).relative_to(root).as_posix() in dirs
                       and not (here / d).is_symlink()]
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            text = wanted.get(rel)
            if text is None or path.is_symlink() or not text.encode("utf-8").startswith(
                path.read_bytes()
            ):
                foreign.append(rel)
    return sorted(foreign)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (itself included), children first, so
    a rename that publishes ``root`` never publishes files a power cut could empty."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
