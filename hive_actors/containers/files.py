"""An agent's files on the host as the backends share them: the record of a created container
and removal on destroy.

A container exists for the hive when ``<agent>/container.json`` does (written by ``create``,
removed by ``destroy``): the agent's directory alone is not enough, since a draft or a destroyed
agent whose state was kept has one too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hive_actors.errors import HiveError
from hive_actors.paths import AgentPaths

__all__ = ["marker_path", "read_marker", "remove_agent_files", "write_marker"]

log = logging.getLogger(__name__)

_MARKER = "container.json"


def marker_path(paths: AgentPaths) -> Path:
    """Where the record of ``paths``' container lives."""
    return paths.root / _MARKER


def write_marker(paths: AgentPaths, record: Mapping[str, Any]) -> None:
    """Write the record atomically (a crash leaves the old one or the new one, never half)."""
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".container-", suffix=".json", dir=paths.root)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(dict(record), f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker_path(paths))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_marker(paths: AgentPaths) -> dict[str, Any] | None:
    """The record, or None when no container was created (or it was destroyed)."""
    path = marker_path(paths)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HiveError(f"container record '{path}' cannot be read ({exc.strerror})") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HiveError(
            f"container record '{path}' is not valid JSON ({exc}): destroy the container "
            "(keep_state=True keeps its state) and create it again"
        ) from exc
    if not isinstance(record, dict):
        raise HiveError(f"container record '{path}' is not a JSON object: destroy and recreate")
    return record


def remove_agent_files(paths: AgentPaths, *, keep_state: bool) -> None:
    """Remove the agent's directory; with ``keep_state`` everything but ``state/``.

    The record goes first, so a crash half-way leaves an absent container with leftover files,
    never a container whose files are half gone.
    """
    marker_path(paths).unlink(missing_ok=True)
    if not paths.root.exists():
        return
    if not keep_state:
        _rmtree(paths.root)
        return
    for child in paths.root.iterdir():
        if child == paths.state:
            continue
        if child.is_dir() and not child.is_symlink():
            _rmtree(child)
        else:
            child.unlink(missing_ok=True)


def _rmtree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise HiveError(
            f"cannot remove '{exc.filename or path}' ({exc.strerror}): remove it by hand, then "
            "destroy again"
        ) from exc
