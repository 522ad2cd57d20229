"""Static files from ``web/`` that cannot escape it.

Refused with 404 (the same answer as a missing file, so probing learns nothing): ``..`` and
``.`` segments, hidden names (``.git``), encoded slashes, backslashes or NULs in the raw path,
and any path whose real location (symlinks resolved) is outside the root — an absolute path
such as ``//etc/passwd`` is just a path under the root. A directory serves its
``index.html``. GET and HEAD only; ``ETag``/``If-None-Match`` for cheap reloads.

Files are read on the event loop thread: they are small (the largest vendored file is under
0.5 MB) and in the page cache, and a thread hop would cost more than the read.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
from pathlib import Path

from hive_actors.errors import ConfigError

from .asgi import Receive, Scope, Send, send_json_error

__all__ = ["StaticFiles", "resolve_static_path"]

log = logging.getLogger(__name__)

_BAD_RAW = re.compile(rb"%(2f|5c|00)|\\", re.IGNORECASE)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
_CHUNK = 64 * 1024


def resolve_static_path(root: Path, url_path: str, raw_path: bytes | None = None) -> Path | None:
    """The file under ``root`` that ``url_path`` names, or None if it names none safely.

    ``root`` must already be resolved (``Path.resolve()``). ``raw_path`` is the undecoded
    request path, checked for encoded separators that decoding would hide.
    """
    if raw_path is not None and _BAD_RAW.search(raw_path):
        return None
    if "\\" in url_path or "\x00" in url_path:
        return None
    segments = [s for s in url_path.split("/") if s]
    if any(s.startswith(".") for s in segments):
        return None
    candidate = root.joinpath(*segments) if segments else root
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if real != root and root not in real.parents:
        return None
    if real.is_dir():
        real = real / "index.html"
        if not real.is_file():
            return None
    return real if real.is_file() else None


class StaticFiles:
    """ASGI app serving the files under ``root``; mount it after the API routes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ConfigError(
                f"web: static root '{root}' is not a directory; point [web] root at the "
                "repository's web/ folder"
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send_json_error(scope, send, 404, "no websocket endpoint here")
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await send_json_error(
                scope,
                send,
                405,
                f"{method} is not allowed on a static file; use GET",
                (("allow", "GET, HEAD"),),
            )
            return
        path = _relative_path(scope)
        raw = scope.get("raw_path")
        target = resolve_static_path(self.root, path, raw)
        if target is None:
            await send_json_error(scope, send, 404, f"no such page: {path[:200]}")
            return
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            await send_json_error(scope, send, 404, f"no such page: {path[:200]}")
            return
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            etag = (
                '"'
                + hashlib.sha1(
                    f"{info.st_ino}-{info.st_size}-{info.st_mtime_ns}".encode(),
                    usedforsecurity=False,
                ).hexdigest()[:20]
                + '"'
            )
            headers = [
                (b"content-type", _content_type(target).encode()),
                (b"etag", etag.encode()),
                (b"cache-control", b"no-cache"),
            ]
            if _header(scope, b"if-none-match") == etag:
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            headers.append((b"content-length", str(info.st_size).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if method == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            remaining = info.st_size
            while True:
                chunk = f.read(_CHUNK)
                remaining -= len(chunk)
                last = not chunk or remaining <= 0
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                if last:
                    return


def _relative_path(scope: Scope) -> str:
    """The request path below the app's mount point (``root_path``, set by a router)."""
    path = str(scope.get("path", "/"))
    root_path = str(scope.get("root_path", ""))
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    # Already percent-decoded by the server; decoding again would turn %252e into "." here.
    return path


def _content_type(path: Path) -> str:
    known = _TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
