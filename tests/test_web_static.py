"""Static files: served from the root, never from outside it, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_actors.errors import ConfigError
from hive_actors.httpd import StaticFiles, resolve_static_path
from tests.support.web import raw_request, serving

REPO_WEB = Path(__file__).resolve().parent.parent / "web"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with pages, a hidden file, a symlink inside and one pointing out; a secret next
    to root/."""
    root = tmp_path / "root"
    (root / "vendor" / "lib").mkdir(parents=True)
    (root / "index.html").write_text("<h1>dashboard</h1>")
    (root / "app.js").write_text("console.log('hive')")
    (root / "vendor" / "lib" / "lib.css").write_text("body{}")
    (root / ".env").write_text("SECRET=1")
    (tmp_path / "secret.txt").write_text("top secret")
    (root / "inside-link.js").symlink_to(root / "app.js")
    (root / "outside-link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "outside-dir").symlink_to(tmp_path)
    return root


@pytest.fixture
def site(tree: Path) -> Iterator[int]:
    with serving(StaticFiles(tree)) as (_, port):
        yield port


def test_resolution_stays_inside_the_root(tree: Path) -> None:
    root = tree.resolve()
    assert resolve_static_path(root, "/") == root / "index.html"
    assert resolve_static_path(root, "/app.js") == root / "app.js"
    assert resolve_static_path(root, "//vendor//lib/lib.css") == root / "vendor/lib/lib.css"
    assert resolve_static_path(root, "/inside-link.js") == root / "app.js"
    for bad in (
        "/../secret.txt",
        "/vendor/../../secret.txt",
        "/outside-link.txt",
        "/outside-dir/secret.txt",
        "/.env",
        "/vendor\\..\\..\\secret.txt",
        "/app.js\x00.png",
        "/missing.js",
        "/vendor",  # a directory without index.html
    ):
        assert resolve_static_path(root, bad) is None, bad
    assert resolve_static_path(root, "/vendor/lib/lib.css", b"/vendor%2flib/lib.css") is None
    assert resolve_static_path(root, "/app.js", b"/app.js") == root / "app.js"
    # An absolute path is a path under the root, not the file system's.
    assert resolve_static_path(root, "//etc/passwd") is None


def test_files_are_served_with_types_and_etags(site: int) -> None:
    status, headers, body = raw_request(site, "GET", "/")
    assert (status, body) == (200, b"<h1>dashboard</h1>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    status, headers, body = raw_request(site, "GET", "/app.js")
    assert status == 200 and body == b"console.log('hive')"
    assert headers["content-type"].startswith("text/javascript")
    status, _, _ = raw_request(site, "GET", "/app.js", {"if-none-match": headers["etag"]})
    assert status == 304
    status, head_headers, body = raw_request(site, "HEAD", "/app.js")
    assert status == 200 and body == b"" and head_headers["content-length"] == "19"
    status, _, body = raw_request(site, "POST", "/app.js")
    assert status == 405


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/vendor/..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/outside-link.txt",
        "/outside-dir/secret.txt",
        "//etc/passwd",
        "/.env",
        "/app.js%00.html",
    ],
)
def test_escapes_are_404_over_http(site: int, path: str) -> None:
    status, headers, body = raw_request(site, "GET", path)
    assert status == 404, (path, body)
    assert headers["content-type"] == "application/json"
    assert b"secret" not in body.replace(b"secret.txt", b"")
    assert b"top secret" not in body and b"root:" not in body


def test_the_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        StaticFiles(tmp_path / "nope")


def test_the_vendored_libraries_are_served_whole() -> None:
    with serving(StaticFiles(REPO_WEB)) as (_, port):
        for rel in ("vendor/xterm/xterm.js", "vendor/uplot/uPlot.iife.min.js"):
            status, headers, body = raw_request(port, "GET", "/" + rel)
            assert status == 200
            assert body == (REPO_WEB / rel).read_bytes()
            assert headers["content-type"].startswith("text/javascript")
        status, headers, _ = raw_request(port, "GET", "/vendor/xterm/xterm.css")
        assert status == 200 and headers["content-type"].startswith("text/css")
