"""Packaging: the operator's pages ship inside the package (issue 18, item 5).

The repository's files (what git tracks, plus untracked files git does not ignore) are copied
to a temporary folder, so no build artifact lands in the checkout. An sdist is built from the
copy and a wheel from the sdist (so both carry the pages); the wheel is installed with its
dependencies into a fresh venv, and a hive started from that venv's own ``hive``, outside the
repository and without ``PYTHONPATH``, serves the dashboard and a vendored script. Loopback only
at run time; the installs use the machine's package index (and pip's cache).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import hive_actors.gateway.app as gateway_app
from hive_actors.errors import ConfigError
from hive_actors.gateway.app import default_web_root
from tests.support.timeout import TIMEOUT

REPO = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 600.0
"""A venv's pip install (the dependencies are large: claude-agent-sdk bundles the CLI)."""
VENDORED_SCRIPT = "vendor/xterm/xterm.js"
PAGES = ("index.html", "agent.html", "hive.js", "dashboard.js", "agent.js", "hive.css",
         VENDORED_SCRIPT, "vendor/xterm-addon-fit/addon-fit.js", "vendor/uplot/uPlot.iife.min.js")
"""Files of web/ an installed hive needs (relative to web/ and to hive_actors/webroot/)."""
NOT_SHIPPED = ("package.json", "package-lock.json", "README.md")
WHERE = (
    "import json, hive_actors; from hive_actors.gateway.app import default_web_root; "
    "print(json.dumps([hive_actors.__file__, str(default_web_root())]))"
)
"""Run by the venv's interpreter: where its package and its pages are."""

# The packaging test builds and installs into venvs: minutes on a cold pip cache.
pytestmark = pytest.mark.timeout(2 * INSTALL_TIMEOUT)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would import the repository's copy of the package."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    }
    env.update(PYTHONNOUSERSITE="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", **extra)
    return env


def run(argv: list[str], *, cwd: Path, timeout: float,
        env: Mapping[str, str] | None = None) -> str:
    """Run ``argv``; its output, or a failure showing it."""
    proc = subprocess.run(
        argv, check=False, cwd=cwd, env=dict(env or clean_env()), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}"
    return proc.stdout


def copy_repository(dest: Path) -> None:
    """The checkout's files git knows of (tracked, or untracked and not ignored) into ``dest``."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the build copies the files git knows of")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, stdout=subprocess.PIPE, timeout=TIMEOUT * 6,
    ).stdout.decode()
    for rel in sorted({f for f in listed.split("\0") if f}):
        src = REPO / rel
        if not os.path.lexists(src) or src.is_dir():  # deleted in the working tree; a submodule
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def venv(path: Path) -> Path:
    """A fresh venv at ``path``; its interpreter."""
    run([sys.executable, "-m", "venv", str(path)], cwd=path.parent, timeout=TIMEOUT * 12)
    return path / "bin" / "python"


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path
    python: Path
    """The interpreter of the venv the wheel is installed in (with its dependencies)."""
    cwd: Path
    """A folder outside the repository to run it from."""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    copy_repository(src)
    dist = base / "dist"
    dist.mkdir()
    # The build tools pyproject.toml asks for, in a venv of their own.
    requires = tomllib.loads((src / "pyproject.toml").read_text())["build-system"]["requires"]
    tools = venv(base / "build-venv")
    run([str(tools), "-m", "pip", "install", "-q", *requires], cwd=base, timeout=INSTALL_TIMEOUT)
    run([str(tools), "-c",
         "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
         str(dist)], cwd=src, timeout=TIMEOUT * 12)
    (sdist,) = dist.glob("*.tar.gz")
    run([str(tools), "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(sdist)], cwd=base, timeout=TIMEOUT * 12)
    (wheel,) = dist.glob("*.whl")
    python = venv(base / "venv")
    run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=base,
        timeout=INSTALL_TIMEOUT)
    cwd = base / "run"
    cwd.mkdir()
    return Built(sdist=sdist, wheel=wheel, python=python, cwd=cwd)


def test_the_sdist_carries_web_and_the_wheel_carries_the_pages(built: Built) -> None:
    with tarfile.open(built.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for page in PAGES:
        assert f"web/{page}" in names, page
    assert not any(name.startswith("web/node_modules") for name in names)

    with zipfile.ZipFile(built.wheel) as wheel:
        shipped = set(wheel.namelist())
    for page in PAGES:
        assert f"hive_actors/webroot/{page}" in shipped, page
        with zipfile.ZipFile(built.wheel) as wheel:
            assert wheel.read(f"hive_actors/webroot/{page}") == (REPO / "web" / page).read_bytes()
    for tooling in NOT_SHIPPED:
        assert f"hive_actors/webroot/{tooling}" not in shipped
    assert not any("node_modules" in name for name in shipped)
    assert not any(name.startswith(("web/", "tests/")) for name in shipped)


def lines_of(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str | None], threading.Thread]:
    """``proc``'s stdout lines as they come (None at its end), read until then by the thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, name="hive-stdout", daemon=True)
    reader.start()
    return lines, reader


def dashboard_url(lines: queue.Queue[str | None], proc: subprocess.Popen[str],
                  log: Path) -> str:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=TIMEOUT * 6)
        except queue.Empty:
            pytest.fail(f"no dashboard line in {TIMEOUT * 6}s; stdout {seen}; "
                        f"log:\n{log.read_text()[-4000:]}")
        if line is None:
            pytest.fail(f"hive exited {proc.wait(TIMEOUT)} before its dashboard line; "
                        f"stdout {seen}; log:\n{log.read_text()[-4000:]}")
        seen.append(line)
        found = re.match(r"dashboard (http://\S+/)", line)
        if found:
            return found.group(1)


def write_config(folder: Path) -> Path:
    """A hive.toml: state in ``folder``, the dashboard on any free loopback port, a loopback
    model URL (no agent is registered: no model is called)."""
    config = folder / "hive.toml"
    config.write_text(
        "[hive]\n"
        f"state_dir = {json.dumps(str(folder / 'state'))}\n"
        'backend = "process"\n'
        "[web]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n"
        "[model]\n"
        'base_url = "http://127.0.0.1:9/"\n'
    )
    return config


@contextlib.contextmanager
def hive_from(built: Built, config: Path, log: Path) -> Iterator[tuple[subprocess.Popen[str],
                                                                      queue.Queue[str | None]]]:
    """``hive serve`` from the venv (its own entry point), killed if still running at the end."""
    hive = built.python.parent / "hive"
    with log.open("w") as err:
        # The hive's credential: a loopback key (no agent runs, nothing calls a model).
        proc = subprocess.Popen(
            [str(hive), "serve", "--config", str(config)], cwd=built.cwd,
            env=clean_env(ANTHROPIC_API_KEY="loopback-test-key"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    lines, reader = lines_of(proc)
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        reader.join(TIMEOUT)  # stdout's end
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_hive_from_the_installed_wheel_serves_the_dashboard(built: Built) -> None:
    where = json.loads(run([str(built.python), "-c", WHERE], cwd=built.cwd, timeout=TIMEOUT * 6))
    venv_dir = built.python.parent.parent
    package = Path(where[0]).parent
    assert package.is_relative_to(venv_dir), where
    assert Path(where[1]) == package / "webroot", where

    folder = built.cwd / "hive"
    folder.mkdir()
    log = folder / "stderr.log"
    with hive_from(built, write_config(folder), log) as (proc, lines):
        base = dashboard_url(lines, proc, log)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", base), base
        with httpx.Client(base_url=base, trust_env=False, timeout=TIMEOUT) as client:
            page = client.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert '<script src="/dashboard.js">' in page.text
            assert page.content == (REPO / "web" / "index.html").read_bytes()
            script = client.get(f"/{VENDORED_SCRIPT}")
            assert script.status_code == 200
            assert "javascript" in script.headers["content-type"]
            assert script.content
            assert script.content == (REPO / "web" / VENDORED_SCRIPT).read_bytes()
            # npm's tooling is not a page: not in the package, so not served.
            assert client.get("/package.json").status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT * 3) == 0, log.read_text()[-4000:]


def test_an_installed_hive_without_its_pages_refuses_to_start_naming_web_root(
    built: Built,
) -> None:
    where = json.loads(run([str(built.python), "-c", WHERE], cwd=built.cwd, timeout=TIMEOUT * 6))
    webroot = Path(where[0]).parent / "webroot"
    hidden = webroot.with_name("webroot-hidden")
    webroot.rename(hidden)
    try:
        folder = built.cwd / "no-pages"
        folder.mkdir()
        log = folder / "stderr.log"
        with hive_from(built, write_config(folder), log) as (proc, lines):
            while lines.get(timeout=TIMEOUT * 6) is not None:
                pass
            assert proc.wait(TIMEOUT * 3) == 1
        error = log.read_text()
        assert "Error: " in error and "[web] root" in error, error[-4000:]
    finally:
        hidden.rename(webroot)


def fake_package(tmp_path: Path) -> Path:
    """``tmp_path/hive_actors/gateway/app.py``'s path (the file need not exist)."""
    return tmp_path / "hive_actors" / "gateway" / "app.py"


def pages(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html>")
    return root


def test_the_default_web_root_prefers_the_packaged_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_app, "__file__", str(fake_package(tmp_path)))
    repository = pages(tmp_path / "web")
    assert default_web_root() == repository
    packaged = pages(tmp_path / "hive_actors" / "webroot")
    assert default_web_root() == packaged


def test_without_pages_the_default_web_root_is_a_config_error_naming_web_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_app, "__file__", str(fake_package(tmp_path)))
    (tmp_path / "web").mkdir()  # a folder without index.html is no pages
    with pytest.raises(ConfigError, match=r"\[web\] root"):
        default_web_root()


def test_the_source_tree_serves_the_repository_web_folder() -> None:
    assert default_web_root() == REPO / "web"
