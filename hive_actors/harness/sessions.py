"""Where the ``claude`` CLI keeps a session, and whether the next run must resume it.

CLI 2.1.331 writes a session's transcript to
``$CLAUDE_CONFIG_DIR/projects/<the cwd it was given, every character but A-Z a-z 0-9 as '-'>/
<session id>.jsonl`` early in the session's first run — a second or two in, while the first
model request may still be waiting for its answer. From then on only ``--resume=<id>`` works:
``--session-id <id>`` says "Session ID … is already in use". Killed before the file exists,
the session is unknown to the CLI: ``--resume`` ends at once ("No conversation found with session
ID …") and ``--session-id`` works. So whether a first run *finished* says nothing about how the
next must name its session: the file does (:func:`resume_session`).

The lookup is by the host's path of the config dir; when the CLI runs in a container that keeps
its config dir out of the host's sight, the file is not found and the CLI's own refusals
(handled by :func:`hive_actors.harness.recovery.run_turn`) decide instead.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

__all__ = ["project_dir_name", "resume_session", "session_file"]

log = logging.getLogger(__name__)

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def project_dir_name(cwd: str | os.PathLike[str]) -> str:
    """The directory under ``$CLAUDE_CONFIG_DIR/projects`` the CLI keeps ``cwd``'s sessions in:
    the path with every character other than ``A-Z a-z 0-9`` replaced by ``-``
    (``/state/my_agent`` → ``-state-my-agent``). The CLI cuts and hashes very long paths;
    :func:`session_file` finds those by searching every project."""
    return _NOT_ALNUM.sub("-", os.fspath(cwd))


def session_file(
    config_dir: str | os.PathLike[str], cwd: str | os.PathLike[str] | None, session_id: str
) -> Path | None:
    """The CLI's transcript of ``session_id`` under ``config_dir`` (a host path), or None.

    ``cwd`` is the working directory *the CLI is given* (inside a container, the path as the
    container sees it). Its project directory is looked at first; then, in case the CLI named
    that directory otherwise (a long path, a different mangling), every project directory.
    """
    try:
        name = f"{uuid.UUID(session_id)}.jsonl"
    except ValueError as exc:
        raise ValueError(f"session id {session_id!r} is not a UUID") from exc
    projects = Path(config_dir) / "projects"
    if cwd is not None:
        exact = projects / project_dir_name(cwd) / name
        if exact.is_file():
            return exact
    try:
        found = sorted(p for p in projects.glob(f"*/{name}") if p.is_file())
    except OSError:
        return None
    return found[0] if found else None


def resume_session(
    config_dir: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None,
    session_id: str,
    *,
    known: bool = False,
    who: str = "claude",
) -> bool:
    """Whether the next run must ``--resume`` ``session_id`` (else ``--session-id`` creates it).

    True when the CLI has the session's file (even if the run that created it was cut short), or
    when ``known`` (a run in it ended well before: if its file is gone now, the resume fails at
    once and :func:`~hive_actors.harness.recovery.run_turn` moves to a fresh session with a
    hand-off). ``who`` names the agent in the log line a cut-short first run earns.
    """
    if session_file(config_dir, cwd, session_id) is not None:
        if not known:
            log.info(
                "%s: claude session %s was created by a run cut short: resuming it", who, session_id
            )
        return True
    return known
