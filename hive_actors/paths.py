"""Where an agent's files live on the host.

::

    <state_dir>/agents/<name>/
        state/        the agent's persistent /state (notes.md, model, web-port)
        config/       its config repository (git): proposed/ and applied/
        claude/       its CLAUDE_CONFIG_DIR (sessions)
        home/         its HOME
        tmp/          its TMPDIR and XDG_RUNTIME_DIR

Names are validated before they get here (see :mod:`hive_actors.store.names`), so a name is
always a single safe path component.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AgentPaths", "secure_hive_files", "tighten"]

log = logging.getLogger(__name__)

HIVE_PRIVATE_FILES = ("hive.db", "hive.db-wal", "hive.db-shm", "hive.db.lock", "operator-token")
"""Files in the state dir no one but the hive's user may read (0600)."""


def tighten(path: str | os.PathLike[str], allowed: int) -> bool:
    """Clear every permission bit of ``path`` outside ``allowed`` (a symlink or a missing path
    is left alone); True, with a log line, when its mode changed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~allowed == 0:
        return False
    os.chmod(path, mode & allowed)
    log.warning("'%s' was mode %04o, readable beyond the hive: tightened to %04o",
                path, mode, mode & allowed)
    return True


def secure_hive_files(state_dir: str | os.PathLike[str],
                      extra: tuple[str | os.PathLike[str], ...] = ()) -> None:
    """Create the state dir private (0700) and tighten an existing one: the dir, ``agents/`` and
    each agent's directory keep at most ``rwx--x---`` (the group's search bit is how the process
    backend lets isolated agents reach their own directory), the db, its journal files and the
    operator token (and ``extra`` files) at most 0600. Idempotent; logs what it changed."""
    root = Path(state_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tighten(root, 0o710)
    for name in HIVE_PRIVATE_FILES:
        tighten(root / name, 0o600)
    for path in extra:
        tighten(path, 0o600)
    agents = root / "agents"
    if agents.is_dir():
        tighten(agents, 0o710)
        for entry in agents.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                tighten(entry, 0o710)


@dataclass(frozen=True)
class AgentPaths:
    """The directories of one agent."""

    root: Path
    """``<state_dir>/agents/<name>``."""

    @classmethod
    def of(cls, state_dir: str | Path, name: str) -> AgentPaths:
        """The agent's directories, absolute (a relative ``state_dir`` is taken from the
        current directory: the agent's CLI, run elsewhere, sees the same files)."""
        return cls(Path(os.path.abspath(state_dir)) / "agents" / name)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def claude(self) -> Path:
        return self.root / "claude"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def create(self) -> AgentPaths:
        """Make every directory (private to this user); idempotent."""
        for path in (self.state, self.config, self.claude, self.home, self.tmp):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            tighten(path, 0o700)
        tighten(self.root, 0o710)  # group search: an isolated agent's own gid
        tighten(self.root.parent, 0o710)  # agents/, made by mkdir's parents at the umask's mode
        return self
