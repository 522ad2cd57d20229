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

from dataclasses import dataclass
from pathlib import Path

__all__ = ["AgentPaths"]


@dataclass(frozen=True)
class AgentPaths:
    """The directories of one agent."""

    root: Path
    """``<state_dir>/agents/<name>``."""

    @classmethod
    def of(cls, state_dir: str | Path, name: str) -> AgentPaths:
        return cls(Path(state_dir) / "agents" / name)

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
        return self
